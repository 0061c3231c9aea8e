"""Metrics (icc_utils.metrics): Hungarian accuracy, -1 never matched, ARI/NMI, summaries."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from icc_utils.metrics import ari, clustering_accuracy, fmt_mean_se, nmi, score, sem, summarize


@st.composite
def true_pred_perm(draw):
    n = draw(st.integers(1, 40))
    y = draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))
    p = draw(st.lists(st.integers(-1, 6), min_size=n, max_size=n))
    perm = draw(st.permutations(list(range(7))))
    return y, p, perm


@settings(max_examples=300, deadline=None)
@given(true_pred_perm())
def test_invariant_to_relabelling_predictions(args):
    y, p, perm = args
    relabelled = [perm[l] if l >= 0 else -1 for l in p]
    for f in (clustering_accuracy, ari, nmi):
        assert f(y, relabelled) == pytest.approx(f(y, p), abs=1e-12)
    s = score(y, p)
    assert 0.0 <= s["accuracy"] <= 1.0
    assert -1.0 <= s["ari"] <= 1.0 + 1e-12
    assert -1e-12 <= s["nmi"] <= 1.0 + 1e-12
    # -1 points never count: accuracy is at most the share of valid predictions
    assert s["accuracy"] <= sum(l >= 0 for l in p) / len(p) + 1e-12


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=2, max_size=40), st.permutations(list(range(5))))
def test_perfect_relabelled_prediction(y, perm):
    p = [perm[l] + 10 for l in y]
    assert clustering_accuracy(y, p) == 1.0
    assert nmi(y, p) == pytest.approx(1.0)
    assert ari(y, p) == pytest.approx(1.0)


def test_minus_one_is_never_matched():
    assert clustering_accuracy([0, 0, 1, 1], [-1, -1, -1, -1]) == 0.0
    # upstream let the -1 padding match cluster 1 (accuracy 1.0); here those points are wrong
    assert clustering_accuracy([0, 0, 1, 1], [0, 0, -1, -1]) == 0.5
    assert clustering_accuracy([0, 0, 1, 1], [5, 5, 5, -1]) == 0.5
    # -1 points are singletons for ARI, never a shared cluster; NMI gives a reply with any -1 no credit
    assert ari([0, 0, 1, 1], [0, 0, -1, -1]) < 1.0
    assert nmi([0, 0, 1, 1], [0, 0, -1, -1]) == 0.0


def test_invalid_replies_earn_no_nmi():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 30)
    # an unparseable reply (all -1): singletons would give NMI about 0.49 at n=30
    assert nmi(y, [-1] * 30) == 0.0 and ari(y, [-1] * 30) == pytest.approx(0.0, abs=1e-12)
    # a truncated reply (padded with -1) earns no NMI either, however good its prefix
    assert nmi(y, list(y[:20]) + [-1] * 10) == 0.0
    assert nmi(y, y) == pytest.approx(1.0)


def test_hungarian_accuracy_examples():
    assert clustering_accuracy([0, 0, 0, 1, 1, 2], [1, 1, 0, 0, 0, 2]) == pytest.approx(5 / 6)
    # more predicted clusters than true ones: only one predicted cluster per true cluster counts
    assert clustering_accuracy([0, 0, 1, 1], [0, 1, 2, 3]) == 0.5
    # one predicted cluster for everything
    assert clustering_accuracy([0, 0, 0, 1], [7, 7, 7, 7]) == 0.75
    assert math.isnan(clustering_accuracy([], []))
    assert clustering_accuracy(np.array([0, 1]), np.array([1, 0])) == 1.0
    assert clustering_accuracy([0, 1], [2**70, -1]) == 0.5  # labels beyond int64 do not overflow


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="equal length"):
        clustering_accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="equal length"):
        score([0, 1], [[0, 1]])


def test_sem_and_summarize():
    assert sem([1.0, 2.0, 3.0, 4.0]) == pytest.approx(np.std([1, 2, 3, 4], ddof=1) / 2)
    assert math.isnan(sem([0.5]))
    assert sem([1.0, float("nan"), 3.0]) == pytest.approx(np.std([1, 3], ddof=1) / math.sqrt(2))
    df = pd.DataFrame({"model": ["a"] * 4 + ["b"] * 2, "c": [2, 2, 3, 3, 2, 2],
                       "accuracy": [1.0, 0.5, 0.8, 0.6, 0.9, 0.7], "ari": [1, 0, 0.5, 0.5, 1, 1],
                       "nmi": [1, 0, 0.5, 0.5, 1, 1]})
    out = summarize(df, ["model"])
    assert list(out["model"]) == ["a", "b"] and list(out["n"]) == [4, 2]
    a = out.set_index("model").loc["a"]
    acc = [1.0, 0.5, 0.8, 0.6]
    assert a["accuracy"] == pytest.approx(np.mean(acc))
    assert a["accuracy_se"] == pytest.approx(np.std(acc, ddof=1) / 2)
    assert {"ari", "ari_se", "nmi", "nmi_se"} <= set(out.columns)
    by2 = summarize(df, ["model", "c"], metrics=["accuracy"])
    assert len(by2) == 3 and list(by2.columns) == ["model", "c", "accuracy", "accuracy_se", "n"]


def test_fmt_mean_se():
    assert fmt_mean_se(0.834, 0.0123) == "0.83 ± 0.01"
    assert fmt_mean_se(0.834, 0.0123, digits=1, scale=100) == "83.4 ± 1.2"
    assert fmt_mean_se(0.5, float("nan")) == "0.50"
    assert fmt_mean_se(float("nan"), 0.1) == "–"


def test_paper_cells_are_integers_so_cell_labels_match_ours():
    """Paper rows must format as ``d=1,c=2`` like ours (a float ``dim`` once dropped every Table 4 paper row)."""
    from icc_utils.paper import paper_results

    t4 = paper_results("T4", method="kmeans")
    assert len(t4) and {f"d={d},c={c}" for d, c in zip(t4["dim"], t4["n_clusters"])} >= {"d=1,c=2", "d=3,c=4"}
    assert len(paper_results("T1", n_clusters=3, dim=3, df=1)) > 0
