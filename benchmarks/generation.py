"""Sequential vs batched generation with the embedded model on the default prompt lengths.

Episodes: Student-t data (df=5), c=3, d=2, n uniform in [10, 50] (the default profile's
lengths), fixed seeds. The same LocalChatModel (default dtype, automatic max_new_tokens,
unconstrained greedy decoding) generates every reply once with batch_size=1 and once with
batch_size=8 (prompts sorted by length, left padding). Prints episodes per second for each,
how many of the replies are identical at both batch sizes (batch invariance; ``--no-batch-invariant``
measures the model's own attention instead), and, last, the ratio batched / sequential.

The dtype is the default profile's ``auto`` (bfloat16 where the CPU runs it natively, else float32;
the model id printed first names the one used). The measured numbers are in CHANGELOG.md.

    python benchmarks/generation.py [--episodes 16] [--batch-size 8] [--dtype float32] [--threads 2]
                                    [--no-batch-invariant]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from icc_utils.data import episode_seed, generate_episode  # noqa: E402
from icc_utils.models import DTYPE_CHOICES, LocalChatModel  # noqa: E402


def main(argv=None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: OMP_NUM_THREADS, else the physical cores)")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--constrained", action="store_true", help="time constrained decoding instead")
    ap.add_argument("--no-batch-invariant", dest="batch_invariant", action="store_false",
                    help="the model's own attention and kernels (replies may depend on the batch)")
    args = ap.parse_args(argv)

    episodes = [generate_episode(episode_seed(args.seed, "test", "t", 3, 2, 5.0, i), "t", 3, 2, 5.0,
                                 episode_id=f"bench-{i:03d}") for i in range(args.episodes)]
    model = LocalChatModel("embedded", dtype=args.dtype, threads=args.threads, batch_invariant=args.batch_invariant)
    model.load()
    prompts = [model.render(ep) for ep in episodes]
    ns = [ep.n_points for ep in episodes]
    cs = [ep.n_clusters for ep in episodes]
    n_tok = [len(model.tokenizer(p, add_special_tokens=False).input_ids) for p in prompts]
    print(f"model={model.model_id} torch_threads={torch.get_num_threads()} episodes={len(episodes)} "
          f"n={min(ns)}..{max(ns)} prompt_tokens={min(n_tok)}..{max(n_tok)} (mean {sum(n_tok) / len(n_tok):.0f}) "
          f"constrained={args.constrained} batch_invariant={args.batch_invariant}", flush=True)

    # warm-up (kernel selection, allocator) on a short prompt, not timed
    model.batch_size = 1
    model.generate(prompts[-1:], ns[-1:], cs[-1:], constrained=args.constrained)

    timings, replies = {}, {}
    for label, bs in (("sequential", 1), ("batched", args.batch_size)):
        model.batch_size = bs
        t0 = time.perf_counter()
        replies[label] = model.generate(prompts, ns, cs, constrained=args.constrained)
        timings[label] = time.perf_counter() - t0
        print(f"{label} (batch_size={bs}): {timings[label]:.1f} s, "
              f"{len(episodes) / timings[label]:.3f} episodes/s", flush=True)
    same = sum(a == b for a, b in zip(replies["sequential"], replies["batched"]))
    print(f"identical replies at batch_size=1 and batch_size={args.batch_size}: {same}/{len(episodes)}", flush=True)
    speedup = timings["sequential"] / timings["batched"]
    print(f"speedup_batched_vs_sequential: {speedup:.2f}")
    return speedup


if __name__ == "__main__":
    main()
