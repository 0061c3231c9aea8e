"""icc_utils.kernels: blocked causal attention and 16-bit dropout give what PyTorch's own kernels give."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from icc_utils.finetune import FinetuneConfig, _identity
from icc_utils.kernels import (ATTN_NAME, FastDropout, attention_forward, blocked_causal_attention,
                               use_blocked_kernels)


def qkv(T, dtype=torch.float64, H=3, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, H, T, D, generator=g, dtype=dtype, requires_grad=True) for _ in range(3)]


@pytest.mark.parametrize("T,block", [(1, 4), (7, 4), (16, 4), (33, 8), (20, 128)])
def test_blocked_attention_equals_sdpa_values_and_gradients(T, block):
    q, k, v = qkv(T)
    ours = blocked_causal_attention(q, k, v, scale=0.3, block=block)
    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    ref = F.scaled_dot_product_attention(q2, k2, v2, is_causal=True, scale=0.3)
    assert torch.allclose(ours, ref, atol=1e-10)
    w = torch.randn_like(ref)
    (ours * w).sum().backward()
    (ref * w).sum().backward()
    for a, b in ((q, q2), (k, k2), (v, v2)):
        assert torch.allclose(a.grad, b.grad, atol=1e-10)


def test_blocked_attention_gradcheck():
    q, k, v = qkv(9, H=2, D=4)
    assert torch.autograd.gradcheck(lambda a, b, c: blocked_causal_attention(a, b, c, block=4), (q, k, v))


def test_blocked_attention_in_bf16_is_close_to_sdpa():
    q, k, v = (t.detach().to(torch.bfloat16) for t in qkv(300, H=4, D=64))
    ours = blocked_causal_attention(q, k, v).float()
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    assert (ours - ref).abs().max() < 0.05 and (ours - ref).abs().mean() < 0.005


def test_blocked_attention_rejects_bad_input():
    q, k, v = qkv(5)
    with pytest.raises(ValueError, match="block=0"):
        blocked_causal_attention(q, k, v, block=0)
    with pytest.raises(ValueError, match="one shape"):
        blocked_causal_attention(q, k[:, :, :3], v)


class _Module(torch.nn.Module):
    is_causal = True
    num_key_value_groups = 1


def test_attention_forward_falls_back_to_sdpa_with_a_padding_mask():
    q, k, v = (t.detach() for t in qkv(6))
    mask = torch.ones(2, 1, 6, 6, dtype=torch.bool).tril()
    mask[1, :, :, 4:] = False                              # second row: two padded keys
    ours, _ = attention_forward(_Module(), q, k, v, mask, scaling=0.5)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.5).transpose(1, 2)
    assert torch.allclose(ours, ref)


def _peft_llama(path, dropout, dtype=torch.float32, alpha=8):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
    return get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=alpha, lora_dropout=dropout,
                                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))


@pytest.mark.parametrize("which", ["tiny_llama_dir", "tiny_qwen2_dir"])
def test_model_with_blocked_kernels_gives_sdpa_logits_and_gradients(which, request):
    """Both tiny models have grouped KV heads (Qwen2's q/k/v with biases); no dropout, so both runs are
    deterministic."""
    path = request.getfixturevalue(which)
    ids = torch.randint(5, 200, (1, 70), generator=torch.Generator().manual_seed(1))
    outs = []
    for blocked in (False, True):
        model = _peft_llama(path, dropout=0.0).train()
        if blocked:
            use_blocked_kernels(model)
            assert model.config._attn_implementation == ATTN_NAME
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        logits.square().mean().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        outs.append((logits.detach(), grads))
    (l0, g0), (l1, g1) = outs
    assert torch.allclose(l0, l1, atol=1e-5)
    assert g0.keys() == g1.keys() and len(g0) == 2 * 4 * 2      # lora A and B, 4 modules, 2 layers
    for n in g0:
        assert torch.allclose(g0[n], g1[n], atol=1e-6, rtol=1e-4), n


def test_use_blocked_kernels_replaces_every_lora_dropout(tiny_llama_dir):
    model = _peft_llama(tiny_llama_dir, dropout=0.05)
    assert use_blocked_kernels(model) == 4 * 2
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.modules())
    assert sum(isinstance(m, FastDropout) for m in model.modules()) == 8


def test_fast_dropout_keeps_1_minus_p_and_preserves_the_mean():
    torch.manual_seed(0)
    d = FastDropout(0.05).train()
    y = d(torch.ones(2_000_000))
    kept = (y > 0).double().mean().item()
    assert abs(kept - 0.95) < 0.001                       # 4 standard errors is 0.0006
    assert abs(y.mean().item() - 1.0) < 0.001
    assert torch.allclose(y[y > 0], torch.full_like(y[y > 0], 1 / d.keep))


def test_fast_dropout_is_seeded_identity_in_eval_and_checks_p():
    x = torch.randn(1000)
    d = FastDropout(0.3).train()
    torch.manual_seed(5)
    a = d(x)
    torch.manual_seed(5)
    assert torch.equal(a, d(x))
    assert not torch.equal(a, d(x))
    assert torch.equal(d.eval()(x), x)
    assert torch.equal(FastDropout(0.0).train()(x), x)
    with pytest.raises(ValueError, match="p=1.0"):
        FastDropout(1.0)


def test_finetune_config_kernels():
    assert FinetuneConfig(bf16=True).resolved_kernels(cuda=False) == "blocked"
    assert FinetuneConfig(bf16=True).resolved_kernels(cuda=True) == "torch"
    assert FinetuneConfig(bf16=False).resolved_kernels(cuda=False) == "torch"
    assert FinetuneConfig(bf16=True, dtype="float32").resolved_kernels(cuda=False) == "torch"   # autocast
    assert FinetuneConfig(kernels="blocked").resolved_kernels(cuda=True) == "blocked"
    with pytest.raises(ValueError, match="kernels='fast'.*'auto', 'torch', 'blocked'"):
        FinetuneConfig(kernels="fast")


def test_a_saved_config_from_before_kernels_has_the_same_identity():
    new = FinetuneConfig(lora_r=16).to_dict()
    old = {k: v for k, v in new.items() if k != "kernels"}
    assert _identity(old) == _identity(new)
    assert _identity({**new, "kernels": "blocked"}) != _identity(new)


def test_evaluation_is_the_same_whichever_kernels_trained(tiny_llama_dir):
    """Outside a training step the kernels step aside: eval-mode bf16 logits are bitwise PyTorch's, while a
    training-mode forward with autograd does use them (and differs in the last bits)."""
    ids = torch.randint(5, 500, (1, 40), generator=torch.Generator().manual_seed(2))
    models = []
    for blocked in (False, True):
        model = _peft_llama(tiny_llama_dir, dropout=0.0).to(torch.bfloat16)
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.data = p.data.float()
                if "lora_B" in name:
                    torch.nn.init.normal_(p, 0, 0.5, generator=torch.Generator().manual_seed(len(name)))
        if blocked:
            use_blocked_kernels(model)
        models.append(model)
    with torch.no_grad():
        a, b = (m.eval()(input_ids=ids).logits for m in models)
    assert torch.equal(a, b)
    a, b = (m.train()(input_ids=ids).logits for m in models)
    assert not torch.equal(a, b) and (a.float() - b.float()).abs().mean() < 0.05


def test_fast_dropout_is_exactly_x_times_keep_times_scale_in_values_and_gradients():
    """The fused mask-and-scale gives the numbers of the plain product it replaced, with the same draws."""
    d = FastDropout(0.05).train()
    x = torch.randn(64, 256, 129, dtype=torch.bfloat16, requires_grad=True)   # ~32 draws on the threshold itself
    g = torch.randn(64, 256, 129, dtype=torch.bfloat16)
    torch.manual_seed(3)
    y = d(x)
    y.backward(g)
    torch.manual_seed(3)
    bits = torch.randint(-2 ** 63, 2 ** 63 - 1, ((x.numel() + 3) // 4,), dtype=torch.int64)
    keep = bits.view(torch.int16)[:x.numel()].view(x.shape) >= d.threshold
    x2 = x.detach().clone().requires_grad_(True)
    ref = x2 * keep * (1.0 / d.keep)
    ref.backward(g)
    assert 0 < keep.logical_not().sum() < x.numel()
    assert torch.equal(y, ref) and torch.equal(x.grad, x2.grad)


@pytest.mark.parametrize("alpha", [8, 6])   # scaling 2 (the rank-r product is scaled) and 1.5 (PEFT's own forward)
def test_lora_training_forward_gives_pefts_numbers_exactly(tiny_llama_dir, alpha):
    """bf16 base, LoRA products in bf16 (InputDtypeLinear): the same logits and gradients as PEFT's forward,
    bit for bit, in a training step and in evaluation."""
    ids = torch.randint(5, 200, (1, 50), generator=torch.Generator().manual_seed(2))
    outs = []
    for ours in (False, True):
        model = _peft_llama(tiny_llama_dir, dropout=0.0, dtype=torch.bfloat16, alpha=alpha)
        for n, p in model.named_parameters():            # non-zero B, so the LoRA branch counts
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.5, generator=torch.Generator().manual_seed(len(n)))
        assert use_blocked_kernels(model) == 4 * 2
        model.config._attn_implementation = "sdpa"
        if not ours:                                     # only the LoRA layers' forward differs between the runs
            assert sum(m.__dict__.pop("forward", None) is not None for m in model.modules()) == 4 * 2
        logits = model.train()(input_ids=ids).logits
        logits.float().square().mean().backward()
        with torch.no_grad():
            evaluated = model.eval()(input_ids=ids).logits
        outs.append((logits.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None},
                     evaluated))
    (l0, g0, e0), (l1, g1, e1) = outs
    assert torch.equal(l0, l1) and torch.equal(e0, e1)
    assert g0.keys() == g1.keys() and len(g0) == 2 * 4 * 2
    assert all(torch.equal(g0[n], g1[n]) for n in g0)
