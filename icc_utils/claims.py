"""The paper's claims C1-C8, each computed from the CSVs that notebooks 01-06 write under ``results/<profile>/``.

One function per claim returns one row of the claims table (:data:`COLUMNS`); the verdict comes from
:func:`icc_utils.verdicts.decide`, never typed in. Missing files give a "not testable" row naming the file.
"Chance" is the better (by mean accuracy on the same episodes) of random labels and one label for every
point; a claim that presupposes a clustering model guards on that model's ARI (:func:`verdicts.clusters`).
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .paper import paper_results
from .verdicts import (NOT_TESTABLE, best, clusters, compare, decide, guard_text, near_zero, part, part_text)

COLUMNS = ["claim", "statement", "paper_figure", "our_figure", "setting", "ours", "paper", "verdict", "reason"]
CLASSICAL = {"kmeans", "gmm", "agglomerative", "spectral", "chance", "one label"}
REFERENCES = ("chance", "one label")   #: the model names of the two chance references' rows
KMEANS_IMG = "k-means (frozen features)"
FINETUNED = "finetuned"                #: notebook 04's method label of the published adapter's rows
#: df held out of fine-tuning (training uses df in {1, 2, 5, 100}).
UNSEEN_DFS = (1.25, 1.5, 1.75)
#: "Small" model for C1: at most this many billion parameters (read from the name).
SMALL_MAX_B = 3.0
#: Where notebook 03 writes its run on the fine-tuned adapter (beside the pretrained model's in ``03/``).
FINETUNED_DIR = "finetuned"

CLAIMS = {
    "C1": ("Small instruct LLMs cluster near chance zero-shot.", "Figure 2 / Table 1"),
    "C2": ("Heavy tails (small df) hurt k-means more than LLMs.", "Figure 2 / Table 1"),
    "C3": ("Spectral clustering on attention beats the model's own generated labels.", "Table 6 / Figure 3 inset"),
    "C4": ("LoRA next-token fine-tuning lifts a small LLM above k-means on heavy tails (df 1), on unseen df and "
           "on lognormal data.", "Table 1 / Table 4"),
    "C5": ("Permutation augmentation lowers the sensitivity to the order of the points.", "Table 5"),
    "C6": ("Fine-tuning sharpens the cluster structure in attention (spectral clustering on it improves).",
           "Figure 3 / Figure 9 / Table 6"),
    "C7": ("Fine-tuned image ICC beats k-means on the same frozen features for unseen classes.", "Table 2"),
    "C8": ("The condition in the prompt changes the clustering: conditional ICC beats unconditional baselines "
           "under every condition.", "Table 3 / Figure 5"),
}


# ---------------------------------------------------------------- helpers

def _read(root: Path, rel: str) -> pd.DataFrame | None:
    path = Path(root) / rel
    return pd.read_csv(path) if path.is_file() else None


def _metric(df: pd.DataFrame, mask, metric: str = "accuracy") -> pd.Series:
    """``metric`` of the rows selected by ``mask``, indexed by episode."""
    return df[mask].set_index("episode_id")[metric]


def claim_row(claim: str, root: Path, figure: str = "", **fields) -> dict:
    statement, paper_figure = CLAIMS[claim]
    row = {"claim": claim, "statement": statement, "paper_figure": paper_figure,
           "our_figure": figure if figure and (Path(root) / figure).is_file() else "",
           "setting": "", "ours": "", "paper": "", "verdict": NOT_TESTABLE, "reason": ""}
    row.update(fields)
    return row


def _missing(claim: str, root: Path, rel: str, figure: str = "", paper: str = "") -> dict:
    nb = rel.split("/")[0]
    return claim_row(claim, root, figure, paper=paper, reason=f"{rel} is missing (notebook {nb} not run at this profile)")


def _cells(values) -> str:
    vals = sorted(pd.Series(values).dropna().unique())
    return ",".join(f"{v:g}" if isinstance(v, (int, float, np.number)) else str(v) for v in vals)


def _paper_mean(table: str, **filters) -> float:
    rows = paper_results(table, **filters)
    return float(rows["accuracy"].mean()) if len(rows) else math.nan


def model_size_b(name: str) -> float:
    """Parameters in billions read from a model name (``SmolLM2-135M`` -> 0.135, ``Llama-3.2-1B`` -> 1); NaN if none."""
    m = re.search(r"(?<![\d.])(\d+(?:\.\d+)?)([MB])(?![A-Za-z])", str(name))
    if not m:
        return math.nan
    return float(m.group(1)) / (1000 if m.group(2) == "M" else 1)


def chance_reference(df: pd.DataFrame, mask=None) -> tuple[str, pd.Series]:
    """(name, accuracy per episode) of the better chance reference (random labels or one label for every
    point, by mean accuracy) among ``df``'s rows (restricted to ``mask``); an empty Series if neither is there."""
    df = df if mask is None else df[mask]
    refs = {m: _metric(df, df["model"].eq(m)) for m in REFERENCES}
    refs = {m: s for m, s in refs.items() if len(s)}
    if not refs:
        return "chance", pd.Series(dtype=float)
    name = max(refs, key=lambda m: refs[m].mean())
    return name, refs[name]


