"""Classical clustering baselines: k-means (the paper's), Gaussian mixture, agglomerative (Ward)
and spectral clustering with an RBF affinity.

Each sees the same rounded points as the LLMs. All random draws use ``random_state``.
"""
from __future__ import annotations

import warnings

import numpy as np
from sklearn.cluster import AgglomerativeClustering, KMeans, SpectralClustering
from sklearn.mixture import GaussianMixture

CLASSICAL_METHODS = ("kmeans", "gmm", "agglomerative", "spectral")


def _rbf_gamma(x: np.ndarray) -> float:
    """Median heuristic: gamma = 1 / median squared pairwise distance (scale-free RBF)."""
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    med = np.median(d2[np.triu_indices(len(x), 1)])
    return 1.0 / med if med > 0 else 1.0


def cluster_points(method: str, points, n_clusters: int, random_state: int = 0) -> list[int]:
    """Cluster ``points`` (n x d) into ``n_clusters`` with a classical method; returns labels."""
    if method not in CLASSICAL_METHODS:
        raise ValueError(f"method={method!r} is not allowed; choose one of {list(CLASSICAL_METHODS)}")
    x = np.asarray(points, dtype=float)
    if x.ndim != 2 or len(x) < n_clusters:
        raise ValueError(f"points must be an (n, d) array with n >= n_clusters={n_clusters}, got shape {x.shape}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate points, disconnected graphs on heavy tails
        if method == "kmeans":
            labels = KMeans(n_clusters, n_init=10, random_state=random_state).fit_predict(x)
        elif method == "gmm":
            labels = GaussianMixture(n_clusters, n_init=3, random_state=random_state, reg_covar=1e-4).fit_predict(x)
        elif method == "agglomerative":
            labels = AgglomerativeClustering(n_clusters, linkage="ward").fit_predict(x)
        else:
            labels = SpectralClustering(n_clusters, affinity="rbf", gamma=_rbf_gamma(x), assign_labels="kmeans",
                                        random_state=random_state).fit_predict(x)
    return [int(l) for l in labels]
