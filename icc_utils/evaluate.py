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


def data_columns(ep) -> dict:
    """What an episode's data is, for its score rows: ``distribution`` (``custom`` for hand-made
    data, see :meth:`~icc_utils.data.Episode.from_points`), ``df`` (inf for Gaussian and lognormal,
    as the paper's tables write them; NaN where the data has none), ``n_clusters``, ``dim``, ``n_points``."""
    params = ep.params
    distribution = params.get("distribution", "custom")
    df = params.get("df")
    if df is None:
        df = np.inf if distribution in ("t", "gaussian", "lognormal") else np.nan
    return {"distribution": distribution, "df": float(df), "n_clusters": ep.n_clusters,
            "dim": params.get("dim", len(ep.points[0]) if len(ep.points) else 0), "n_points": ep.n_points}


def score_predictions(episodes: Sequence, predictions: Sequence, model: str, method: str) -> pd.DataFrame:
    """Score predictions against their episodes (matched by id); every episode needs true labels."""
    by_id = {p.episode_id: p for p in predictions}
    rows = []
    for ep in episodes:
        if ep.labels is None:
            raise ValueError(f"episode {ep.id!r} has no true labels, so it cannot be scored; give labels= to "
                             "Episode.from_points, or use the predictions' labels directly")
        if ep.id not in by_id:
            raise ValueError(f"no prediction for episode {ep.id!r}; predictions are matched to episodes by id")
        p = by_id[ep.id]
        s = score(ep.labels, p.labels)
        rows.append({"model": model, "method": method, "episode_id": ep.id, **data_columns(ep), **s,
                     "well_formed": bool(p.well_formed),
                     "n_pred_clusters": len({l for l in p.labels if l >= 0})})
    return pd.DataFrame(rows, columns=ROW_COLUMNS)


def evaluate(backend, episodes: Sequence, profile: str, known_k: bool = True, constrained: bool = False,
             method: str | None = None) -> pd.DataFrame:
    """Predict with ``backend`` (cached for LLMs) and score every episode."""
    cache = reply_cache(profile, backend.name) if backend.kind != "classical" else None
    base = "finetuned" if getattr(backend, "adapter", None) else "zero-shot"
    label = method if method is not None else (method_label(backend.kind, known_k, constrained, base) or backend.name)
    preds = backend.predict(list(episodes), known_k=known_k, constrained=constrained, cache=cache,
                            desc=f"{backend.name} {label}".strip())
    return score_predictions(episodes, preds, backend.name, label)


def build_backends(models: Sequence[str], local_kwargs: dict | None = None, api_kwargs: dict | None = None) -> dict:
    """Backends by model name; ``local_kwargs`` (dtype, batch_size, adapter, threads...) go to local models,
    ``api_kwargs`` (timeout, max_retries, max_workers; None values: the environment's or the defaults,
    see :mod:`icc_utils.api`) to OpenAI-compatible ones. Two names whose backends would share a row
    name (e.g. ``embedded`` twice) are an error."""
    from .models import model_kind
    backends = {}
    for name in models:
        kind = model_kind(name)
        kwargs = local_kwargs if kind == "local" else api_kwargs if kind == "openai" else None
        backends[name] = get_backend(name, **{k: v for k, v in (kwargs or {}).items() if v is not None})
    names = [b.name for b in backends.values()]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ValueError(f"models={list(models)!r}: more than one model would be called {clash} in the tables; "
                         "list each model once")
    return backends


def evaluate_models(backends: dict, episodes: Sequence, profile: str, known_k: bool = True,
                    constrained_modes: Sequence[bool] = (False, True), include_classical: bool = True) -> pd.DataFrame:
    """Evaluate several backends (from :func:`build_backends`); LLMs once per decoding mode, APIs unconstrained only.

    Unavailable backends (no API key, no base URL) are skipped (the notebook prints why). Classical methods
    need the number of clusters, so they are skipped when ``known_k`` is False.
    """
    frames = []
    for name, b in backends.items():
        if not getattr(b, "available", True):
            continue  # the notebook prints the backend's unavailable_reason once
        if b.kind == "classical":
            if known_k and include_classical:
                frames.append(evaluate(b, episodes, profile))
            continue
        modes = [m for m in constrained_modes if not (m and b.kind == "openai")]
        for constrained in modes:
            frames.append(evaluate(b, episodes, profile, known_k=known_k, constrained=constrained))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=ROW_COLUMNS)


