"""Faster CPU training kernels for bf16 LoRA fine-tuning.

On a CPU, a bf16 LoRA step with PyTorch's own kernels spends most of its time outside the matmuls: in the CPU
flash attention (``sdpa``, far below the machine's bf16 matmul rate), in the Bernoulli draws of LoRA's dropout,
and in PEFT's casts of every LoRA branch's input to float32 and back (profiles and speeds: CHANGELOG.md and
``benchmarks/finetune.py``). The replacements:

* :class:`BlockedCausalAttention`: softmax attention in query blocks of ``block`` rows, each against only the keys
  it may see (the masked upper triangle is mostly never computed), as ``bmm`` at matmul speed, with a hand-written
  backward that reuses the saved probabilities. Scores and probabilities are held in the input dtype and rounded
  as transformers' ``eager`` attention rounds them in bf16 (``q k^T``, then the scale); in float32 or float64 it
  equals ``sdpa`` to rounding.
* :class:`FastDropout`: inverted dropout whose keep-mask comes from 16 random bits per element, drawn 64 bits at a
  time from torch's seeded generator (4x fewer draws than ``bernoulli_``); ``p`` is applied as
  ``round(p * 2^16) / 2^16`` (0.05 -> 0.050003).
* :class:`InputDtypeLinear`: the LoRA A and B products run in the base model's dtype (bf16) with the float32
  weights cast down for the product, as ``torch.autocast`` would; weights, gradients and optimiser state stay
  float32.
* :func:`lora_training_forward`: each LoRA layer's training-step forward with a power-of-two ``scaling`` (alpha / r:
  2 in the default, smoke and curriculum profiles, 1/4 in the paper's) applied to the rank-r product instead of the
  d-wide output, added into the base output in place; :class:`FastDropout` applies its mask and scale in one product
  and one in-place fill. Both give the same numbers bit for bit (scaling by a power of two is exact) with fewer
  passes over d-wide tensors.

:func:`use_blocked_kernels` switches a PEFT model to all of them (``FinetuneConfig(kernels="blocked")``, the automatic
choice for bf16 weights on a CPU). They change training steps only: attention falls back to transformers' ``sdpa``
without autograd (evaluation, generation) and wherever the fast path does not apply (a padding mask, a KV cache,
one query token, attention dropout), dropout is off in eval mode, and the LoRA products run in float32 outside
training, so evaluating an adapter gives the same numbers whichever kernels trained it.
"""
from __future__ import annotations

import math
import types

import torch

ATTN_NAME = "icc_blocked_causal"
DEFAULT_BLOCK = 128


def _above_diagonal(n: int, device) -> torch.Tensor:
    """(n, n) boolean mask, True above the diagonal: the keys a block's queries may not see among its own."""
    return torch.ones(n, n, dtype=torch.bool, device=device).triu_(1)


class BlockedCausalAttention(torch.autograd.Function):
    """``softmax(q k^T * scale + causal) v`` for (B, H, T, D) tensors with H equal for q, k and v."""

    @staticmethod
    def forward(ctx, q, k, v, scale: float, block: int):
        B, H, T, D = q.shape
        q3, k3, v3 = (t.reshape(B * H, T, D) for t in (q, k, v))
        out = torch.empty_like(q3)
        probs = []
        for s in range(0, T, block):
            e = min(T, s + block)
            scores = torch.bmm(q3[:, s:e], k3[:, :e].transpose(1, 2)).mul_(scale)   # rounded as eager rounds them
            scores[:, :, s:e].masked_fill_(_above_diagonal(e - s, q3.device), float("-inf"))
            p = torch.softmax(scores, -1)
            out[:, s:e] = torch.bmm(p, v3[:, :e])
            probs.append(p)
        ctx.save_for_backward(q3, k3, v3, *probs)
        ctx.scale, ctx.block, ctx.shape = scale, block, (B, H, T, D)
        return out.view(B, H, T, D)

    @staticmethod
    def backward(ctx, grad_out):
        q3, k3, v3, *probs = ctx.saved_tensors
        B, H, T, D = ctx.shape
        g = grad_out.reshape(B * H, T, D).to(q3.dtype)
        dq = torch.empty_like(q3)
        acc = torch.promote_types(q3.dtype, torch.float32)   # summed over query blocks: at least fp32
        dk = torch.zeros(B * H, T, D, dtype=acc, device=q3.device)
        dv = torch.zeros(B * H, T, D, dtype=acc, device=q3.device)
        for p, s in zip(probs, range(0, T, ctx.block)):
            e = min(T, s + ctx.block)
            dv[:, :e] += torch.bmm(p.transpose(1, 2), g[:, s:e])
            dp = torch.bmm(g[:, s:e], v3[:, :e].transpose(1, 2))
            ds = torch._softmax_backward_data(dp, p, -1, p.dtype)
            dq[:, s:e] = torch.bmm(ds, k3[:, :e]) * ctx.scale
            dk[:, :e] += torch.bmm(ds.transpose(1, 2), q3[:, s:e])
        dk.mul_(ctx.scale)
        shape = (B, H, T, D)
        return dq.view(shape), dk.to(q3.dtype).view(shape), dv.to(q3.dtype).view(shape), None, None