def _is_icc(method: str) -> bool:
    """A fine-tuned ICC row of notebooks 05/06 (``ICC (Small)``), not GPT and not the unconditional ICC."""
    m = str(method)
    return m.startswith("ICC (") and "gpt" not in m.lower() and "unconditional" not in m.lower()


def _llm_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[~df["model"].isin(CLASSICAL)]


# ---------------------------------------------------------------- claims

def claim_c1(root: Path, z: float = 2.0) -> dict:
    """C1: each small (<= 3B) LLM's zero-shot ARI is within ±0.05 of 0 (two one-sided tests), on its
    replies that are lists of more than one label (constrained decoding where run, else free decoding).
    A model whose replies are malformed or one label for every point is not testable: near-chance
    clustering cannot be told from not answering."""
    rel, fig = "01/fig2_episodes.csv", "01/figure2_accuracy_vs_df.png"
    p1b = paper_results("T1", model="Llama-3.2-1B-Instruct", method="zero-shot")
    paper = (f"Llama-3.2-1B zero-shot {p1b['accuracy'].min():.2f}-{p1b['accuracy'].max():.2f} over df "
             "(T1, c=3, d=3; no chance level given)") if len(p1b) else ""
    df = _read(root, rel)
    if df is None:
        return _missing("C1", root, rel, fig, paper)
    llm = _llm_rows(df)
    llm = llm[llm["method"].str.startswith("zero-shot")]
    small = sorted(m for m in llm["model"].unique() if model_size_b(m) <= SMALL_MAX_B)
    setting = f"c={_cells(df['n_clusters'])}, d={_cells(df['dim'])}, df={_cells(df['df'])}, small = <= {SMALL_MAX_B:g}B"
    if not small:
        return claim_row("C1", root, fig, setting=setting, paper=paper, reason=f"no small-LLM zero-shot rows in {rel}")
    ref_name, ref = chance_reference(df)
    parts, texts, reasons = [], [], []
    for m in small:
        rows = llm[llm["model"].eq(m)]
        method = "zero-shot+constrained" if rows["method"].eq("zero-shot+constrained").any() else "zero-shot"
        rows = rows[rows["method"].eq(method)]
        usable = rows["well_formed"].astype(bool) & rows["n_pred_clusters"].gt(1)
        two = near_zero(f"{m} {method}", rows[usable].set_index("episode_id")["ari"])
        parts += two
        acc = compare("accuracy − " + ref_name, _metric(rows, usable), ref)
        texts.append(f"{m} {method}: ARI {two[0]['a']:.3f} ± {two[0]['se']:.3f} on {int(usable.sum())} of "
                     f"{len(rows)} replies ({rows['well_formed'].astype(bool).mean():.0%} well-formed, "
                     f"{(rows['n_pred_clusters'] == 1).mean():.0%} one label); {part_text(acc)}")
        if usable.sum() < len(rows):
            reasons.append(f"{m}: {len(rows) - int(usable.sum())} of {len(rows)} replies malformed or one label")
    verdict, reason = decide(parts, z)
    if reasons and verdict == NOT_TESTABLE:
        reason = "; ".join(reasons) + "; " + reason
    return claim_row("C1", root, fig, setting=setting, ours="; ".join(texts), paper=paper, verdict=verdict, reason=reason)