def row_name(df: pd.DataFrame) -> pd.Series:
    """``model`` for classical rows, ``model method`` for LLM rows (for legends and table rows)."""
    model, method = df["model"].astype(str), df["method"].astype(str)
    return pd.Series(np.where(method.eq(model) | method.eq(""), model, model + " " + method), index=df.index)


def chance_scores(episode, index: int, n_draws: int = 20, seed: int = 0) -> dict:
    """Accuracy, ARI, NMI of uniformly random labels in 0..c-1, averaged over ``n_draws`` draws seeded by (seed, index)."""
    from .metrics import score as _score
    rng = np.random.default_rng([seed, index])
    draws = [_score(episode.labels, rng.integers(0, episode.n_clusters, episode.n_points)) for _ in range(n_draws)]
    return {k: float(np.mean([d[k] for d in draws])) for k in ("accuracy", "ari", "nmi")}


def _reference_rows(episodes: Sequence, model: str, method: str, scores) -> pd.DataFrame:
    """Rows of a label-free reference (``scores(index, episode) -> {accuracy, ari, nmi}``), one per episode."""
    rows = []
    for i, ep in enumerate(episodes):
        rows.append({"model": model, "method": method, "episode_id": ep.id, **data_columns(ep),
                     "well_formed": True, "n_pred_clusters": ep.n_clusters, **scores(i, ep)})
    return pd.DataFrame(rows, columns=ROW_COLUMNS)


def chance_rows(episodes: Sequence, n_draws: int = 20, seed: int = 0) -> pd.DataFrame:
    """Chance level: scores of uniformly random labels in 0..c-1, averaged over ``n_draws`` seeded draws per episode."""
    return _reference_rows(episodes, "chance", "random labels", lambda i, ep: chance_scores(ep, i, n_draws, seed))


ONE_LABEL = ("one label", "one label for every point")  #: (model, method) of :func:`one_label_rows`


def one_label_rows(episodes: Sequence) -> pd.DataFrame:
    """What answering label 0 for every point scores: accuracy = the largest cluster's share, ARI = NMI = 0.
    A model that learned the answer format but not the clustering scores about this."""
    def scores(i, ep):
        return {**score(ep.labels, np.zeros(ep.n_points, dtype=int)), "n_pred_clusters": 1}
    return _reference_rows(episodes, *ONE_LABEL, scores)


def reference_scores(episodes: Sequence, profile: str = "default", per_df: bool = False) -> dict:
    """Means over ``episodes`` of k-means accuracy and ARI and of the one-label accuracy
    (:func:`one_label_rows`): the reference lines of a learning curve. With ``per_df``, also
    ``kmeans_accuracy_df<df>`` and ``one_label_accuracy_df<df>`` for each df of the episodes."""
    km = evaluate(get_backend("kmeans"), episodes, profile)
    one = one_label_rows(episodes)
    refs = {"kmeans_accuracy": float(km["accuracy"].mean()), "kmeans_ari": float(km["ari"].mean()),
            "one_label_accuracy": float(one["accuracy"].mean())}
    if per_df:
        for name, rows in (("kmeans", km), ("one_label", one)):
            refs.update({f"{name}_accuracy_df{df:g}": float(g["accuracy"].mean()) for df, g in rows.groupby("df")})
    return refs


def comparison_table(summary: pd.DataFrame, columns: str, paper: pd.DataFrame | None = None,
                     index: Sequence[str] = ("model", "method"), metric: str = "accuracy") -> pd.DataFrame:
    """Wide table "mean ± se" with one row per (model, method) and one column per value of ``columns``.

    Paper rows (``paper_results`` output: ``model``, ``method``, ``accuracy``, ``stderr``) are appended,
    marked ``(paper)``, for the same column values.
    """
    from .metrics import fmt_mean_se
    s = summary.copy()
    s["value"] = [fmt_mean_se(m, e) for m, e in zip(s[metric], s[f"{metric}_se"])]
    s["row"] = row_name(s) if tuple(index) == ("model", "method") else s[list(index)].astype(str).agg(" ".join, axis=1)
    wide = s.pivot_table(index="row", columns=columns, values="value", aggfunc="first", sort=False)
    if paper is not None and len(paper):
        p = paper.copy()
        p["value"] = [fmt_mean_se(m, e) for m, e in zip(p["accuracy"], p["stderr"])]
        p["row"] = "(paper) " + row_name(p)
        p = p[p[columns].isin(wide.columns)]
        wide = pd.concat([wide, p.pivot_table(index="row", columns=columns, values="value", aggfunc="first", sort=False)])
    wide.columns = [f"{columns}={c:g}" if isinstance(c, (int, float)) else f"{columns}={c}" for c in wide.columns]
    return wide.reset_index().rename(columns={"row": "method"})


