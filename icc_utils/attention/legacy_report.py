"""Notebook 02's and 03's written verdicts on the attention claims, computed from the numbers.

Kept apart, unchanged in behaviour, until the notebooks move to the study's central claims table
(:mod:`icc_utils.report`).
"""
from __future__ import annotations

import numpy as np

__all__ = ["compare_methods", "verdict_word", "sc_verdict", "sc_claim_report", "attention_findings"]


def compare_methods(rows, method: str, reference: str = "Gen"):
    """``method`` against ``reference`` over the (dim, df) cells both have, each cell weighted equally:
    ``(mean_method, mean_reference, mean_difference, se_of_difference, cells_where_method_higher, n_cells)``
    (cell standard errors combined), or ``None`` when they share no cell."""
    a = rows[rows["method"] == method].set_index(["dim", "df"])
    b = rows[rows["method"] == reference].set_index(["dim", "df"])
    cells = a.index.intersection(b.index)
    if not len(cells):
        return None
    diff = a.loc[cells, "accuracy"] - b.loc[cells, "accuracy"]
    se = float(np.sqrt((a.loc[cells, "accuracy_se"].fillna(0) ** 2 + b.loc[cells, "accuracy_se"].fillna(0) ** 2).sum())
               / len(cells)) if "accuracy_se" in a else float("nan")
    return (float(a.loc[cells, "accuracy"].mean()), float(b.loc[cells, "accuracy"].mean()), float(diff.mean()), se,
            int((diff > 0).sum()), len(cells))


def verdict_word(difference: float, se: float) -> str:
    """"beats" beyond two standard errors, "is worse than" below minus two, else "is indistinguishable from"."""
    if np.isnan(se):
        return "beats" if difference > 0 else "does not beat"
    return "beats" if difference > 2 * se else ("is worse than" if difference < -2 * se else "is indistinguishable from")


def sc_verdict(summary, paper, model_name: str, fixed_layer: int) -> str:
    """A plain statement, computed from the numbers, of whether spectral clustering on the model's attention
    beats its own generated labels (the paper's Appendix B.2 claim), next to the paper's numbers.

    Rule (:func:`compare_methods`, :func:`verdict_word`): over all (dim, df) cells with equal weight, the
    mean difference SC - Gen and its standard error; "beats" when the difference exceeds two standard
    errors. SC(opt) picks the best layer on the same episodes, so it is optimistic; SC(l<fixed>) is fixed.
    """
    lines = []
    for sc in ("SC(opt)", f"SC(l{fixed_layer})"):
        res = compare_methods(summary, sc)
        if res is None:
            continue
        m_sc, m_gen, d, se, wins, n = res
        lines.append(f"{model_name}: {sc} mean accuracy {m_sc:.3f} vs its own generation (Gen) {m_gen:.3f}: "
                     f"difference {d:+.3f} ± {se:.3f} (SC higher in {wins} of {n} cells), so spectral clustering on "
                     f"its attention {verdict_word(d, se)} its generated labels.")
    if paper is not None and len(paper):
        p = paper.rename(columns={"stderr": "accuracy_se"})
        cells = summary[["dim", "df"]].drop_duplicates()
        p = p.merge(cells, on=["dim", "df"])
        for name, g in p.groupby("model", sort=False):
            res = compare_methods(g, "SC(opt)")
            res23 = compare_methods(g, "SC(l23)")
            if res is None:
                continue
            lines.append(f"Paper, {name}, same cells: SC(opt) {res[0]:.3f} vs Gen {res[1]:.3f} "
                         f"(difference {res[2]:+.3f}, SC higher in {res[4]} of {res[5]} cells)"
                         + (f"; SC(l23) {res23[0]:.3f} (difference {res23[2]:+.3f})." if res23 else "."))
    return "\n".join(lines)