def _c2_llm(root: Path, light: float, heavy: float, z: float) -> tuple[str, pd.DataFrame, pd.DataFrame] | None:
    """(name, rows, k-means rows) of the LLM C2 compares: the zero-shot model that clusters best at both
    ends in notebook 01, else the published fine-tuned adapter in notebook 04's Table 1 (labelled so)."""
    for rel, fine_tuned in (("01/fig2_episodes.csv", False), ("04/table1_episodes.csv", True)):
        df = _read(root, rel)
        if df is None:
            continue
        llm = _llm_rows(df)
        llm = llm[llm["method"].eq(FINETUNED)] if fine_tuned else llm
        kmeans = df[df["model"].eq("kmeans")]
        options = []
        for (model, method), rows in llm.groupby(["model", "method"]):
            g = [clusters("", _metric(rows, rows["df"].eq(d), "ari")) for d in (light, heavy)]
            if all(p["n"] and p["stat"] >= z for p in g):
                options.append((min(p["stat"] for p in g), model, method, rows))
        if options:
            _, model, method, rows = max(options, key=lambda o: o[0])
            return f"{model} {method}" + (" (fine-tuned stand-in)" if fine_tuned else ""), rows, kmeans
    return None


def claim_c2(root: Path, z: float = 2.0) -> dict:
    """C2: (k-means drop) − (LLM drop) from df 100 to df 1, paired per episode, for an LLM that clusters at
    both ends (zero-shot if one does, else the fine-tuned adapter)."""
    fig = "01/figure2_accuracy_vs_df.png"
    k = paper_results("T1", model="kmeans").set_index("df")["accuracy"]
    g4 = paper_results("T1", model="gpt-4o").set_index("df")["accuracy"]
    paper = (f"drop df=100→1: k-means {k[100] - k[1]:.2f}, gpt-4o {g4[100] - g4[1]:.2f} (T1, c=3, d=3)"
             if {1, 100} <= set(k.index) & set(g4.index) else "")
    light, heavy = 100.0, 1.0
    setting = f"c=3, d=3, df {light:g} → {heavy:g}"
    if _read(root, "01/fig2_episodes.csv") is None and _read(root, "04/table1_episodes.csv") is None:
        return _missing("C2", root, "01/fig2_episodes.csv", fig, paper)
    chosen = _c2_llm(root, light, heavy, z)
    if chosen is None:
        return claim_row("C2", root, fig, setting=setting, paper=paper,
                    reason=f"no LLM (zero-shot or fine-tuned) clusters at both df={light:g} and df={heavy:g}: "
                           "its drop would be the drop of a constant answer")
    name, rows, kmeans = chosen
    g = {d: compare("", _metric(kmeans, kmeans["df"].eq(d)), _metric(rows, rows["df"].eq(d))) for d in (light, heavy)}
    drops = [s.loc[s["df"].eq(light), "accuracy"].mean() - s.loc[s["df"].eq(heavy), "accuracy"].mean()
             for s in (kmeans, rows)]
    p = part("k-means drop − LLM drop", g[light]["mean"] - g[heavy]["mean"],
             math.hypot(g[light]["se"], g[heavy]["se"]), min(g[light]["n"], g[heavy]["n"]), *drops,
             names=("k-means drop", "LLM drop"))
    guards = [clusters(f"{name} at df={d:g}", _metric(rows, rows["df"].eq(d), "ari")) for d in (light, heavy)]
    verdict, reason = decide([p], z, guards)
    return claim_row("C2", root, fig, setting=setting + f", LLM = {name}", paper=paper, verdict=verdict, reason=reason,
                ours=part_text(p) + "; " + "; ".join(map(guard_text, guards)))


def _sc_at_chosen_layer(root: Path, folder: str) -> tuple[int, pd.DataFrame] | None:
    """(l*, SC rows per test episode at l*) from notebook 03's files in ``folder``; None if missing."""
    sc, val = _read(root, f"{folder}/sc_layers_episodes.csv"), _read(root, f"{folder}/sc_val_layers.csv")
    if sc is None or val is None:
        return None
    layer = int(val.loc[val["chosen"].astype(str).str.lower().eq("true"), "layer"].iloc[0])
    return layer, sc[sc["layer"].eq(layer)].set_index("episode_id")


