"""Notebook 04's point-estimate target flags and its plain-language findings, kept as they were until notebook 04's
verdicts move to the claims table (:mod:`icc_utils.report`); then this module goes."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .config import FinetuneConfig
from .curriculum import CurriculumStage


def target_check(summary, finetuned_name: str, pretrained_name: str, k_df: float = 1.0,
                 min_gain: float = 0.25) -> "pd.DataFrame":
    """The issue's target from Table 1's summary: (1) fine-tuned minus its own zero-shot accuracy, mean
    over the df, at least ``min_gain``; (2) fine-tuned above k-means at df=``k_df``; and, when the
    summary has the ``one label`` reference (:func:`icc_utils.evaluate.one_label_rows`), (3) fine-tuned
    above answering one label for every point (mean over the df): a model that learned the format but
    not the clustering fails (3) while it can pass (1) against malformed zero-shot replies. "Met" uses
    the point estimates; the standard errors are shown beside them."""
    import pandas as pd

    from ..evaluate import ONE_LABEL

    def cell(model, method, df=None):
        g = summary[(summary["model"] == model) & (summary["method"] == method)]
        if df is not None:
            g = g[g["df"] == df]
        return float(g["accuracy"].mean()), float(np.sqrt((g["accuracy_se"] ** 2).sum()) / max(len(g), 1))

    ft, ft_se = cell(finetuned_name, "finetuned")
    zs, zs_se = cell(pretrained_name, "zero-shot")
    ft1, ft1_se = cell(finetuned_name, "finetuned", k_df)
    km1, km1_se = cell("kmeans", "kmeans", k_df)
    rows = [
        {"target": f"fine-tuned beats its zero-shot by >= {min_gain:.2f} (mean over df)", "ours": ft - zs,
         "ours_se": float(np.hypot(ft_se, zs_se)), "detail": f"fine-tuned {ft:.3f} vs zero-shot {zs:.3f}",
         "met": bool(ft - zs >= min_gain)},
        {"target": f"fine-tuned beats k-means at df={k_df:g}", "ours": ft1 - km1, "ours_se": float(np.hypot(ft1_se, km1_se)),
         "detail": f"fine-tuned {ft1:.3f} vs k-means {km1:.3f}", "met": bool(ft1 > km1)}]
    one, one_se = cell(*ONE_LABEL)
    if not np.isnan(one):   # the summary has the one-label reference
        rows.append({"target": "fine-tuned beats answering one label for every point (mean over df)",
                     "ours": ft - one, "ours_se": float(np.hypot(ft_se, one_se)),
                     "detail": f"fine-tuned {ft:.3f} vs one label {one:.3f}", "met": bool(ft > one)})
    return pd.DataFrame(rows)


def finetune_findings(summary, paper, check, run, config: FinetuneConfig,
                      curriculum: Sequence[CurriculumStage] = ()) -> str:
    """Plain-language summary of Table 1 after fine-tuning, beside the paper's numbers (and the curriculum's
    stages, as far as ``run`` got through them)."""
    stages = "".join(f"{'; ' if i else ', a curriculum of: '}{s.name} ({r.episodes_seen} of {s.n_episodes} episodes)"
                     for i, (s, r) in enumerate(zip(curriculum, run.stages)))
    lines = [f"**Training:** {run.episodes_seen} episodes seen in {run.global_step} optimiser steps{stages} "
             f"({run.train_seconds / 60:.1f} min{'' if run.finished else ', stopped at the time budget'}); "
             f"LoRA r={config.lora_r}, alpha={config.lora_alpha} on {list(config.target_modules)}, "
             f"lr {config.learning_rate:g}, effective batch {config.effective_batch_size}. The paper trained on about "
             "100,000 episodes."]
    for _, r in check.iterrows():
        lines.append(f"- {r['target']}: {r['detail']} (difference {r['ours']:+.3f} ± {r['ours_se']:.3f}): "
                     f"**{'met' if r['met'] else 'NOT met'}**.")
    if len(paper):
        p = paper.groupby(["model", "method"])["accuracy"].mean().reset_index()
        lines.append("**Paper, same setting, mean over the df:** " + "; ".join(
            f"{r['model']} {r['method']} {r['accuracy']:.3f}" for _, r in p.iterrows()) + ".")
    if not check["met"].all():
        lines.append("Our fine-tuned model does **not** reproduce the paper's gain at this budget; the learning curve above "
                     "shows how far the training got. See the README for the budget question.")
    return "\n\n".join(lines)
