"""Run models on episodes and score them: one row per (model, method, episode).

Model replies are cached as they arrive (``results/<profile>/replies/<model>.jsonl``); the score
tables are recomputed from them, so a rerun after a kill resumes and yields the same tables.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import pandas as pd

from . import results_dir
from .cache import ReplyCache
from .metrics import score
from .models import display_name, get_backend

ROW_COLUMNS = ["model", "method", "episode_id", "distribution", "df", "n_clusters", "dim", "n_points",
               "accuracy", "ari", "nmi", "well_formed", "n_pred_clusters"]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


def reply_cache(profile: str, model_name: str) -> ReplyCache:
    """The reply cache of one model under a profile."""
    return ReplyCache(results_dir(profile, "replies") / f"{_slug(display_name(model_name))}.jsonl")


def method_label(kind: str, known_k: bool = True, constrained: bool = False, base: str = "zero-shot") -> str:
    """Row label: ``zero-shot``, ``zero-shot+constrained``, ``zero-shot (unknown k)``; classical: its name."""
    if kind == "classical":
        return ""
    label = base + ("+constrained" if constrained else "")
    return label if known_k else f"{label} (unknown k)"


def score_predictions(episodes: Sequence, predictions: Sequence, model: str, method: str) -> pd.DataFrame:
    """Score predictions against their episodes (matched by id)."""
    by_id = {p.episode_id: p for p in predictions}
    rows = []
    for ep in episodes:
        p = by_id[ep.id]
        s = score(ep.labels, p.labels)
        df = ep.params["df"]
        rows.append({"model": model, "method": method, "episode_id": ep.id,
                     "distribution": ep.params["distribution"], "df": np.inf if df is None else float(df),
                     "n_clusters": ep.n_clusters, "dim": ep.dim, "n_points": ep.n_points, **s,
                     "well_formed": bool(p.well_formed),
                     "n_pred_clusters": len({l for l in p.labels if l >= 0})})
    return pd.DataFrame(rows, columns=ROW_COLUMNS)


def evaluate(backend, episodes: Sequence, profile: str, known_k: bool = True, constrained: bool = False,
             method: str | None = None) -> pd.DataFrame:
    """Predict with ``backend`` (cached for LLMs) and score every episode."""
    cache = reply_cache(profile, backend.name) if backend.kind != "classical" else None
    label = method if method is not None else (method_label(backend.kind, known_k, constrained) or backend.name)
    preds = backend.predict(list(episodes), known_k=known_k, constrained=constrained, cache=cache,
                            desc=f"{backend.name} {label}".strip())
    return score_predictions(episodes, preds, display_name(backend.name), label)


def evaluate_models(models: Sequence[str], episodes: Sequence, profile: str, known_k: bool = True,
                    constrained_modes: Sequence[bool] = (False, True), backend_kwargs: dict | None = None,
                    backends: dict | None = None) -> pd.DataFrame:
    """Evaluate several models; LLMs once per decoding mode (``constrained_modes``), APIs unconstrained only.

    Unavailable backends (no API key, no base URL) are skipped with a printed note.
    ``backends`` may hold already-built backends by name (to reuse loaded models).
    """
    frames = []
    backends = backends if backends is not None else {}
    for name in models:
        if name not in backends:
            backends[name] = get_backend(name, **((backend_kwargs or {}).get(name, {})))
        b = backends[name]
        if not getattr(b, "available", True):
            print(f"NOTE: {b.unavailable_reason}")
            continue
        if b.kind == "classical":
            if known_k:
                frames.append(evaluate(b, episodes, profile))
            continue
        modes = [m for m in constrained_modes if not (m and b.kind == "openai")]
        for constrained in modes:
            frames.append(evaluate(b, episodes, profile, known_k=known_k, constrained=constrained))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=ROW_COLUMNS)


def row_name(df: pd.DataFrame) -> pd.Series:
    """``model`` for classical rows, ``model method`` for LLM rows (for legends and table rows)."""
    return np.where(df["method"].eq(df["model"]) | df["method"].eq(""), df["model"],
                    df["model"] + " " + df["method"])