def _best_generation(gen: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """The better (by mean accuracy) of free and constrained generation among notebook 03's LLM rows."""
    llm = _llm_rows(gen)
    method = llm.groupby("method")["accuracy"].mean().idxmax()
    return method, llm[llm["method"].eq(method)].set_index("episode_id")


def _sc_vs_gen(root: Path, folder: str, z: float) -> tuple[dict, list[dict], str] | None:
    sc, gen = _sc_at_chosen_layer(root, folder), _read(root, f"{folder}/gen_kmeans_episodes.csv")
    if sc is None or gen is None or _llm_rows(gen).empty:
        return None
    (layer, sc_rows), (method, gen_rows) = sc, _best_generation(gen)
    p = compare(f"SC(l{layer}) − {method}", sc_rows["accuracy"], gen_rows["accuracy"], names=("SC", method))
    guard = best([clusters(f"SC(l{layer})", sc_rows["ari"]), clusters(method, gen_rows["ari"])])
    model = _llm_rows(gen)["model"].iloc[0]
    return p, [guard], f"{model}, l*={layer} chosen on validation episodes"


def claim_c3(root: Path, z: float = 2.0) -> dict:
    """C3: SC on A^II at the layer chosen on validation episodes vs the better of free and constrained
    generation, paired per test episode; the pretrained model if SC or generation clusters there, else the
    fine-tuned adapter (notebook 03's ``finetuned/`` run, labelled so)."""
    fig = "03/figure3_inset_sc_per_layer.png"
    m = "Llama-3.1-8B-Instruct"
    paper = (f"{m}: SC(opt) {_paper_mean('T6', model=m, method='SC(opt)'):.2f}, SC(l23) "
             f"{_paper_mean('T6', model=m, method='SC(l23)'):.2f} vs Gen {_paper_mean('T6', model=m, method='Gen'):.2f} "
             "(T6, mean over its cells)")
    before = _sc_vs_gen(root, "03", z)
    if before is None:
        return _missing("C3", root, "03/sc_layers_episodes.csv, sc_val_layers.csv or gen_kmeans_episodes.csv",
                        fig, paper)
    chosen, label = before, "pretrained"
    if before[1][0]["stat"] < z:
        after = _sc_vs_gen(root, f"03/{FINETUNED_DIR}", z)
        if after is not None:
            chosen, label = after, "fine-tuned stand-in (the pretrained model clusters neither way)"
    p, guards, setting = chosen
    verdict, reason = decide([p], z, guards)
    sc = _read(root, "03/sc_layers_episodes.csv")
    return claim_row("C3", root, fig, paper=paper, verdict=verdict, reason=reason,
                setting=f"{setting}, {label}, c={_cells(sc['n_clusters'])}, d={_cells(sc['dim'])}, df={_cells(sc['df'])}",
                ours=part_text(p) + "; " + guard_text(guards[0]))


def claim_c4(root: Path, z: float = 2.0) -> dict:
    """C4: the published adapter − k-means on the same episodes at df 1, on unseen df (1.25-1.75) and on
    lognormal data; the adapter must cluster in each."""
    fig = "04/table1_accuracy_vs_df.png"
    pk, pft = paper_results("T1", model="kmeans"), paper_results("T1", model="Llama-3.2-1B-Instruct", method="finetuned")
    gap = pft.set_index("df")["accuracy"] - pk.set_index("df")["accuracy"]
    logn = _paper_mean("T4", model="Llama-3.1-8B-Instruct", method="finetuned") - _paper_mean("T4", model="kmeans")
    paper = (f"Llama-3.2-1B finetuned − k-means {gap.get(1.0, math.nan):+.2f} (df 1), "
             f"{gap[gap.index.isin(UNSEEN_DFS)].mean():+.2f} (unseen df) (T1, c=3, d=3); "
             f"Llama-3.1-8B finetuned − k-means {logn:+.2f} (T4 lognormal)")
    t1, t4 = _read(root, "04/table1_episodes.csv"), _read(root, "04/table4_episodes.csv")
    if t1 is None:
        return _missing("C4", root, "04/table1_episodes.csv", fig, paper)
    ft, km = t1["method"].eq(FINETUNED), t1["model"].eq("kmeans")
    unseen = t1["df"].apply(lambda v: any(np.isclose(v, u) for u in UNSEEN_DFS))
    df1 = np.isclose(t1["df"], 1.0)
    cells = [("df 1", t1, ft & df1, km & df1), ("unseen df", t1, ft & unseen, km & unseen)]
    if t4 is not None:
        cells.append(("lognormal", t4, t4["method"].eq(FINETUNED), t4["model"].eq("kmeans")))
    parts = [compare(name, _metric(d, a), _metric(d, b), names=("fine-tuned", "k-means")) for name, d, a, b in cells]
    guards = [clusters(f"fine-tuned at {name}", _metric(d, a, "ari")) for name, d, a, _ in cells]
    if t4 is None:
        parts.append(part("lognormal", math.nan, math.nan, 0))
    model = t1.loc[ft, "model"].iloc[0] if ft.any() else "no fine-tuned rows"
    setting = f"{model}, c={_cells(t1['n_clusters'])}, d={_cells(t1['dim'])}, fresh test block; T4 lognormal"
    verdict, reason = decide(parts, z, guards)
    return claim_row("C4", root, fig, setting=setting, paper=paper, verdict=verdict, reason=reason,
                ours="; ".join(part_text(p) for p in parts) + "; " + "; ".join(map(guard_text, guards)))


def claim_c5(root: Path, z: float = 2.0) -> dict:
    """C5: per base episode, the std of accuracy across point orders (ddof=0, as Table 5): finetuned −
    finetuned-aug, paired; both adapters must cluster."""
    rel, fig = "04/table5_episodes.csv", "04/table5_orders.png"
    t5 = paper_results("T5", model="Llama-3.1-8B-Instruct")
    std = t5.groupby("method")["permutation_std"].mean()
    paper = (f"order std finetuned {std['finetuned']:.3f} vs finetuned-aug {std['finetuned-aug']:.3f} "
             "(T5, Llama-3.1-8B, mean over df)") if {"finetuned", "finetuned-aug"} <= set(std.index) else ""
    df = _read(root, rel)
    if df is None:
        return _missing("C5", root, rel, fig, paper)
    setting = (f"c={_cells(df['n_clusters'])}, d={_cells(df['dim'])}, df={_cells(df['df'])}, "
               f"{df.groupby('base_episode')['episode_id'].nunique().max()} orders per episode")
    if not {FINETUNED, "finetuned-aug"} <= set(df["method"]):
        return claim_row("C5", root, fig, setting=setting, paper=paper, reason="no finetuned and finetuned-aug rows")
    per_ep = df.groupby(["method", "base_episode"])["accuracy"].agg(lambda a: float(np.std(a)))
    p = compare("order std: finetuned − finetuned-aug", per_ep[FINETUNED], per_ep["finetuned-aug"],
                names=(FINETUNED, "finetuned-aug"))
    guards = [clusters(m, df[df["method"].eq(m)].groupby("base_episode")["ari"].mean()) for m in (FINETUNED, "finetuned-aug")]
    verdict, reason = decide([p], z, guards)
    return claim_row("C5", root, fig, setting=setting, paper=paper, verdict=verdict, reason=reason,
                ours=part_text(p) + "; " + "; ".join(map(guard_text, guards)))


def claim_c6(root: Path, z: float = 2.0) -> dict:
    """C6: SC accuracy on A^II with the published adapter − without, paired per test episode, each at its own
    layer chosen on validation episodes; at least one side must cluster."""
    fig = f"02/{FINETUNED_DIR}/figure3_block_matrix.png"
    m, mf = "Llama-3.1-8B-Instruct", "Llama-3.1-8B-Instruct (finetuned)"
    d = {k: _paper_mean("T6", model=mf, method=k) - _paper_mean("T6", model=m, method=k) for k in ("SC(opt)", "SC(l23)")}
    paper = f"Llama-3.1-8B after − before: SC(opt) {d['SC(opt)']:+.2f}, SC(l23) {d['SC(l23)']:+.2f} (T6)"
    before, after = _sc_at_chosen_layer(root, "03"), _sc_at_chosen_layer(root, f"03/{FINETUNED_DIR}")
    if before is None or after is None:
        return _missing("C6", root, f"03/{FINETUNED_DIR}/sc_layers_episodes.csv or 03/sc_layers_episodes.csv",
                        fig, paper)
    p = compare(f"SC after (l{after[0]}) − before (l{before[0]})", after[1]["accuracy"], before[1]["accuracy"],
                names=("after", "before"))
    guard = best([clusters("SC after", after[1]["ari"]), clusters("SC before", before[1]["ari"])])
    sc = _read(root, "03/sc_layers_episodes.csv")
    setting = f"c={_cells(sc['n_clusters'])}, d={_cells(sc['dim'])}, df={_cells(sc['df'])}, shared test episodes"
    verdict, reason = decide([p], z, [guard])
    return claim_row("C6", root, fig, setting=setting, paper=paper, verdict=verdict, reason=reason,
                ours=part_text(p) + "; " + guard_text(guard))


def claim_c7(root: Path, z: float = 2.0) -> dict:
    """C7: on unseen classes, for each c, the best fine-tuned ICC size − k-means on the same frozen features,
    paired per episode; the ICC model must cluster at each c."""
    rel, fig = "05/table2_episodes.csv", "05/table2_accuracy_vs_c.png"
    kim = _paper_mean("T2", dataset="ImageNet", model="kmeans")
    paper = "ImageNet ICC − k-means: " + ", ".join(
        f"{s} {_paper_mean('T2', dataset='ImageNet', model=f'ICC ({s})') - kim:+.2f}" for s in ("Small", "Medium", "Large")
    ) + " (T2, mean over c=2-5)"
    df = _read(root, rel)
    if df is None:
        return _missing("C7", root, rel, fig, paper)
    df = df[df["test_set"].eq("unseen classes")]
    icc = sorted(m for m in df["method"].unique() if _is_icc(m))
    setting = f"unseen classes, c={_cells(df['n_clusters'])}, best of {', '.join(icc) or 'no ICC rows'} per c"
    if df.empty or not icc or not df["method"].eq(KMEANS_IMG).any():
        return claim_row("C7", root, fig, setting=setting, paper=paper, reason=f"no ICC or k-means rows in {rel}")
    parts, guards = [], []
    for c, cell in df.groupby("n_clusters"):
        km = _metric(cell, cell["method"].eq(KMEANS_IMG))
        top = best([compare(f"c={c}: {m} − k-means", _metric(cell, cell["method"].eq(m)), km) for m in icc])
        method = top["label"].split(": ", 1)[1].rsplit(" − ", 1)[0]
        parts.append(top)
        guards.append(clusters(f"c={c}: {method}", _metric(cell, cell["method"].eq(method), "ari")))
    verdict, reason = decide(parts, z, guards)
    return claim_row("C7", root, fig, setting=setting, paper=paper, verdict=verdict, reason=reason,
                ours="; ".join(part_text(p) for p in parts) + "; " + "; ".join(map(guard_text, guards)))


def claim_c8(root: Path, z: float = 2.0) -> dict:
    """C8: under every condition, the best conditional ICC − the strongest unconditional baseline (k-means on
    the frozen features or the unconditional ICC), paired per episode; the conditional ICC must cluster."""
    rel, fig = "06/table3_episodes.csv", "06/table3_accuracy_by_condition.png"
    df = _read(root, rel)
    conds = sorted(df["condition"].unique()) if df is not None else ["color", "pattern", "shape"]
    T3 = paper_results("T3", dataset="ImageNet-Attributes")
    pk = T3[T3["model"].eq("kmeans")].set_index("condition")["accuracy"]
    picc = T3[T3["model"].isin(["ICC (Small)", "ICC (Medium)", "ICC (Large)"])].groupby("condition")["accuracy"].max()
    paper = "best ICC − k-means: " + ", ".join(f"{c} {picc[c] - pk[c]:+.2f}" for c in conds if c in pk.index) + \
        " (T3, ImageNet-Attributes)"
    if df is None:
        return _missing("C8", root, rel, fig, paper)
    icc = sorted(m for m in df["method"].unique() if _is_icc(m))
    bases = [m for m in df["method"].unique() if m == KMEANS_IMG or "unconditional" in str(m).lower()]
    setting = f"conditions {', '.join(conds)}, c={_cells(df['n_clusters'])}, ICC = {', '.join(icc) or 'none'}"
    if not icc or not bases:
        return claim_row("C8", root, fig, setting=setting, paper=paper,
                    reason=f"no conditional ICC or no unconditional baseline rows in {rel}")
    parts, guards = [], []
    for c in conds:
        cell = df[df["condition"].eq(c)]
        acc = {m: _metric(cell, cell["method"].eq(m)) for m in icc + bases}
        base = max(bases, key=lambda m: acc[m].mean() if len(acc[m]) else -1)
        top = best([compare(c, acc[m], acc[base], names=(m, base)) for m in icc])
        parts.append(top)
        guards.append(clusters(f"{c}: {top['names'][0]}", _metric(cell, cell["method"].eq(top["names"][0]), "ari")))
    verdict, reason = decide(parts, z, guards)
    return claim_row("C8", root, fig, setting=setting, paper=paper, verdict=verdict, reason=reason,
                ours="; ".join(part_text(p) for p in parts) + "; " + "; ".join(map(guard_text, guards)))


CLAIM_FUNCTIONS = {"C1": claim_c1, "C2": claim_c2, "C3": claim_c3, "C4": claim_c4, "C5": claim_c5, "C6": claim_c6,
                   "C7": claim_c7, "C8": claim_c8}
