"""Fine-tuning speed on the embedded model: training tokens per second, fp32 vs the bf16 path.

Real training steps through ``icc_utils.finetune.train`` (the same code path as the notebooks:
Trainer, LoRA on q/k/v/o, answer-only loss), on default-profile training episodes
(Student-t, c 2-5, d 1-4, n 10-50), by default with notebook 04's default recipe (LoRA rank, batch
per device and accumulation read from ``notebooks/profiles/default.yml``: r=16, 1 x 8, so no padding);
``--lora-r 64 --per-device 4 --accumulation 2`` is the configuration of earlier measurements. The first
``--warmup`` steps are not timed. A matmul probe (512x2048 @ 2048x2048) in fp32 and bf16, best of
5 trials before and 5 after the training steps, gives this CPU's attainable GFLOP/s (on a shared
machine it varies between runs, so compare variants within one run).

Training FLOP rate: the standard estimate 6 * N * tokens/s (forward 2N per token, backward
about 4N: LoRA still needs the activation gradients through every frozen layer, ~2N, plus the
weight-gradient half, which for frozen weights is skipped; so 6N is an upper bound on the useful
work and ~4N a lower one). N = the parameters a token goes through: the non-embedding
parameters of the decoder (the LM head runs only on answer tokens, a few percent of tokens).
Printed last: the fraction of the better matmul peak that training achieves.

Variants: ``fp32``; ``bf16-torch``, bf16 frozen weights with PyTorch's kernels (sdpa, nn.Dropout); ``bf16``, the
same with ``icc_utils.kernels`` (what ``kernels="auto"`` picks on a CPU); ``autocast``. Where the CPU has no native
bf16 (AVX2 only) bf16 is emulated and far slower than fp32; there fp32 is what ``auto`` picks. The measured numbers
are in CHANGELOG.md.

    python benchmarks/finetune.py [--steps 3] [--warmup 1] [--lora-r 16] [--per-device 1] [--accumulation 8]
                                  [--variants fp32,bf16-torch,bf16,autocast] [--threads 2]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from icc_utils.data import make_training_set  # noqa: E402
from icc_utils.finetune import EpisodeDataset, FinetuneConfig, IGNORE_INDEX, train  # noqa: E402
from icc_utils.models import load_model_and_tokenizer  # noqa: E402
from icc_utils.profiles import load_profile  # noqa: E402

VARIANTS = {  # name -> (bf16, dtype, kernels)
    "fp32": (False, None, "torch"),                 # fp32 weights, fp32 compute
    "bf16": (True, None, "blocked"),                # the bf16=True path: frozen base weights bf16, LoRA fp32,
                                                    # icc_utils.kernels (what kernels="auto" picks on a CPU)
    "bf16-torch": (True, None, "torch"),            # the same with PyTorch's sdpa attention and nn.Dropout
    "autocast": (True, "float32", "torch"),         # fp32 weights under torch.autocast(bfloat16)
}


class StepTimer(TrainerCallback):
    """Wall-clock seconds of each optimiser step (forward + backward over the accumulation + update)."""

    def __init__(self):
        self.times, self._t0 = [], None

    def on_step_begin(self, args, state, control, **kw):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.times.append(time.perf_counter() - self._t0)


def matmul_gflops(dtype, m=512, k=2048, n=2048, repeats=10, trials=5) -> float:
    """The best of ``trials`` timings of ``repeats`` (m x k) @ (k x n) products, in GFLOP/s."""
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(trials):
        t0 = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = max(best, 2 * m * k * n * repeats / (time.perf_counter() - t0) / 1e9)
    return best


def matmul_peaks() -> dict:
    return {"fp32": matmul_gflops(torch.float32), "bf16": matmul_gflops(torch.bfloat16)}


def main(argv=None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--per-device", type=int, default=None, help="default: the default profile's")
    ap.add_argument("--accumulation", type=int, default=None, help="default: the default profile's")
    ap.add_argument("--lora-r", type=int, default=None, help="default: the default profile's (alpha = 2 r)")
    ap.add_argument("--variants", default="fp32,bf16-torch,bf16", help=f"comma-separated, of {list(VARIANTS)}")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = load_profile("default")
    args.per_device = args.per_device or recipe["ft_per_device_batch_size"]
    args.accumulation = args.accumulation or recipe["ft_gradient_accumulation_steps"]
    args.lora_r = args.lora_r or recipe["ft_lora_r"]
    eff = args.per_device * args.accumulation
    n_steps = args.warmup + args.steps
    episodes = make_training_set(eff * n_steps, root_seed=args.seed)

    _, tok = load_model_and_tokenizer("embedded")
    base, _ = load_model_and_tokenizer("embedded")
    n_total = sum(p.numel() for p in base.parameters())
    n_embed = base.get_input_embeddings().weight.numel()
    n_forward = n_total - n_embed  # tied LM head: counted once, as the embedding
    del base
    ds = EpisodeDataset(episodes, tok, 1, args.seed, 1)
    lens = [len(ds[i]["input_ids"]) for i in range(len(ds))]
    n_ans = [sum(l != IGNORE_INDEX for l in ds[i]["labels"]) for i in range(len(ds))]
    step_tokens = [sum(lens[s * eff:(s + 1) * eff]) for s in range(n_steps)]
    print(f"model=SmolLM2-135M-Instruct params={n_total / 1e6:.1f}M (non-embedding {n_forward / 1e6:.1f}M) "
          f"torch_threads={torch.get_num_threads()} batch={args.per_device}x{args.accumulation}={eff} episodes/step "
          f"LoRA r={args.lora_r} "
          f"tokens/episode={min(lens)}..{max(lens)} (mean {sum(lens) / len(lens):.0f}, answer "
          f"{sum(n_ans) / sum(lens):.1%}) steps={args.warmup} warm-up + {args.steps} timed", flush=True)

    before = matmul_peaks()
    rates = {}
    for name in args.variants.split(","):
        bf16, dtype, kernels = VARIANTS[name]
        cfg = FinetuneConfig(model="embedded", per_device_batch_size=args.per_device,
                             gradient_accumulation_steps=args.accumulation, max_steps=n_steps, save_steps=10 ** 6,
                             lora_r=args.lora_r, lora_alpha=2 * args.lora_r,
                             bf16=bf16, dtype=dtype, kernels=kernels, seed=args.seed)
        timer = StepTimer()
        with tempfile.TemporaryDirectory() as out:
            res = train(cfg, episodes, out, resume=False, callbacks=[timer])
            import pandas as pd
            losses = pd.read_csv(Path(out) / "loss_curve.csv")["loss"].round(4).tolist()
        timed = timer.times[args.warmup:]
        toks = sum(step_tokens[args.warmup:])
        rates[name] = toks / sum(timed)
        print(f"{name:10s} (bf16={bf16}, weights={cfg.weights_dtype}, autocast={cfg.autocast}, kernels={kernels}): "
              f"{sum(timed) / len(timed):.2f} s/step, {rates[name]:.0f} tokens/s, "
              f"{rates[name] / (toks / len(timed) / eff) :.2f} episodes/s; step times "
              f"{[round(t, 2) for t in timer.times]} (tokens/s {[round(n / t) for n, t in zip(step_tokens, timer.times)]}); "
              f"losses {losses}", flush=True)
        assert res.global_step == n_steps

    after = matmul_peaks()
    peaks = {k: max(before[k], after[k]) for k in before}
    print(f"matmul 512x2048x2048 (best of 5 trials before and 5 after training): fp32 {peaks['fp32']:.1f} GFLOP/s "
          f"(before {before['fp32']:.1f}, after {after['fp32']:.1f}), bf16 {peaks['bf16']:.1f} GFLOP/s "
          f"(before {before['bf16']:.1f}, after {after['bf16']:.1f})")
    best_name = max(rates, key=rates.get)
    flops = 6 * n_forward * rates[best_name]
    frac = flops / 1e9 / max(peaks.values())
    for other in ("fp32", "bf16-torch"):
        if other in rates and "bf16" in rates:
            print(f"bf16 path / {other} speed: {rates['bf16'] / rates[other]:.2f}x")
    print(f"training FLOP rate ({best_name}, 6*N*tokens/s, N={n_forward / 1e6:.1f}M): {flops / 1e9:.1f} GFLOP/s")
    print(f"fraction of the best matmul peak ({max(peaks.values()):.1f} GFLOP/s): {frac:.3f}")
    return frac


if __name__ == "__main__":
    main()
