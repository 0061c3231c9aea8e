"""The notebooks' analyses of attention: answers to append (notebook 02), cluster contrast and the
per-layer profile of one episode (Figures 3 and 8), spectral clustering at every layer over many
episodes and Table 6 (notebook 03), and the folders the notebooks write to.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .extract import AttentionBlocks, extract_attention_blocks
from .spectral import spectral_cluster_attention
from .tokens import encode_episode

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["ANSWER_MODES", "order_by_cluster", "output_dir", "answers_for", "cluster_contrast", "layer_profile",
           "sc_layer_scores", "sc_summary", "table6", "choose_layer", "sc_at_layer", "gen_name"]


# ---------------------------------------------------------------- helpers for the notebooks

def order_by_cluster(labels: Sequence[int]) -> np.ndarray:
    """Point order that groups points by true cluster (stable within a cluster)."""
    return np.argsort(np.asarray(labels), kind="stable")


def output_dir(profile: str, notebook: str, adapter: str | None = None) -> Path:
    """``results/<profile>/<notebook>/`` for the pretrained model, ``.../<notebook>/adapter-<name>/`` with an adapter
    (so notebook 04's rerun with its adapter does not overwrite the pretrained results)."""
    from .. import results_dir

    if adapter:
        return results_dir(profile, notebook, f"adapter-{Path(str(adapter)).name}")
    return results_dir(profile, notebook)


# ---------------------------------------------------------------- notebook 02: answers and cluster contrast

ANSWER_MODES = ("generated", "constrained", "true")


def answers_for(backend, episodes: Sequence, mode: str = "generated", cache=None) -> list[tuple[list[int], str]]:
    """The answer labels to append for ``A^OI``/``A^OO``, one ``(labels, source)`` per episode.

    ``mode``: ``"generated"`` (the model's own greedy reply, as in the paper; a reply that is not a list
    of exactly n labels falls back to constrained decoding, and the source says so), ``"constrained"``
    (the reply under constrained decoding) or ``"true"`` (teacher forcing with the true labels).
    """
    if mode not in ANSWER_MODES:
        raise ValueError(f"mode={mode!r} is not allowed; choose one of {list(ANSWER_MODES)}")
    episodes = list(episodes)
    if mode == "true":
        return [(list(ep.labels), "true labels") for ep in episodes]
    out: list = [None] * len(episodes)
    todo = list(range(len(episodes)))
    if mode == "generated":
        preds = backend.predict(episodes, constrained=False, cache=cache)
        for i, p in enumerate(preds):
            if p.well_formed and len(p.labels) == episodes[i].n_points and min(p.labels) >= 0:
                out[i] = (list(p.labels), "generated (free greedy reply)")
        todo = [i for i in todo if out[i] is None]
    if todo:
        preds = backend.predict([episodes[i] for i in todo], constrained=True, cache=cache)
        src = "constrained decoding" if mode == "constrained" else \
            "constrained decoding (the free reply was not a list of n labels)"
        for i, p in zip(todo, preds):
            out[i] = (list(p.labels), src)
    return out


def cluster_contrast(M: np.ndarray, row_labels: Sequence[int], col_labels: Sequence[int] | None = None,
                     strictly_lower: bool = True) -> float:
    """Mean attention between same-cluster pairs / mean between different-cluster pairs (> 1: block structure).

    For ``A^II`` only the strictly lower triangle counts (``strictly_lower``); for ``A^OI``/``A^OO`` pass
    ``strictly_lower=False`` and the labels of rows and columns.
    """
    M = np.asarray(M, dtype=np.float64)
    r = np.asarray(row_labels)
    c = r if col_labels is None else np.asarray(col_labels)
    same = r[:, None] == c[None, :]
    keep = np.tril(np.ones_like(M, dtype=bool), -1) if strictly_lower else (M > 0)
    a, b = M[same & keep], M[~same & keep]
    return float(a.mean() / b.mean()) if a.size and b.size and b.mean() > 0 else float("nan")


def layer_profile(blocks: "AttentionBlocks", labels: Sequence[int], n_clusters: int,
                  exclude_diagonal: bool = True) -> "pd.DataFrame":
    """Per layer of one episode: cluster contrast of ``A^II``/``A^OI``/``A^OO`` and the accuracy of spectral
    clustering on ``A^II`` (heads averaged)."""
    import pandas as pd

    from ..metrics import clustering_accuracy

    b = blocks.head_mean()
    lab = np.asarray(labels)
    rows = []
    for k, layer in enumerate(b.layers):
        row = {"layer": layer, "contrast_ii": cluster_contrast(b.ii[k], lab),
               "sc_accuracy": clustering_accuracy(lab, spectral_cluster_attention(b.ii[k], n_clusters,
                                                                                  exclude_diagonal=exclude_diagonal))}
        if b.oi is not None:
            row["contrast_oi"] = cluster_contrast(b.oi[k], lab, lab, strictly_lower=False)
            row["contrast_oo"] = cluster_contrast(np.tril(b.oo[k], -1), lab, lab, strictly_lower=True)
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- notebook 03: SC per layer vs generation

def sc_layer_scores(model, tokenizer, episodes: Sequence, model_id: str, exclude_diagonal: bool = True,
                    random_state: int = 0, cache_path: str | Path | None = None, desc: str = "SC on attention"):
    """Spectral clustering on ``A^II`` of every layer for every episode: one row per (episode, layer).

    One forward pass per episode (prompt only, all layers, heads averaged). With ``cache_path`` every
    episode's rows are appended to a JSON Lines file as soon as they are computed, keyed by
    (``model_id``, episode id and seed, settings): a rerun or a resumed run recomputes nothing.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from ..io import append_jsonl, read_jsonl
    from ..metrics import score

    settings = {"model": model_id, "exclude_diagonal": bool(exclude_diagonal), "random_state": int(random_state),
                "heads": "mean", "version": 1}
    done: dict[str, list] = {}
    if cache_path is not None:
        for rec in read_jsonl(cache_path):
            if rec.get("settings") == settings:
                done[rec["key"]] = rec["rows"]
    rows = []
    for ep in tqdm(list(episodes), desc=desc, leave=False):
        key = f"{ep.id}|{ep.seed}"
        if key not in done:
            toks = encode_episode(tokenizer, ep.points, ep.n_clusters)
            blocks = extract_attention_blocks(model, toks, layers="all")
            ep_rows = []
            for k, layer in enumerate(blocks.layers):
                pred = spectral_cluster_attention(blocks.ii[k], ep.n_clusters, random_state, exclude_diagonal)
                ep_rows.append({"layer": layer, **score(ep.labels, pred)})
            done[key] = ep_rows
            if cache_path is not None:
                append_jsonl(cache_path, {"key": key, "settings": settings, "rows": ep_rows})
        df = ep.params["df"]
        for r in done[key]:
            rows.append({"episode_id": ep.id, "distribution": ep.params["distribution"],
                         "df": np.inf if df is None else float(df), "n_clusters": ep.n_clusters, "dim": ep.dim,
                         "n_points": ep.n_points, "layer": r["layer"],
                         **{k: r[k] for k in sorted(r) if k != "layer"}})  # same columns fresh or from the cache
    return pd.DataFrame(rows)


def gen_name(method: str) -> str:
    """Table 6's name of a generation row: ``Gen`` / ``Gen+constrained`` (zero-shot or fine-tuned alike)."""
    for base in ("zero-shot", "finetuned"):
        if method == base or method.startswith(base + "+"):
            return "Gen" + method[len(base):]
    return method


def sc_summary(layer_rows, gen_rows, fixed_layer: int, model_name: str, extra_rows=None):
    """Table 6 rows per (dim, df): SC(opt) (the layer with the best mean accuracy in that cell),
    SC(l<fixed_layer>) and each generation method, mean and standard error over episodes.

    ``gen_rows``/``extra_rows``: per-episode rows of :func:`icc_utils.evaluate.evaluate` (``method``
    names the row, e.g. ``zero-shot`` -> ``Gen``). Columns: dim, df, model, method, layer, accuracy,
    accuracy_se, n.
    """
    import pandas as pd

    from ..metrics import sem

    out = []
    per_layer = layer_rows.groupby(["dim", "df", "layer"])["accuracy"].agg(["mean", sem, "size"]).reset_index()
    for (dim, df), g in per_layer.groupby(["dim", "df"]):
        best = g.loc[g["mean"].idxmax()]  # ties: the lowest layer
        fixed = g[g["layer"] == fixed_layer].iloc[0]
        for method, r in (("SC(opt)", best), (f"SC(l{fixed_layer})", fixed)):
            out.append({"dim": dim, "df": df, "model": model_name, "method": method, "layer": int(r["layer"]),
                        "accuracy": float(r["mean"]), "accuracy_se": float(r["sem"]), "n": int(r["size"])})
    for frame in (gen_rows, extra_rows):
        if frame is None or not len(frame):
            continue
        for (dim, df, method), g in frame.groupby(["dim", "df", "method"]):
            name = gen_name(method)
            out.append({"dim": dim, "df": df, "model": model_name if name.startswith("Gen") else g["model"].iloc[0],
                        "method": name, "layer": -1, "accuracy": float(g["accuracy"].mean()),
                        "accuracy_se": sem(g["accuracy"]), "n": int(len(g))})
    return pd.DataFrame(out)


def table6(summary, paper):
    """Wide Table 6: one row per (dim, model, method), one column per df, "mean ± se"; the paper's rows
    for the same dims and df follow ours, marked ``(paper)``."""
    import pandas as pd

    from ..metrics import fmt_mean_se

    s = summary.assign(value=[fmt_mean_se(a, b) for a, b in zip(summary["accuracy"], summary["accuracy_se"])])
    frames = [s[["dim", "df", "model", "method", "value"]]]
    if paper is not None and len(paper):
        p = paper[paper["dim"].isin(s["dim"].unique()) & paper["df"].isin(s["df"].unique())]
        p = p.assign(value=[fmt_mean_se(a, b) for a, b in zip(p["accuracy"], p["stderr"])],
                     model="(paper) " + p["model"])
        frames.append(p[["dim", "df", "model", "method", "value"]])
    long = pd.concat(frames, ignore_index=True)
    order = {k: i for i, k in enumerate(dict.fromkeys(zip(long["model"], long["method"])))}
    wide = long.pivot_table(index=["dim", "model", "method"], columns="df", values="value", aggfunc="first")
    wide.columns = [f"df={c:g}" for c in wide.columns]
    wide = wide.reset_index()
    wide["_o"] = [order[(a, b)] for a, b in zip(wide["model"], wide["method"])]
    return wide.sort_values(["dim", "_o"]).drop(columns="_o").reset_index(drop=True)


def choose_layer(model, tokenizer, episodes: Sequence, val_episodes: Sequence, model_id: str, out: Path,
                 exclude_diagonal: bool = True):
    """Notebook 03 for one model: SC on ``A^II`` at every layer for the test ``episodes`` and the
    ``val_episodes``; ``l*`` is the layer with the best mean validation accuracy (cells weighted equally,
    ties: the lowest layer), never chosen on the test episodes. Writes ``sc_layers_episodes.csv``,
    ``sc_layers_summary.csv`` and ``sc_val_layers.csv`` into ``out`` (row caches beside them, so a killed
    run resumes); returns (test rows per (episode, layer), l*)."""
    from ..io import write_csv
    from ..metrics import summarize

    rows = sc_layer_scores(model, tokenizer, episodes, model_id, exclude_diagonal,
                           cache_path=out / "sc_layers_cache.jsonl", desc="SC on attention (test)")
    write_csv(out / "sc_layers_episodes.csv", rows)
    write_csv(out / "sc_layers_summary.csv", summarize(rows, ["dim", "df", "layer"]))
    val = sc_layer_scores(model, tokenizer, val_episodes, model_id, exclude_diagonal,
                          cache_path=out / "sc_val_layers_cache.jsonl", desc="SC on attention (validation)")
    by_layer = (val.groupby(["dim", "df", "layer"])["accuracy"].mean().groupby("layer").mean()
                .rename("val_accuracy").reset_index())
    l_star = int(by_layer.loc[by_layer["val_accuracy"].idxmax(), "layer"])
    write_csv(out / "sc_val_layers.csv", by_layer.assign(chosen=by_layer["layer"] == l_star))
    return rows, l_star


def sc_at_layer(estimator, episodes: Sequence) -> "pd.DataFrame":
    """Per-episode scores of a fitted-per-episode :class:`AttentionSpectralClustering` (the library estimator),
    one row per episode (``episode_id``, ``dim``, ``df``, accuracy, ARI, NMI)."""
    import pandas as pd

    from ..metrics import score

    return pd.DataFrame([{"episode_id": ep.id, "dim": ep.dim, "df": float(ep.params["df"]),
                          **score(ep.labels, estimator.fit_predict(np.asarray(ep.points)))} for ep in episodes])
