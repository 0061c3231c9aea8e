"""The verdict system (icc_utils.verdicts): four outcomes, the n >= 30 rule, clustering guards, equivalence."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from icc_utils import verdicts as V


def series(values) -> pd.Series:
    return pd.Series(values, index=[f"e{i}" for i in range(len(values))], dtype=float)


def spread(mean: float, n: int = 40, sd: float = 0.1) -> pd.Series:
    """n values with exactly this mean and a fixed spread (alternating ±sd)."""
    return series(mean + sd * (-1) ** np.arange(n))


def test_z_stat_edge_cases():
    assert V.z_stat(0.2, 0.1) == pytest.approx(2.0)
    assert V.z_stat(0.3, 0.0) == math.inf and V.z_stat(-0.3, 0.0) == -math.inf and V.z_stat(0.0, 0.0) == 0.0
    assert math.isnan(V.z_stat(0.3, math.nan))


@pytest.mark.parametrize("mean, expected", [(0.3, V.REPRODUCED), (-0.3, V.CONTRADICTED), (0.05, V.INCONCLUSIVE),
                                            (-0.05, V.INCONCLUSIVE)])
def test_four_outcomes_from_one_comparison(mean, expected):
    p = V.part("a − b", mean, 0.1, 40)
    assert V.decide([p], 2.0)[0] == expected


def test_one_contradiction_outweighs_reproduced_parts_and_reasons_name_the_parts():
    ok, against = V.part("df 1", 0.3, 0.1, 40), V.part("unseen df", -0.3, 0.1, 40)
    verdict, reason = V.decide([ok, against], 2.0)
    assert verdict == V.CONTRADICTED and "unseen df" in reason and "df 1 " not in reason
    assert V.decide([ok, V.part("x", 0.1, 0.1, 40)], 2.0)[0] == V.INCONCLUSIVE


def test_fewer_than_thirty_episodes_decide_nothing():
    verdict, reason = V.decide([V.part("a", 5.0, 0.1, 29)], 2.0)
    assert verdict == V.NOT_TESTABLE and "n=29" in reason
    assert V.decide([V.part("a", -5.0, 0.1, 29)], 2.0)[0] == V.NOT_TESTABLE   # not even a contradiction
    assert V.decide([V.part("a", 5.0, 0.1, 30)], 2.0)[0] == V.REPRODUCED
    assert V.decide([], 2.0)[0] == V.NOT_TESTABLE


def test_a_model_that_does_not_cluster_makes_the_claim_not_testable():
    big_gap = V.part("fine-tuned − k-means", 0.3, 0.05, 40)
    at_chance = V.clusters("fine-tuned", spread(0.0, sd=0.05))
    verdict, reason = V.decide([big_gap], 2.0, [at_chance])
    assert verdict == V.NOT_TESTABLE and "does not" not in reason and "clusters" in reason
    assert V.decide([big_gap], 2.0, [V.clusters("fine-tuned", spread(0.4))])[0] == V.REPRODUCED


def test_one_label_for_every_point_never_clusters():
    # ARI of a constant answer is exactly 0 on every episode: z = 0, never above 2
    g = V.clusters("one label", series([0.0] * 40))
    assert g["stat"] == 0.0
    assert V.decide([V.part("x", 1.0, 0.1, 40)], 2.0, [g])[0] == V.NOT_TESTABLE


def test_paired_comparison_uses_shared_episodes_only():
    a, b = series([0.8, 0.6, 0.9]), series([0.5, 0.5])
    p = V.compare("a − b", a, b)
    assert p["n"] == 2 and p["mean"] == pytest.approx(0.2) and p["a"] == pytest.approx(0.7)


def test_near_zero_is_two_one_sided_tests():
    inside = V.near_zero("m", spread(0.0, sd=0.05))
    assert V.decide(inside, 2.0)[0] == V.REPRODUCED
    above = V.near_zero("m", spread(0.3, sd=0.05))
    assert V.decide(above, 2.0)[0] == V.CONTRADICTED
    wide = V.near_zero("m", spread(0.0, sd=0.5))          # too noisy to say it is within ±0.05
    assert V.decide(wide, 2.0)[0] == V.INCONCLUSIVE


def test_margin_table_pairs_by_episode_within_each_cell():
    rows = pd.DataFrame([{"episode_id": f"{df}-{i}", "df": df, "method": m, "accuracy": acc + 0.01 * (i % 2)}
                         for df, gap in ((1, 0.1), (100, -0.05)) for i in range(4)
                         for m, acc in (("ft", 0.6 + gap), ("km", 0.6))])
    t = V.margin_table(rows, rows["method"].eq("ft"), rows["method"].eq("km"), "df", ("ft", "km"))
    assert t["df"].tolist() == [1, 100] and t["n"].tolist() == [4, 4]
    assert t["margin"].tolist() == pytest.approx([0.1, -0.05]) and t["ft"].tolist() == pytest.approx([0.705, 0.555])
    assert (t["se"] == 0).all() and t["z"].tolist() == [math.inf, -math.inf]