def format_rows(rows: pd.DataFrame, metrics: Sequence[str] = ("accuracy", "ari", "nmi", "well_formed")) -> pd.DataFrame:
    """Overall "mean ± se" per (model, method) over all episodes, one column per metric."""
    from .metrics import fmt_mean_se, summarize
    s = summarize(rows.assign(well_formed=rows["well_formed"].astype(float)), ["model", "method"], metrics)
    out = s[["model", "method", "n"]].copy()
    for m in metrics:
        out[m] = [fmt_mean_se(a, b) for a, b in zip(s[m], s[f"{m}_se"])]
    return out


def permutation_table(rows: pd.DataFrame, paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """Table 5: mean accuracy and, in parentheses, the mean over episodes of the std across point orders.

    ``rows`` need a ``base_episode`` column (the episode before permutation). The std is the population
    std (ddof=0) of the accuracies of one episode's orders.
    """
    per_ep = rows.groupby(["model", "method", "df", "base_episode"])["accuracy"].agg(["mean", lambda a: float(np.std(a))])
    per_ep.columns = ["mean", "std"]
    agg = per_ep.groupby(["model", "method", "df"]).agg(accuracy=("mean", "mean"), perm_std=("std", "mean"),
                                                         n=("mean", "size")).reset_index()
    agg["value"] = [f"{a:.2f} ({s:.2f})" for a, s in zip(agg["accuracy"], agg["perm_std"])]
    agg["row"] = row_name(agg)
    wide = agg.pivot_table(index="row", columns="df", values="value", aggfunc="first", sort=False)
    if paper is not None and len(paper):
        p = paper[paper["df"].isin(wide.columns)].copy()
        p["value"] = [f"{a:.2f} ({s:.2f})" for a, s in zip(p["accuracy"], p["permutation_std"])]
        p["row"] = "(paper) " + row_name(p)
        wide = pd.concat([wide, p.pivot_table(index="row", columns="df", values="value", aggfunc="first", sort=False)])
    wide.columns = [f"df={c:g}" for c in wide.columns]
    return wide.reset_index().rename(columns={"row": "method"})


def reply_samples(backends: dict, episodes: Sequence, profile: str, constrained_modes: Sequence[bool] = (False,),
                  known_k: bool = True, k: int = 5) -> pd.DataFrame:
    """The raw replies behind a table, for readers: the first ``k`` episodes of each cell for every LLM
    backend and decoding mode (read back from the reply cache, so nothing is generated twice): prompt id,
    reply text, parsed labels and whether the reply was well-formed."""
    from .data import select

    shown = select(episodes, n_per_cell=k)
    rows = []
    for b in backends.values():
        if b.kind == "classical" or not getattr(b, "available", True):
            continue
        for constrained in [m for m in constrained_modes if not (m and b.kind == "openai")]:
            preds = b.predict(shown, known_k=known_k, constrained=constrained, cache=reply_cache(profile, b.name),
                              desc=f"{b.name} replies")
            label = method_label(b.kind, known_k, constrained, "finetuned" if getattr(b, "adapter", None) else "zero-shot")
            rows += [{"model": display_name(b.name), "method": label, "episode_id": ep.id, "n_points": ep.n_points,
                      "n_clusters": ep.n_clusters, "reply": p.reply, "labels": " ".join(map(str, p.labels)),
                      "well_formed": bool(p.well_formed)} for ep, p in zip(shown, preds)]
    return pd.DataFrame(rows, columns=["model", "method", "episode_id", "n_points", "n_clusters", "reply", "labels",
                                       "well_formed"])
