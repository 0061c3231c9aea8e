"""Scoring image episodes and the non-ICC rows beside ICC (Tables 2 and 3).

Per-episode rows (:func:`score_image_rows`, one schema for every method), chance
(:func:`chance_image_rows`), k-means on the frozen tower's mean-pooled features
(:func:`mean_pooled_features`, :func:`kmeans_on_features`) and the Table 2 layout.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from .tower import pixel_values
from .vlm import llava_core

if TYPE_CHECKING:
    import pandas as pd

#: The k-means row's method name (Tables 2 and 3).
KMEANS_METHOD = "k-means (frozen features)"
#: Columns of every per-episode row, whatever the method.
ROW_COLUMNS = ["model", "method", "test_set", "episode_id", "n_clusters", "n_points", "accuracy", "ari", "nmi",
               "well_formed"]


def score_image_rows(episodes: Sequence, predicted: Sequence, model: str, method: str, test_set: str) -> "pd.DataFrame":
    """One row per episode: accuracy, ARI, NMI. ``predicted``: label lists or Predictions (same order)."""
    import pandas as pd

    from ..metrics import score

    rows = []
    for ep, p in zip(episodes, predicted):
        labels = getattr(p, "labels", p)
        rows.append({"model": model, "method": method, "test_set": test_set, "episode_id": ep.id,
                     "n_clusters": ep.n_clusters, "n_points": ep.n_points, **score(ep.labels, labels),
                     "well_formed": bool(getattr(p, "well_formed", True))})
    return pd.DataFrame(rows, columns=ROW_COLUMNS)


def chance_image_rows(episodes: Sequence, test_set: str, seed: int = 0) -> "pd.DataFrame":
    """Chance level on image episodes: uniformly random labels in 0..c-1 (20 seeded draws per episode)."""
    import pandas as pd

    from ..evaluate import chance_scores

    rows = [{"model": "chance", "method": "chance (random labels)", "test_set": test_set, "episode_id": ep.id,
             "n_clusters": ep.n_clusters, "n_points": ep.n_points, **chance_scores(ep, i, seed=seed), "well_formed": True}
            for i, ep in enumerate(episodes)]
    return pd.DataFrame(rows, columns=ROW_COLUMNS)


def one_label_image_rows(episodes: Sequence, test_set: str) -> "pd.DataFrame":
    """Label 0 for every image: accuracy = the largest cluster's share, ARI 0. With random labels, the chance a
    model must beat (a model that learned the answer format but not the images scores about this)."""
    import pandas as pd

    from ..evaluate import ONE_LABEL
    from ..metrics import score

    rows = [{"model": ONE_LABEL[0], "method": ONE_LABEL[1], "test_set": test_set, "episode_id": ep.id,
             "n_clusters": ep.n_clusters, "n_points": ep.n_points,
             **score(ep.labels, np.zeros(ep.n_points, dtype=int)), "well_formed": True} for ep in episodes]
    return pd.DataFrame(rows, columns=ROW_COLUMNS)


def mean_pooled_features(model, processor, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The frozen tower's features averaged over the patch grid, one vector per image (the k-means baseline)."""
    import torch

    tower = llava_core(model).vision_tower
    out = []
    with torch.no_grad():
        for s in range(0, len(images), batch_size):
            px = pixel_values(processor, images[s:s + batch_size]).to(next(tower.parameters()).dtype)
            out.append(tower(pixel_values=px).last_hidden_state.mean(1).float().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def kmeans_on_features(features: np.ndarray, episodes: Sequence, seed: int = 0) -> list[list[int]]:
    """k-means (the paper's baseline) on each episode's mean-pooled frozen image features."""
    from ..baselines import cluster_points

    return [cluster_points("kmeans", features[ep.indices], ep.n_clusters, random_state=seed) for ep in episodes]


def table2(summary: "pd.DataFrame", paper: "pd.DataFrame | None" = None) -> "pd.DataFrame":
    """Table 2 layout: one row per method, one column per (test set, c), "mean ± se"; paper rows beside."""
    import pandas as pd

    from ..metrics import fmt_mean_se

    s = summary.copy()
    s["column"] = s["test_set"] + ", c=" + s["n_clusters"].astype(int).astype(str)
    s["value"] = [fmt_mean_se(m, e) for m, e in zip(s["accuracy"], s["accuracy_se"])]
    wide = s.pivot_table(index="method", columns="column", values="value", aggfunc="first", sort=False)
    if paper is not None and len(paper):
        p = paper.copy()
        p["column"] = "(paper) " + p["dataset"] + ", c=" + p["n_clusters"].astype(int).astype(str)
        p["value"] = [fmt_mean_se(m, e) for m, e in zip(p["accuracy"], p["stderr"])]
        p["method"] = p["method"].replace({"kmeans": KMEANS_METHOD})
        wide = wide.join(p.pivot_table(index="method", columns="column", values="value", aggfunc="first",
                                       sort=False), how="outer")
    return wide.reset_index()
