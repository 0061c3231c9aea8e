"""Clustering metrics and summary tables (docs/protocol.md, "Metrics").

An invalid label (-1: padding of a short reply, or an unparseable one) never earns credit: accuracy never
matches it, ARI treats each -1 as its own singleton cluster (which cannot agree with anything), and NMI is 0
for any reply holding an invalid label (singletons would *raise* NMI: an all-invalid reply would score about
0.49 at n=30).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from .parsing import INVALID


def _as_arrays(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true, dtype=int)
    raw = np.asarray(y_pred, dtype=object)
    if t.ndim != 1 or raw.shape != t.shape:
        raise ValueError(f"y_true and y_pred must be 1-d of equal length, got {t.shape} and {raw.shape}")
    # Predicted labels are relabelled densely (-1 kept): every metric here is invariant to relabelling,
    # and a parsed reply may hold integers too large for int64 (e.g. "[9223372036854775808]").
    codes: dict[int, int] = {}
    p = np.array([INVALID if int(v) == INVALID else codes.setdefault(int(v), len(codes)) for v in raw], dtype=int)
    return t, p


def clustering_accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Hungarian accuracy: best one-to-one match of predicted to true clusters, matched points / n.

    Predicted label -1 (padding or unparseable) is never matched, so such points always count wrong.
    """
    t, p = _as_arrays(y_true, y_pred)
    if t.size == 0:
        return float("nan")
    valid = p != INVALID
    if not valid.any():
        return 0.0
    _, t_idx = np.unique(t, return_inverse=True)
    p_vals, p_idx = np.unique(p[valid], return_inverse=True)
    counts = np.zeros((len(p_vals), t_idx.max() + 1), dtype=int)
    np.add.at(counts, (p_idx, t_idx[valid]), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / t.size)


def _singletons_for_invalid(p: np.ndarray) -> np.ndarray:
    """Give every -1 its own new cluster, so invalid points never agree with anything."""
    p = p.copy()
    bad = np.flatnonzero(p == INVALID)
    start = (p.max() + 1) if p.size and p.max() >= 0 else 0
    p[bad] = start + np.arange(bad.size)
    return p


def ari(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Adjusted Rand index; each -1 is treated as its own singleton cluster."""
    t, p = _as_arrays(y_true, y_pred)
    return float(adjusted_rand_score(t, _singletons_for_invalid(p)))


def nmi(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Normalised mutual information (arithmetic mean; equals V-measure) of a well-formed reply; 0 when any
    predicted label is invalid (-1), so that neither an unparseable nor a truncated reply earns NMI credit."""
    t, p = _as_arrays(y_true, y_pred)
    if (p == INVALID).any():
        return 0.0
    return float(normalized_mutual_info_score(t, p))


def score(y_true: Sequence[int], y_pred: Sequence[int]) -> dict[str, float]:
    """Accuracy, ARI and NMI in one dict."""
    return {"accuracy": clustering_accuracy(y_true, y_pred), "ari": ari(y_true, y_pred), "nmi": nmi(y_true, y_pred)}


def sem(values) -> float:
    """Standard error of the mean: std (ddof=1) / sqrt(n); NaN for fewer than two values."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    return float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else float("nan")


def summarize(df: pd.DataFrame, by: Sequence[str], metrics: Sequence[str] = ("accuracy", "ari", "nmi")) -> pd.DataFrame:
    """Mean and standard error of each metric per group: columns ``<metric>``, ``<metric>_se``, ``n``."""
    rows = []
    for key, g in df.groupby(list(by), sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key))
        for m in metrics:
            row[m] = float(g[m].mean())
            row[f"{m}_se"] = sem(g[m])
        row["n"] = int(len(g))
        rows.append(row)
    return pd.DataFrame(rows)


def fmt_mean_se(mean: float, se: float, digits: int = 2, scale: float = 1.0) -> str:
    """``0.83 ± 0.01`` style text (``scale=100`` for percentages)."""
    if mean is None or (isinstance(mean, float) and np.isnan(mean)):
        return "–"
    if se is None or (isinstance(se, float) and np.isnan(se)):
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {se * scale:.{digits}f}"
