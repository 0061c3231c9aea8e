"""Seeded episodes (icc_utils.data): determinism, seeds, non-empty clusters, distributions, files."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import skew

from icc_utils.data import (PAPER_DFS, Episode, canonical_labels, cell_counts, episode_seed, generate_episode,
                            load_episodes, make_grid, make_training_set, nearest_mean_agreement,
                            normalise_distribution, one_setting_training_set, permute_episode, rule_labelled, save_episodes, select,
                            verify_manifest, write_manifest)


def _same(a: Episode, b: Episode) -> bool:
    return a.to_dict() == b.to_dict()


# ---------------------------------------------------------------- determinism and seeds

def test_same_seed_same_episode():
    a = generate_episode(123, "t", 3, 2, 1.5)
    b = generate_episode(123, "t", 3, 2, 1.5)
    assert _same(a, b)
    assert not _same(a, generate_episode(124, "t", 3, 2, 1.5))


def test_grid_is_deterministic_and_prefix_stable():
    g1 = make_grid("t", [2, 3], [1, 2], [1.0, 100.0], 3, root_seed=0)
    g2 = make_grid("t", [2, 3], [1, 2], [1.0, 100.0], 3, root_seed=0)
    assert [e.to_dict() for e in g1] == [e.to_dict() for e in g2]
    assert len(g1) == 2 * 2 * 2 * 3
    # a smaller profile's episodes are the first ones of a larger profile's, cell by cell
    big = make_grid("t", [2, 3], [1, 2], [1.0, 100.0], 5, root_seed=0)
    assert [e.to_dict() for e in select(big, n_per_cell=3)] == [e.to_dict() for e in g1]
    other_root = make_grid("t", [2, 3], [1, 2], [1.0, 100.0], 3, root_seed=1)
    assert not {e.seed for e in g1} & {e.seed for e in other_root}
    assert len({e.id for e in big}) == len(big)


def test_different_cells_and_splits_give_different_seeds():
    base = dict(root_seed=0, split="test", distribution="t", n_clusters=3, dim=2, df=1.5, index=0)
    seeds = {episode_seed(**base)}
    variants = [dict(split="train"), dict(split="val"), dict(distribution="lognormal", df=None),
                dict(distribution="gaussian", df=None), dict(n_clusters=4), dict(dim=3), dict(df=1.25),
                dict(index=1), dict(root_seed=1)]
    for v in variants:
        seeds.add(episode_seed(**{**base, **v}))
    assert len(seeds) == 1 + len(variants)
    assert episode_seed(**base) == episode_seed(**base)


def test_train_seeds_disjoint_from_test_seeds():
    train = make_training_set(300, root_seed=0)
    test = make_grid("t", [2, 3, 4, 5], [1, 2, 3, 4], PAPER_DFS, 3, root_seed=0)
    assert not {e.seed for e in train} & {e.seed for e in test}
    assert len({e.seed for e in train}) == len(train)
    assert {e.params["df"] for e in train} <= {1.0, 2.0, 5.0, 100.0}
    assert _same(train[7], make_training_set(8, root_seed=0)[7])  # prefix stable too


# ---------------------------------------------------------------- structure

@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**63 - 1), c=st.integers(1, 8), d=st.integers(1, 5),
       extra=st.integers(0, 40), dist=st.sampled_from(["t", "gaussian", "lognormal"]),
       df=st.sampled_from([1.0, 1.25, 2.0, 100.0]))
def test_every_cluster_non_empty_and_labels_canonical(seed, c, d, extra, dist, df):
    ep = generate_episode(seed, dist, c, d, df if dist == "t" else None, n_points=c + extra)
    labels = ep.labels
    assert len(labels) == len(ep.points) == c + extra == ep.n_points
    assert sorted(set(labels)) == list(range(c))  # every cluster non-empty
    assert labels == canonical_labels(labels)
    assert labels[0] == 0
    seen = -1
    for l in labels:  # first appearances come in order 0, 1, 2, ...
        assert l <= seen + 1
        seen = max(seen, l)
    assert all(len(p) == d for p in ep.points)


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**63 - 1), lo=st.integers(5, 30), width=st.integers(0, 30))
def test_length_range_respected(seed, lo, width):
    ep = generate_episode(seed, "t", 5, 2, 2.0, length_range=(lo, lo + width))
    assert lo <= ep.n_points <= lo + width


def test_points_have_two_decimals():
    for ep in make_grid("t", [2, 5], [1, 4], [1.0, 100.0], 4, root_seed=3) + \
            make_grid("lognormal", [3], [2], [None], 4, root_seed=3):
        for p in ep.points:
            for x in p:
                assert isinstance(x, float)
                assert abs(x * 100 - round(x * 100)) < 1e-6
                assert math.copysign(1.0, x) == 1.0 or x != 0.0  # no -0.0


def test_canonical_labels():
    assert canonical_labels([2, 2, 0, 1, 0]) == [0, 0, 1, 2, 1]
    assert canonical_labels([]) == []
    assert canonical_labels(np.array([5, 3, 5])) == [0, 1, 0]


def test_permute_episode_keeps_points_and_recanonicalises():
    ep = generate_episode(7, "t", 4, 2, 5.0)
    perm = permute_episode(ep, seed=1)
    assert sorted(map(tuple, perm.points)) == sorted(map(tuple, ep.points))
    assert perm.labels == canonical_labels(perm.labels)
    pairs = {tuple(p): l for p, l in zip(ep.points, ep.labels)}
    pairs_perm = {tuple(p): l for p, l in zip(perm.points, perm.labels)}
    # the same partition (up to relabelling)
    mapping = {}
    for p, l in pairs.items():
        assert mapping.setdefault(l, pairs_perm[p]) == pairs_perm[p]
    assert perm.id != ep.id and perm.params["permutation_seed"] == 1


def test_rule_labelled_reads_each_label_from_its_point():
    ep = Episode(id="e", seed=3, params={"distribution": "t", "df": 1.0, "n_clusters": 2, "dim": 2, "n_points": 4},
                 points=[[1.5, -9.0], [-0.01, 4.0], [0.0, 0.0], [-7.25, 1.0]], labels=[0, 0, 1, 1])
    sign = rule_labelled(ep, "sign")
    assert sign.labels == [1, 0, 1, 0]  # first coordinate >= 0
    assert rule_labelled(ep, "sign-canonical").labels == [0, 1, 0, 1]
    assert sign.points == ep.points and sign.n_clusters == 2 and sign.seed == ep.seed
    assert sign.params["labels"] == "sign" and sign.id == "e-sign"
    assert rule_labelled(ep, "clusters") is ep
    with pytest.raises(ValueError, match=r"rule='kmeans' is not allowed; choose one of \['clusters', 'sign'"):
        rule_labelled(ep, "kmeans")


# ---------------------------------------------------------------- distributions

def _noise_1d(dist, df=None, n=4000, seed=11):
    ep = generate_episode(seed, dist, 1, 1, df, n_points=n)
    return np.array(ep.points)[:, 0]


def test_t_heavier_tails_at_small_df():
    ratios = {}
    for df in (1.0, 100.0):
        x = _noise_1d("t", df)
        dev = np.abs(x - np.median(x))
        ratios[df] = dev.max() / np.median(dev)
    assert ratios[1.0] > 10 * ratios[100.0]


def test_gaussian_is_t_with_infinite_df():
    assert normalise_distribution("t", float("inf")) == ("gaussian", None)
    a = generate_episode(5, "t", 3, 2, float("inf"))
    b = generate_episode(5, "gaussian", 3, 2)
    assert _same(a, b) and a.params["distribution"] == "gaussian" and a.params["df"] is None
    x = _noise_1d("gaussian")
    dev = np.abs(x - np.median(x))
    assert dev.max() / np.median(dev) < 8  # about 4 sigma / 0.674 sigma for n=4000


def test_lognormal_skewed_positive():
    ep = generate_episode(3, "lognormal", 3, 2, n_points=900)
    pts, labels = np.array(ep.points), np.array(ep.labels)
    for k in range(3):
        for j in range(2):
            assert skew(pts[labels == k, j]) > 0.5
    # and symmetric noise is not systematically skewed
    ep = generate_episode(3, "gaussian", 3, 2, n_points=900)
    pts, labels = np.array(ep.points), np.array(ep.labels)
    assert max(abs(skew(pts[labels == k, j])) for k in range(3) for j in range(2)) < 0.5


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs, name", [
    (dict(distribution="uniform"), "distribution"),
    (dict(df=0.0), "df"),
    (dict(df=-1.0), "df"),
    (dict(df=None), "df"),
    (dict(n_clusters=0), "n_clusters"),
    (dict(n_clusters=2.5), "n_clusters"),
    (dict(dim=0), "dim"),
    (dict(length_range=(5, 1)), "length_range"),
    (dict(length_range=(0, 3)), "length_range"),
    (dict(n_points=2, n_clusters=3), "n_points"),
])
def test_bad_inputs_name_the_parameter(kwargs, name):
    args = dict(seed=0, distribution="t", n_clusters=3, dim=2, df=2.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        generate_episode(**args)


def test_bad_grid_inputs_name_the_parameter():
    with pytest.raises(ValueError, match="split"):
        episode_seed(0, "dev", "t", 2, 1, 1.0, 0)
    with pytest.raises(ValueError, match="n_episodes"):
        make_grid("t", [2], [1], [1.0], 0, root_seed=0)
    with pytest.raises(ValueError, match="n_clusters"):
        make_grid("t", [1], [1], [1.0], 1, root_seed=0)
    with pytest.raises(ValueError, match="dim"):
        make_grid("t", [2], [0], [1.0], 1, root_seed=0)
    with pytest.raises(ValueError, match="distribution"):
        make_grid("cauchy", [2], [1], [1.0], 1, root_seed=0)
    with pytest.raises(ValueError, match="n_episodes"):
        make_training_set(-1, root_seed=0)


# ---------------------------------------------------------------- files

def test_save_load_round_trip(tmp_path):
    eps = make_grid("t", [2, 3], [2], [1.5], 3, root_seed=0) + make_grid("lognormal", [2], [1], [None], 2, 0)
    path = save_episodes(tmp_path / "test.jsonl", eps)
    back = load_episodes(path)
    assert [e.to_dict() for e in back] == [e.to_dict() for e in eps]
    assert all(isinstance(e, Episode) for e in back)
    # byte-identical when written again
    save_episodes(tmp_path / "again.jsonl", back)
    assert (tmp_path / "again.jsonl").read_bytes() == path.read_bytes()
    assert select(back, distribution="t", n_clusters=[3]) == [e for e in back if e.params["n_clusters"] == 3
                                                             and e.params["distribution"] == "t"]
    assert cell_counts(back) == {"lognormal-c2-d1": 2, "t-c2-d2-df1.5": 3, "t-c3-d2-df1.5": 3}
    with pytest.raises(FileNotFoundError, match="00_data"):
        load_episodes(tmp_path / "missing.jsonl")


def test_manifest_detects_modified_and_missing_files(tmp_path):
    test = save_episodes(tmp_path / "test.jsonl", make_grid("t", [2], [1], [1.0], 3, 0))
    train = save_episodes(tmp_path / "train.jsonl", make_training_set(5, 0))
    manifest = write_manifest(tmp_path / "manifest.json", {"test": test, "train": train}, {"seed": 0})
    assert manifest["files"]["test"]["n_episodes"] == 3 and manifest["files"]["train"]["n_episodes"] == 5
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest
    assert verify_manifest(tmp_path / "manifest.json") == []
    # regenerating identical data verifies
    save_episodes(tmp_path / "test.jsonl", make_grid("t", [2], [1], [1.0], 3, 0))
    assert verify_manifest(tmp_path / "manifest.json") == []
    # one changed digit is detected
    text = test.read_text()
    test.write_text(text.replace("0", "1", 1))
    problems = verify_manifest(tmp_path / "manifest.json")
    assert len(problems) == 1 and problems[0].startswith("test:")
    train.unlink()
    assert any(p.startswith("train:") and "missing" in p for p in verify_manifest(tmp_path / "manifest.json"))


def test_nearest_mean_agreement_tells_separated_from_overlapping_episodes():
    apart = Episode(id="a", seed=0, params={"n_clusters": 2}, points=[[-5.0], [-4.0], [4.0], [5.0]], labels=[0, 0, 1, 1])
    assert nearest_mean_agreement(apart) == 1.0
    # the point 3.0 is labelled with the left cluster (mean -1.0) but lies nearer the right one (mean 4.5)
    crossed = Episode(id="c", seed=0, params={"n_clusters": 2}, points=[[-5.0], [3.0], [4.0], [5.0]], labels=[0, 0, 1, 1])
    assert nearest_mean_agreement(crossed) == 0.75


def test_one_setting_training_set_filters_separated_episodes_and_is_prefix_stable(monkeypatch):
    """A curriculum stage's episodes: one setting, the asked lengths and dfs, train seeds; ``separated`` keeps
    only nearest-mean partitions, and a shorter stage is the start of a longer one."""
    long = one_setting_training_set(20, 0, 2, 1, dfs=[100], length_range=(4, 12), separated=True)
    short = one_setting_training_set(8, 0, 2, 1, dfs=[100], length_range=(4, 12), separated=True)
    assert [e.seed for e in short] == [e.seed for e in long[:8]]
    assert all(nearest_mean_agreement(e) == 1.0 and e.n_clusters == 2 and e.params["dim"] == 1
               and e.params["df"] == 100 and 4 <= e.n_points <= 12 and e.id.startswith("train-") for e in long)
    plain = one_setting_training_set(40, 0, 3, 3, dfs=[1])
    assert [e.seed for e in plain] == [e.seed for e in make_training_set(40, 0, [3], [3], dfs=[1])]
    assert min(nearest_mean_agreement(e) for e in plain) < 1.0      # the filter has something to remove
    monkeypatch.setattr("icc_utils.data.nearest_mean_agreement", lambda ep: 0.5)
    with pytest.raises(ValueError, match=r"n_episodes=3 with separated=True: only 0 of 30"):
        one_setting_training_set(3, 0, 2, 1, separated=True)



def test_select_skips_the_first_start_episodes_of_each_cell():
    from icc_utils.data import make_grid, select

    eps = make_grid("t", [2, 3], [1], [1.0], 6, root_seed=0)
    dev = select(eps, n_per_cell=2)
    fresh = select(eps, start=2, n_per_cell=3)
    assert [e.id[-4:] for e in fresh] == ["0002", "0003", "0004"] * 2
    assert not {e.id for e in dev} & {e.id for e in fresh}
    assert len(select(eps, start=5)) == 2 and select(eps, start=6) == []


# ---------------------------------------------------------------- hand-made data (Episode.from_points)

def test_from_points_goes_through_prompts_models_and_scoring_without_hidden_fields(tmp_path):
    """Custom noise (Laplace) drawn by the user: prompt, a backend, scoring rows that say what the data was."""
    from icc_utils.evaluate import score_predictions
    from icc_utils.models import get_backend
    from icc_utils.prompts import user_prompt

    rng = np.random.default_rng(5)
    centres = np.array([[-6.0, 0.0], [6.0, 0.0], [0.0, 8.0]])
    truth = rng.integers(0, 3, size=20)
    X = centres[truth] + rng.laplace(scale=0.8, size=(20, 2))
    names = np.array(["a", "b", "c"])[truth]  # any hashable labels
    ep = Episode.from_points(X, labels=names, noise="laplace", scale=0.8)
    assert ep.n_points == 20 and ep.dim == 2 and ep.n_clusters == 3 and ep.seed is None
    assert ep.labels == canonical_labels(truth.tolist())
    assert ep.params["distribution"] == "custom" and ep.params["noise"] == "laplace"
    assert ep.points == (np.round(X, 2) + 0.0).tolist()
    assert "into 3 clusters" in user_prompt(ep.points, ep.n_clusters)
    preds = get_backend("kmeans").predict([ep])
    rows = score_predictions([ep], preds, "kmeans", "kmeans")
    row = rows.iloc[0]
    assert row["distribution"] == "custom" and np.isnan(row["df"]) and row["n_clusters"] == 3 and row["dim"] == 2
    assert row["accuracy"] > 0.9
    # the same points give the same id; saved and loaded like generated episodes
    assert Episode.from_points(X, labels=names, noise="laplace", scale=0.8).id == ep.id
    back = load_episodes(save_episodes(tmp_path / "custom.jsonl", [ep]))[0]
    assert back.to_dict() == ep.to_dict()


def test_from_points_records_a_named_distribution_and_df():
    ep = Episode.from_points([[0.0], [1.0], [9.0]], labels=[0, 0, 1], distribution="t", df=2.0, episode_id="mine")
    from icc_utils.evaluate import data_columns
    assert ep.id == "mine" and data_columns(ep)["df"] == 2.0 and data_columns(ep)["distribution"] == "t"


def test_from_points_without_labels_predicts_but_does_not_score():
    from icc_utils.evaluate import score_predictions
    from icc_utils.models import get_backend

    ep = Episode.from_points([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0]], n_clusters=2)
    assert ep.labels is None and ep.n_clusters == 2 and ep.n_points == 3
    preds = get_backend("kmeans").predict([ep])
    assert len(preds[0].labels) == 3
    with pytest.raises(ValueError, match="has no true labels"):
        score_predictions([ep], preds, "kmeans", "kmeans")
    unknown = Episode.from_points([[0.0], [1.0]])
    assert unknown.n_clusters is None


@pytest.mark.parametrize("kwargs, match", [
    ({"points": [[0.0, np.nan]]}, "finite"),
    ({"points": [1.0, 2.0]}, "2-D array"),
    ({"points": [[0.0], [1.0]], "labels": [0]}, "one label per point"),
    ({"points": [[0.0], [1.0]], "n_clusters": 3}, "n_clusters=3"),
    ({"points": [[0.0], [1.0]], "labels": [0, 1], "n_clusters": 1}, "labels hold 2"),
    ({"points": [[0.0]], "distribution": ""}, "distribution"),
    ({"points": [[0.0]], "df": -1.0}, "df"),
    ({"points": [[0.0]], "decimals": -1}, "decimals"),
])
def test_from_points_bad_input_names_the_parameter(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Episode.from_points(**kwargs)
