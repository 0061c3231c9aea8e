"""In-context clustering of iris, beside k-means.

Iris (150 flowers, 4 measurements, 3 species) is standardised and reduced to 2-D by PCA; 10 flowers
of each species (a fixed random sample) are clustered by ``ICCClustering`` (the embedded
SmolLM2-135M-Instruct with the study's published adapter when it is installed, else the base
model) and by ``KMeans``, each in a scikit-learn ``Pipeline``. Accuracy (best matching of clusters
to species) and adjusted Rand index are printed for both. Runs on a CPU in a few minutes (the
first run converts the embedded model, about 20 s; a second run reads the reply from the cache).

    python examples/iris_icc.py
"""
from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans
from sklearn.datasets import load_iris
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from icc_utils import ICCClustering
from icc_utils.estimators import resolve_adapter
from icc_utils.metrics import clustering_accuracy


def published_adapter() -> str | None:
    """``"default"`` when the study's adapter is installed, else None (the base model)."""
    try:
        return "default" if resolve_adapter("default", "embedded") else None
    except ValueError as exc:
        print(f"note: {exc}\n      -> using the base model (adapter=None)")
        return None


def main() -> None:
    iris = load_iris()
    rng = np.random.default_rng(0)
    rows = np.concatenate([rng.choice(np.flatnonzero(iris.target == k), 10, replace=False) for k in range(3)])
    rows = rng.permutation(rows)                      # species mixed, as clustering data comes
    X, y = iris.data[rows], iris.target[rows]

    icc = make_pipeline(StandardScaler(), PCA(n_components=2), ICCClustering(n_clusters=3, adapter=published_adapter()))
    kmeans = make_pipeline(StandardScaler(), PCA(n_components=2), KMeans(n_clusters=3, n_init=10, random_state=0))
    print(f"iris: {len(y)} flowers (10 per species), standardised, PCA to 2-D")
    for name, pipe in (("ICCClustering", icc), ("KMeans", kmeans)):
        labels = pipe.fit_predict(X)
        print(f"{name:14s} accuracy {clustering_accuracy(y, labels):.3f}  ARI {adjusted_rand_score(y, labels):+.3f}  "
              f"labels {labels.tolist()}")
    est = icc[-1]
    print(f"ICC reply: {est.reply_!r} (well-formed: {est.well_formed_}, from the cache: {est.cached_})")


if __name__ == "__main__":
    main()
