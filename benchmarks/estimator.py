"""ICCClustering.fit_predict against KMeans on 30 points in 2-D (make_blobs, 3 centres, seed 0).

Seconds per call of ``ICCClustering(n_clusters=3)`` with the embedded model (the published adapter
when it is installed, else the base model; constrained decoding, ``dtype`` as given):

- cold: a fresh process's first call (loads the model, generates);
- uncached: the model already loaded, a reply not in the cache (generation alone);
- cached: the same data again (the reply cache; no generation, no weights loaded).

KMeans (``n_init=10``) is timed over 20 calls. Prints accuracy and ARI of both against the blobs'
labels, and, last, the ratio of a cold ICC call to a KMeans call.

    python benchmarks/estimator.py [--dtype auto] [--threads 1]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from sklearn.cluster import KMeans  # noqa: E402
from sklearn.datasets import make_blobs  # noqa: E402
from sklearn.metrics import adjusted_rand_score  # noqa: E402

from icc_utils import estimators  # noqa: E402
from icc_utils.estimators import ICCClustering, resolve_adapter  # noqa: E402
from icc_utils.metrics import clustering_accuracy  # noqa: E402


def main(argv=None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)

    X, y = make_blobs(n_samples=30, centers=3, n_features=2, random_state=0)
    try:
        adapter = "default" if resolve_adapter("default", "embedded") else None
    except ValueError:
        adapter = None
    with tempfile.TemporaryDirectory() as tmp:
        def icc(cache_file: str) -> ICCClustering:
            return ICCClustering(n_clusters=3, adapter=adapter, dtype=args.dtype, threads=args.threads,
                                 cache=Path(tmp) / cache_file)

        estimators._LOADED.clear()
        t0 = time.perf_counter()
        labels = icc("a.jsonl").fit_predict(X)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        icc("b.jsonl").fit_predict(X)
        uncached = time.perf_counter() - t0
        runs = 5
        t0 = time.perf_counter()
        for _ in range(runs):
            again = icc("a.jsonl").fit(X)
        cached = (time.perf_counter() - t0) / runs
        assert again.cached_ and np.array_equal(again.labels_, labels)

    t0 = time.perf_counter()
    for _ in range(20):
        km = KMeans(n_clusters=3, n_init=10, random_state=0).fit_predict(X)
    kmeans = (time.perf_counter() - t0) / 20

    print(f"data: make_blobs(n_samples=30, centers=3, n_features=2, random_state=0); adapter={adapter!r} "
          f"dtype={args.dtype}")
    print(f"ICCClustering cold (load + generate): {cold:.2f} s per call")
    print(f"ICCClustering uncached (generate):    {uncached:.2f} s per call")
    print(f"ICCClustering cached:                 {cached * 1000:.1f} ms per call")
    print(f"KMeans (n_init=10):                   {kmeans * 1000:.1f} ms per call")
    print(f"accuracy / ARI: ICC {clustering_accuracy(y, labels):.3f} / {adjusted_rand_score(y, labels):.3f}, "
          f"KMeans {clustering_accuracy(y, km):.3f} / {adjusted_rand_score(y, km):.3f}")
    print(f"ratio cached ICC / KMeans: {cached / kmeans:.2f}")
    ratio = cold / kmeans
    print(f"ratio_cold_icc_vs_kmeans: {ratio:.0f}")
    return ratio


if __name__ == "__main__":
    main()
