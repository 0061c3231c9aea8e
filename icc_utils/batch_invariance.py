"""Batch invariance: an episode gets the same greedy reply alone or in any batch.

Replies depended on the batch for two reasons, both found by comparing one episode's logits alone
and in a batch, module by module (CHANGELOG.md has the numbers):

1. Left padding. Each row's keys sit at an offset set by the longest prompt beside it, and the
   attention kernels reduce over keys in blocks and SIMD lanes aligned to the padded tensor, so the
   same sums are taken in another order. Fix (:func:`row_sdpa`): attention runs row by row on the
   row's own unpadded queries and keys, the very call an unpadded batch of one makes.
2. Matrix products with one row. During decoding a linear layer multiplies ``batch`` rows by its
   weights; CPU kernels take another path for one row (and, in float32, for two or three) than for
   four or more, with another summation order. Fix (:func:`min_rows_linear`): a linear layer given
   fewer than :data:`MIN_ROWS` rows computes them with zero rows appended, so every product runs the
   path of four or more rows, whose per-row result does not depend on the number of rows.

In float32 the differences are ~1e-6 and rarely change a greedy token; in bfloat16 every output is
rounded to 8 bits and they changed the replies of about half the episodes. The rest of the model
(norms, rotary embeddings, activations) is row by row already. ``batch_invariant(model)`` applies
both fixes for the duration of a ``with`` block and restores the model afterwards.
"""
from __future__ import annotations

from contextlib import contextmanager

ATTENTION_NAME = "icc_row_sdpa"
#: Fewest rows a linear layer multiplies at once under :func:`batch_invariant`.
MIN_ROWS = 4
_REGISTERED = False


def _first_kept(mask_row) -> int:
    """Index of the first key the last query may attend to (the number of left-padding keys)."""
    import torch

    keep = mask_row if mask_row.dtype == torch.bool else mask_row > torch.finfo(mask_row.dtype).min / 2
    idx = torch.nonzero(keep)
    return int(idx[0, 0]) if len(idx) else int(keep.shape[-1])


def row_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """Attention computed row by row on each row's unpadded keys (transformers' attention signature).

    ``query`` (batch, heads, q_len, dim), ``key``/``value`` (batch, kv_heads, kv_len, dim); returns
    ``(output (batch, q_len, heads, dim), None)``. Query positions that are left padding get zeros.
    """
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    causal = kwargs.get("is_causal")
    causal = getattr(module, "is_causal", True) if causal is None else causal
    if not causal or getattr(module, "sliding_window", None) or kwargs.get("position_bias") is not None:
        # an encoder (a vision tower), a sliding window or a position bias: the model's own sdpa
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    batch, heads, q_len, dim = query.shape
    kv_len = key.shape[2]
    out = query.new_zeros((batch, q_len, heads, value.shape[-1]))
    for b in range(batch):
        pad = 0 if attention_mask is None else _first_kept(attention_mask[b, 0, -1])
        q_start = max(0, pad - (kv_len - q_len))
        q = query[b:b + 1, :, q_start:].contiguous()
        k = key[b:b + 1, :, pad:].contiguous()
        v = value[b:b + 1, :, pad:].contiguous()
        n_q, n_k = q.shape[2], k.shape[2]
        if n_q == 0 or n_k == 0:
            continue
        mask = None
        if 1 < n_q < n_k:  # queries at the end of a longer key range: bottom-right causal mask
            mask = (torch.arange(n_q, device=q.device)[:, None] + (n_k - n_q)
                    >= torch.arange(n_k, device=q.device)[None, :]).view(1, 1, n_q, n_k)
        row, _ = sdpa_attention_forward(module, q, k, v, mask, dropout=dropout, scaling=scaling,
                                        is_causal=mask is None and n_q > 1)
        out[b, q_start:] = row[0]
    return out, None


def register() -> str:
    """Register :func:`row_sdpa` (and sdpa's mask builder) with transformers under :data:`ATTENTION_NAME`."""
    global _REGISTERED
    if not _REGISTERED:
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

        AttentionInterface.register(ATTENTION_NAME, row_sdpa)
        ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, sdpa_mask)
        _REGISTERED = True
    return ATTENTION_NAME


def min_rows_linear(module, x):
    """``module(x)`` for a ``torch.nn.Linear``, computed on at least :data:`MIN_ROWS` rows (zero rows
    appended and dropped again), so its kernel does not depend on how many rows the batch has."""
    import torch
    import torch.nn.functional as F

    rows = x.reshape(-1, x.shape[-1])
    if rows.shape[0] >= MIN_ROWS:
        return F.linear(x, module.weight, module.bias)
    padded = torch.cat([rows, rows.new_zeros((MIN_ROWS - rows.shape[0], rows.shape[1]))])
    out = F.linear(padded, module.weight, module.bias)[:rows.shape[0]]
    return out.reshape(*x.shape[:-1], out.shape[-1])


@contextmanager
def batch_invariant(model, enabled: bool = True):
    """Run ``model`` (a transformers model or a PEFT wrapper) with :func:`row_sdpa` attention and
    :func:`min_rows_linear` linear layers inside the block; the model is restored afterwards."""
    if not enabled:
        yield model
        return
    import functools

    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    saved = base.config._attn_implementation
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and "forward" not in vars(m)]
    base.set_attn_implementation(register())
    for m in linears:
        m.forward = functools.partial(min_rows_linear, m)
    try:
        yield model
    finally:
        for m in linears:
            del m.forward
        base.set_attn_implementation(saved)