def sc_claim_report(summary, paper, model_name: str, fixed_layer: int, l_star: int, gen_rows,
                    n_clusters: int) -> str:
    """Notebook 03's verdict (markdown): does the paper's claim hold for this model?

    Judged on SC(l*) (layer chosen on validation episodes) and SC(l<fixed>) (fixed in advance): HOLDS when
    both beat Gen by :func:`verdict_word`'s rule, HOLDS PARTLY when one does, "only optimistically" when
    only SC(opt) (layer picked on the test episodes) does, otherwise DOES NOT HOLD. Also compares with
    constrained decoding and k-means when those rows exist.
    """
    lines = sc_verdict(summary, paper, model_name, fixed_layer).splitlines()
    m, _, d, se, wins, n = compare_methods(summary, "SC(l*)")
    w_star = verdict_word(d, se)
    lines.insert(2, f"{model_name}: SC(l*) (layer {l_star}, chosen on validation episodes) mean accuracy {m:.3f}: "
                    f"difference to Gen {d:+.3f} ± {se:.3f} (SC higher in {wins} of {n} cells), so spectral clustering "
                    f"on its attention {w_star} its generated labels.")
    w_fixed = verdict_word(*compare_methods(summary, f"SC(l{fixed_layer})")[2:4])
    w_opt = verdict_word(*compare_methods(summary, "SC(opt)")[2:4])
    if w_star == "beats" and w_fixed == "beats":
        claim = ("HOLDS: spectral clustering on the attention beats the model's own generated labels, with the layer "
                 "fixed in advance and with the layer chosen on validation episodes.")
    elif "beats" in (w_star, w_fixed):
        good, bad = (("the validation-chosen layer l*", f"the fixed layer {fixed_layer}") if w_star == "beats"
                     else (f"the fixed layer {fixed_layer}", "the validation-chosen layer l*"))
        claim = f"HOLDS PARTLY: spectral clustering on the attention beats the generated labels with {good} but not with {bad}."
    elif w_opt == "beats":
        claim = ("DOES NOT HOLD (only optimistically): SC beats the generated labels only when the layer is picked on "
                 "the test episodes themselves (SC(opt)); with a layer fixed in advance or chosen on validation "
                 "episodes it does not.")
    else:
        claim = ("DOES NOT HOLD: spectral clustering on the attention does not beat the model's own generated labels, "
                 "even at the best layer.")
    free = gen_rows[gen_rows["method"] == "zero-shot"]
    lines.append(f"Gen counts an unparseable reply as wrong (as in the paper); {free['well_formed'].mean():.0%} of the "
                 "free replies were a well-formed list of labels.")
    res_c = compare_methods(summary, "SC(l*)", "Gen+constrained")
    if res_c is not None:
        m_c, _, d_c, se_c, wins_c, n_c = res_c
        lines.append(f"Against constrained decoding (the reply forced to n labels in 0..c-1): SC(l*) {m_c:.3f}, "
                     f"difference {d_c:+.3f} ± {se_c:.3f} (SC higher in {wins_c} of {n_c} cells): SC "
                     f"{verdict_word(d_c, se_c)} Gen+constrained.")
    km = summary[summary["method"] == "kmeans"]["accuracy"]
    if len(km):
        lines.append(f"k-means on the same episodes: mean accuracy {km.mean():.3f} (chance for {n_clusters} clusters "
                     f"is at least {1 / n_clusters:.2f}).")
    return f"**For {model_name}, the paper's claim (Appendix B.2) {claim}**\n\n" + "\n\n".join(lines)


def attention_findings(profile, n_layers: int, model_name: str, layer: int) -> str:
    """Plain-language summary of :func:`layer_profile` for one episode, beside the paper's claims.

    "Block structure" in a matrix means a cluster contrast (same-cluster over different-cluster mean
    attention) above 1.2; "middle layers" are the middle third of the layers.
    """
    lo, hi = n_layers // 3, 2 * n_layers // 3
    mid = profile[(profile["layer"] >= lo) & (profile["layer"] < hi)]
    rest = profile[(profile["layer"] < lo) | (profile["layer"] >= hi)]
    best = profile.loc[profile["contrast_ii"].idxmax()]
    at = profile[profile["layer"] == layer].iloc[0]
    lines = [f"**{model_name}, this episode.** A^II cluster contrast (same-cluster / different-cluster mean attention; "
             f"1 = no structure): middle layers {lo}-{hi - 1} mean {mid['contrast_ii'].mean():.2f}, other layers "
             f"{rest['contrast_ii'].mean():.2f}; highest {best['contrast_ii']:.2f} at layer {int(best['layer'])}; "
             f"layer {layer}: {at['contrast_ii']:.2f}, spectral clustering accuracy {at['sc_accuracy']:.2f} "
             f"(best layer {profile['sc_accuracy'].max():.2f}, chance for 2 clusters is at least 0.5)."]
    if "contrast_oi" in profile:
        lines.append(f"Output blocks at layer {layer}: A^OI contrast {at['contrast_oi']:.2f}, A^OO contrast "
                     f"{at['contrast_oo']:.2f} (mean over layers {profile['contrast_oi'].mean():.2f} and "
                     f"{profile['contrast_oo'].mean():.2f}).")
    verdict = "shows" if mid["contrast_ii"].mean() > 1.2 else "does not show"
    lines.append(f"By our rule (contrast > 1.2) the head-averaged A^II in the middle layers {verdict} block structure "
                 "aligned with the clusters. **Paper (Llama-3.1-8B-Instruct):** block structure in A^II in most "
                 "middle layers, a vertical-slash pattern in the last layer, no clusters in A^OI/A^OO before "
                 "fine-tuning and clear clusters there after it.")
    return "\n\n".join(lines)