def blocked_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
                             block: int = DEFAULT_BLOCK) -> torch.Tensor:
    """Causal softmax attention of (B, H, T, D) tensors in query blocks of ``block`` rows (see the module doc)."""
    if q.dim() != 4 or q.shape != k.shape or k.shape != v.shape:
        raise ValueError(f"q, k, v must be (B, H, T, D) tensors of one shape; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if not isinstance(block, int) or block < 1:
        raise ValueError(f"block={block!r} is not allowed; it must be an integer >= 1")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return BlockedCausalAttention.apply(q, k, v, scale, block)


def attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                      is_causal=None, **kwargs):
    """transformers attention interface: :func:`blocked_causal_attention` where it applies, ``sdpa`` elsewhere."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    fast = (torch.is_grad_enabled() and causal and attention_mask is None and dropout == 0.0 and query.shape[2] > 1
            and query.shape[2] == key.shape[2] and not kwargs.get("output_attentions")
            and kwargs.get("softcap") is None and kwargs.get("position_bias") is None
            and kwargs.get("cache") is None and kwargs.get("sliding_window") is None)
    if not fast:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    out = blocked_causal_attention(query, key, value, scaling)
    return out.transpose(1, 2).contiguous(), None


def register_blocked_attention() -> str:
    """Register :func:`attention_forward` (and sdpa's mask builder) with transformers; returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTN_NAME, attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_NAME, sdpa_mask)
    return ATTN_NAME


class _MaskedScale(torch.autograd.Function):
    """``x * scale`` with the ``drop`` positions zeroed, forward and backward, in one product and one in-place fill
    (the same numbers as ``x * keep * scale``, one pass over ``x`` fewer each way)."""

    @staticmethod
    def forward(ctx, x, drop, scale: float):
        ctx.save_for_backward(drop)
        ctx.scale = scale
        return x.mul(scale).masked_fill_(drop, 0)

    @staticmethod
    def backward(ctx, grad):
        (drop,) = ctx.saved_tensors
        return grad.mul(ctx.scale).masked_fill_(drop, 0), None, None


class FastDropout(torch.nn.Module):
    """Inverted dropout with 16-bit keep-masks (``p`` rounded to a multiple of 2^-16); identity in eval mode."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"p={p!r} is not allowed; dropout probability must be in [0, 1)")
        self.p = float(p)
        self.threshold = round(self.p * 65536) - 32768   # keep when the signed 16-bit draw >= threshold
        self.keep = 1.0 - (self.threshold + 32768) / 65536

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.threshold == -32768:
            return x
        n = x.numel()
        bits = torch.randint(-2 ** 63, 2 ** 63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=x.device)
        drop = bits.view(torch.int16)[:n].view(x.shape) < self.threshold
        return _MaskedScale.apply(x, drop, 1.0 / self.keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class InputDtypeLinear(torch.nn.Linear):
    """A LoRA ``A`` or ``B`` matrix that, in a training step, computes in its input's dtype: the weight (float32, and
    so its gradient and optimiser state) is cast down for the product, as ``torch.autocast`` would. Outside training
    (eval mode or no grad) it casts the input up to the weight's dtype instead, which is what PEFT does, so an
    evaluation gives the same numbers whichever kernels trained the adapter. State-dict keys are unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype if self.training and torch.is_grad_enabled() else self.weight.dtype
        bias = None if self.bias is None else self.bias.to(dtype)
        return torch.nn.functional.linear(x.to(dtype), self.weight.to(dtype), bias)


def _power_of_two(x: float) -> bool:
    return x > 0 and math.frexp(x)[0] == 0.5


def lora_training_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """A PEFT LoRA ``Linear``'s forward in a training step: ``base(x) + B(A(dropout(x))) * scaling`` with a
    power-of-two ``scaling`` applied to the rank-r product ``A(dropout(x))`` instead of the d-wide output (exact in
    binary floating point, so the same numbers with two passes over the output fewer), added into the base output in
    place. Anything else (eval, no grad, merged or disabled adapters, several adapters, variants) is PEFT's own."""
    simple = (self.training and torch.is_grad_enabled() and not args and not kwargs and not self.disable_adapters
              and not self.merged and len(self.active_adapters) == 1)
    name = self.active_adapters[0] if simple else None
    if not simple or name not in self.lora_A or name in getattr(self, "lora_variant", {}) \
            or not _power_of_two(self.scaling[name]):
        return type(self).forward(self, x, *args, **kwargs)
    result = self.base_layer(x)
    low = self.lora_A[name](self.lora_dropout[name](x)) * self.scaling[name]
    return result.add_(self.lora_B[name](low))


def use_blocked_kernels(model) -> int:
    """Switch ``model`` to blocked causal attention, replace every LoRA ``nn.Dropout`` with :class:`FastDropout`,
    and run every LoRA branch in the base model's dtype (:class:`InputDtypeLinear`, with PEFT's cast of the
    branch's input to float32 turned off) with :func:`lora_training_forward`; returns how many LoRA modules were
    switched."""
    name = register_blocked_attention()
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            cfg._attn_implementation = name
    n = 0
    for m in model.modules():
        drops = getattr(m, "lora_dropout", None)
        if not isinstance(drops, torch.nn.ModuleDict):
            continue
        for key, d in list(drops.items()):
            if isinstance(d, torch.nn.Dropout):
                drops[key] = FastDropout(d.p)
        for mats in (m.lora_A, m.lora_B):
            for lin in mats.values():
                if type(lin) is torch.nn.Linear:
                    lin.__class__ = InputDtypeLinear
        m.cast_input_dtype_enabled = False
        m.forward = types.MethodType(lora_training_forward, m)
        n += 1
    return n
