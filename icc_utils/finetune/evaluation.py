"""Evaluation around training (notebook 04): the learning curve's evaluator and table, k-means as its reference
line, and the before/after rows of Table 1 and its companions."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..data import Episode
from ..prompts import check_answer_format


def curve_evaluator(episodes: Sequence[Episode], batch_size: int = 8, answer_format: str = "paper") -> Callable:
    """An ``on_eval`` for :func:`~icc_utils.finetune.training.train`: greedy free-decoding accuracy of the model being
    trained on ``episodes`` (one row per df: accuracy, well-formed share), plus the overall mean, the mean ARI
    (about 0 for a model that answers one label for every point, whatever its accuracy) and
    ``length_ratio``, the mean of labels written / points (1 when the model keeps count).
    ``answer_format`` as in :class:`~icc_utils.models.LocalChatModel` (``indexed``: a labelled ablation)."""
    from ..metrics import ari, clustering_accuracy
    from ..models import LocalChatModel
    from ..parsing import is_well_formed, n_labels_written

    episodes = list(episodes)
    check_answer_format(answer_format)

    def on_eval(model, tokenizer, step, episodes_seen):
        backend = LocalChatModel.from_loaded(model, tokenizer, name=f"in-training-step{step}", batch_size=batch_size,
                                             answer_format=answer_format)
        preds = backend.predict(episodes, desc=f"learning curve, step {step}")
        acc = np.array([clustering_accuracy(ep.labels, p.labels) for ep, p in zip(episodes, preds)])
        wf = np.array([is_well_formed(p.reply, ep.n_points, ep.n_clusters, answer_format)
                       for ep, p in zip(episodes, preds)])
        ar = np.array([ari(ep.labels, p.labels) for ep, p in zip(episodes, preds)])
        ratio = np.array([n_labels_written(p.reply, answer_format) / ep.n_points for ep, p in zip(episodes, preds)])
        row = {"accuracy": float(acc.mean()), "well_formed": float(wf.mean()), "ari": float(ar.mean()),
               "length_ratio": float(ratio.mean())}
        dfs = np.array([ep.params["df"] for ep in episodes], dtype=float)
        for df in np.unique(dfs):
            row[f"accuracy_df{df:g}"] = float(acc[dfs == df].mean())
        return row

    return on_eval


def kmeans_reference(episodes: Sequence[Episode]) -> float:
    """Mean k-means accuracy on ``episodes`` (NaN for none): a learning curve's reference line."""
    from ..baselines import cluster_points
    from ..metrics import clustering_accuracy

    km = [clustering_accuracy(ep.labels, cluster_points("kmeans", ep.points, ep.n_clusters)) for ep in episodes]
    return float(np.mean(km)) if km else float("nan")


def learning_curve_table(adapter_dir: str | Path, episodes: Sequence[Episode]) -> "pd.DataFrame":  # noqa: F821
    """The learning curve written by :func:`~icc_utils.finetune.training.train` (``eval_curve.csv``) with k-means on
    the same episodes as a reference column."""
    import pandas as pd

    path = Path(adapter_dir) / "eval_curve.csv"
    curve = pd.read_csv(path) if path.exists() else pd.DataFrame(columns=["step", "episodes_seen", "accuracy"])
    return curve.assign(kmeans_accuracy=kmeans_reference(episodes))


def evaluate_before_after(backends: dict, episodes: Sequence[Episode], profile: str,
                          constrained_modes: Sequence[bool] = (False,)) -> "pd.DataFrame":  # noqa: F821
    """Per-episode rows for each backend (``{"pretrained": ..., "finetuned": ..., "kmeans": ...}``):
    LLMs with method ``zero-shot`` / ``finetuned`` / ``finetuned-aug`` (``+constrained``), k-means once."""
    import pandas as pd

    from ..evaluate import evaluate

    frames = []
    for role, backend in backends.items():
        if backend.kind == "classical":
            frames.append(evaluate(backend, episodes, profile))
            continue
        base = "zero-shot" if role == "pretrained" else role
        for c in constrained_modes:
            frames.append(evaluate(backend, episodes, profile, constrained=c,
                                   method=base + ("+constrained" if c else "")))
    return pd.concat(frames, ignore_index=True)
