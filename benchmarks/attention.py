"""Attention extraction: vectorised aggregation speed and per-layer extraction memory.

Episode: one Student-t (df=5) episode, c=2, d=3, n=50 points (fixed seed), rendered with the
embedded SmolLM2-135M-Instruct's chat template plus its true labels as the answer, so the
blocks are 2m x 2m (A^II, A^OI, A^OO; eqs. 2-3).

(a) Aggregation. Realistic random attention over the episode's T tokens: causal softmax of
    Gaussian scores (scale --score-scale), one T x T matrix per head. The vectorised path
    (:func:`icc_utils.attention.segment_matrix`, built inside the timed region, then
    :func:`~icc_utils.attention.aggregate_blocks`: ``P^T A P`` evaluated as run sums (rows, then columns) over the
    segments' contiguous token runs, all pairs at once) against the
    per-pair reference loop (:func:`~icc_utils.attention.aggregate_blocks_loop`). Both give the
    same 2m x 2m matrix (max abs difference printed). Median of --repeats timed runs.

(b) Peak memory. Each path runs in a fresh process (multiprocessing "spawn"), which loads the
    embedded model in float32, touches every weight and runs a 16-token warm-up forward pass,
    then measures the resident-set high-water mark of the computation alone: Linux's peak RSS (VmHWM) is reset after loading (``echo 5 >
    /proc/self/clear_refs``) and the peak minus the RSS before the computation is reported (if
    the reset is not possible, ``ru_maxrss`` minus the RSS after loading is used and said so).
    "per-layer": :func:`~icc_utils.attention.extract_attention_blocks` (SDPA forward pass, each
    layer's attention recomputed by a hook and reduced at once). "all layers":
    ``output_attentions=True`` with eager attention on the decoder (no LM head, like the
    per-layer path), then the same reduction of every layer. tracemalloc is not used: it does
    not see torch's allocations.

Prints the speed-up, both peaks and, last, the two ratios (speed-up, target >= 50; memory
per-layer / all-layers, target < 1/3).

    python benchmarks/attention.py [--repeats 20] [--threads 2] [--heads 1]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

N_POINTS, DIM, N_CLUSTERS, DF, SEED = 50, 3, 2, 5.0, 2024


def _episode():
    from icc_utils.data import episode_seed, generate_episode

    s = episode_seed(SEED, "test", "t", N_CLUSTERS, DIM, DF, 0)
    return generate_episode(s, "t", N_CLUSTERS, DIM, DF, n_points=N_POINTS, episode_id="bench-attention")


def _tokens(tokenizer, ep):
    from icc_utils.attention import encode_episode

    return encode_episode(tokenizer, ep.points, ep.n_clusters, labels=ep.labels)


# ---------------------------------------------------------------- (a) aggregation speed

def random_causal_attention(T: int, heads: int, scale: float, seed: int = 0):
    """``(heads, T, T)`` float32 causal softmax of Gaussian scores (rows sum to 1 over earlier tokens)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    scores = torch.randn((heads, T, T), generator=g) * scale
    scores.masked_fill_(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(scores, dim=-1)


def bench_aggregation(repeats: int, heads: int, scale: float) -> float:
    import numpy as np
    from transformers import AutoTokenizer

    from icc_utils.attention import aggregate_blocks, aggregate_blocks_loop, segment_matrix
    from icc_utils.models import embedded_model_dir

    tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    toks = _tokens(tok, _episode())
    T, m = toks.n_tokens, toks.n_points
    attn = random_causal_attention(T, heads, scale)
    attn_np = attn.numpy()
    print(f"(a) aggregation: n={m} points, d={DIM}, T={T} tokens, {heads} head(s), blocks {2 * m} x {2 * m}", flush=True)

    def vectorised():
        P = segment_matrix(toks.point_of_token, m, toks.label_positions, T)
        return aggregate_blocks(attn, P)

    def loop():
        return np.stack([aggregate_blocks_loop(a, toks.point_of_token, m, toks.label_positions) for a in attn_np])

    diff = float(np.abs(vectorised().numpy() - loop()).max())

    def timed(fn, n):
        fn()  # warm-up
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
        return statistics.median(out)

    t_vec = timed(vectorised, repeats)
    t_loop = timed(loop, max(3, repeats // 4))
    print(f"    vectorised (segment matrix + run sums):  {t_vec * 1e3:.3f} ms (median of {repeats})")
    print(f"    per-pair loop (reference):             {t_loop * 1e3:.3f} ms (median of {max(3, repeats // 4)})")
    print(f"    max |vectorised - loop| = {diff:.2e}")
    speedup = t_loop / t_vec
    print(f"    speed-up vectorised vs loop: {speedup:.1f}x (target >= 50x)", flush=True)
    return speedup


# ---------------------------------------------------------------- (b) peak memory, one fresh process per path

def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _hwm_kib() -> int | None:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _memory_child(path: str, threads: int, queue) -> None:
    """Runs in a fresh spawned process: load the model, measure one path's peak RSS increase."""
    import gc

    import torch

    torch.set_num_threads(threads)
    from icc_utils.attention import aggregate_blocks, decoder_layers, extract_attention_blocks, segment_matrix
    from icc_utils.models import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer("embedded", dtype="float32")
    toks = _tokens(tok, _episode())
    ids = torch.tensor([toks.input_ids])
    m = toks.n_points
    if path == "all layers":
        model.set_attn_implementation("eager")
        decoder = model.get_decoder()
    # page in every weight (safetensors may be memory-mapped lazily) and warm up with a short forward pass,
    # so the peak below is the computation's own memory, not the weights' first touch
    with torch.inference_mode():
        for p in model.parameters():
            p.sum()
        model(input_ids=ids[:, :16], use_cache=False)
    gc.collect()
    reset = _reset_hwm()
    before = _rss_kib()
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if path == "per-layer":
        blocks = extract_attention_blocks(model, toks, layers="all", heads="all")
        shape = blocks.ii.shape
    else:
        with torch.inference_mode():
            out = decoder(input_ids=ids, use_cache=False, output_attentions=True)
            P = segment_matrix(toks.point_of_token, m, toks.label_positions, toks.n_tokens)
            blocks = torch.stack([aggregate_blocks(a[0], P) for a in out.attentions])  # (L, H, 2m, 2m)
            shape = (len(out.attentions), blocks.shape[1], m, m)
            n_layers = len(decoder_layers(model))
            assert len(out.attentions) == n_layers
    seconds = time.perf_counter() - t0
    if reset and _hwm_kib() is not None:
        peak, method = _hwm_kib() - before, "VmHWM reset after loading"
    else:
        peak = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - max(before, maxrss_before))
        method = "ru_maxrss minus the high-water mark after loading (no reset possible)"
    queue.put({"path": path, "peak_mib": peak / 1024, "method": method, "seconds": seconds,
               "baseline_mib": before / 1024, "n_tokens": toks.n_tokens, "shape": tuple(shape)})


def measure_peak(path: str, threads: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_memory_child, args=(path, threads, queue))
    proc.start()
    result = queue.get()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"the {path} child process failed with exit code {proc.exitcode}")
    return result


def bench_memory(threads: int) -> float:
    print("(b) peak memory over the model's resident baseline (embedded SmolLM2-135M-Instruct, float32), "
          "one fresh process per path:", flush=True)
    res = {}
    for path in ("per-layer", "all layers"):
        r = measure_peak(path, threads)
        res[path] = r
        print(f"    {path:10s}: peak +{r['peak_mib']:.1f} MiB over {r['baseline_mib']:.0f} MiB after loading "
              f"(T={r['n_tokens']} tokens, blocks {r['shape']}, {r['seconds']:.1f} s; {r['method']})", flush=True)
    ratio = res["per-layer"]["peak_mib"] / res["all layers"]["peak_mib"]
    print(f"    memory per-layer / all-layers: {ratio:.3f} (target < 0.333)", flush=True)
    return ratio


def main(argv=None) -> tuple[float, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20, help="timed runs of the vectorised path (loop: a quarter)")
    ap.add_argument("--heads", type=int, default=1, help="heads of random attention aggregated in (a)")
    ap.add_argument("--score-scale", type=float, default=2.0, help="std of the random attention scores in (a)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--skip-memory", action="store_true", help="only run (a)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    speedup = bench_aggregation(args.repeats, args.heads, args.score_scale)
    ratio = float("nan") if args.skip_memory else bench_memory(args.threads)
    print(f"speedup_vectorised_vs_loop: {speedup:.1f}")
    print(f"memory_ratio_per_layer_vs_all_layers: {ratio:.3f}")
    return speedup, ratio


if __name__ == "__main__":
    main()
