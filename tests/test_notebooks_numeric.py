"""Papermill smoke runs of notebooks 00 and 01, asserting on the files they write."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from icc_utils import DATA_DIR, RESULTS_DIR
from icc_utils.data import load_episodes, verify_manifest
from icc_utils.runner import run_notebooks

PROFILE = "smoke"


@pytest.fixture(scope="module")
def smoke_run():
    """Run notebooks 00 and 01 on the smoke profile once for this module."""
    return run_notebooks(PROFILE, only=["00", "01"], progress_bar=False)


def test_runinfo(smoke_run):
    info = json.loads((RESULTS_DIR / PROFILE / "RUNINFO.json").read_text())
    for name in ("00_data.ipynb", "01_zero_shot_numeric.ipynb"):
        assert info["notebooks"][name]["status"] == "ok"
        assert (RESULTS_DIR / PROFILE / name).exists()


def test_notebook00_data(smoke_run):
    out = DATA_DIR / PROFILE
    assert verify_manifest(out / "manifest.json") == []
    manifest = json.loads((out / "manifest.json").read_text())
    test_t = load_episodes(out / "test_t.jsonl")
    n_cells = 4 * 4 * 7
    assert len(test_t) == n_cells * manifest["params"]["test_n_per_cell"]
    assert manifest["files"]["test_t"]["n_episodes"] == len(test_t)
    assert len(load_episodes(out / "test_lognormal.jsonl")) == 3 * 3 * manifest["params"]["test_n_per_cell"]
    train = load_episodes(out / "train.jsonl")
    assert len(train) == manifest["params"]["train_n_episodes"]
    assert not ({e.seed for e in train} & {e.seed for e in test_t})
    datasets = pd.read_csv(RESULTS_DIR / PROFILE / "00" / "datasets.csv")
    assert list(datasets["file"]) == ["test_lognormal.jsonl", "test_t.jsonl", "train.jsonl"]
    assert (RESULTS_DIR / PROFILE / "00" / "example_episodes.png").stat().st_size > 10_000


def test_notebook01_figure2(smoke_run):
    res = RESULTS_DIR / PROFILE / "01"
    summary = pd.read_csv(res / "fig2_summary.csv")
    methods = set(zip(summary["model"], summary["method"]))
    for expected in [("SmolLM2-135M-Instruct", "zero-shot"), ("SmolLM2-135M-Instruct", "zero-shot+constrained"),
                     ("kmeans", "kmeans"), ("gmm", "gmm"), ("agglomerative", "agglomerative"),
                     ("spectral", "spectral"), ("chance", "random labels"),
                     ("one label", "one label for every point")]:
        assert expected in methods, expected
    assert set(summary["df"]) == {1.0, 100.0}
    assert summary["accuracy"].between(0, 1).all() and summary["nmi"].between(0, 1).all()
    # constrained decoding always yields a well-formed answer
    constrained = summary[summary["method"] == "zero-shot+constrained"]
    assert (constrained["well_formed"] == 1.0).all()
    # no GPT row without a key or base URL: skipped, not crashed
    assert "gpt-4o" not in set(summary["model"])
    episodes = pd.read_csv(res / "fig2_episodes.csv")
    assert len(episodes) == 2 * 2 * 8  # 2 df x 2 episodes x (2 LLM modes + 4 classical + 2 chance references)
    one = episodes[episodes["method"] == "one label for every point"]
    assert (one["ari"].abs() < 1e-12).all() and (one["n_pred_clusters"] == 1).all()
    table = pd.read_csv(res / "table1_zero_shot.csv")
    assert any(m.startswith("(paper) gpt-4o") for m in table["method"])
    assert {"df=1", "df=100"} <= set(table.columns)
    assert (res / "figure2_accuracy_vs_df.png").exists()
    samples = pd.read_csv(res / "reply_samples.csv")
    assert {"reply", "well_formed"} <= set(samples.columns) and len(samples) >= 4
    budget = pd.read_csv(res / "token_budget.csv")
    assert set(budget["budget"]) == {"answer + 16 tokens", "24 tokens"}       # smoke: budget_max_new_tokens 24
    assert (budget["n"] == 2).all()                                            # smoke: budget_n_episodes 2


def test_notebook01_other_tables(smoke_run):
    res = RESULTS_DIR / PROFILE / "01"
    grid = pd.read_csv(res / "fig6_summary.csv")
    assert set(grid["n_clusters"]) == {2, 3} and set(grid["dim"]) == {1, 2}
    assert (res / "figure6_grid.png").exists()
    t4 = pd.read_csv(res / "table4_lognormal.csv")
    assert "cell=d=1,c=2" in t4.columns and any(m.startswith("(paper) kmeans") for m in t4["method"])
    t5 = pd.read_csv(res / "table5_permutation.csv")
    assert {"df=1", "df=100"} <= set(t5.columns)
    perm = pd.read_csv(res / "table5_episodes.csv")
    assert perm.groupby(["model", "method", "base_episode"]).size().eq(2).all()  # 2 orders per episode
    uk = pd.read_csv(res / "unknown_k_summary.csv")
    assert set(uk["method"]) >= {"zero-shot (unknown k)"}
    assert uk["k_correct"].between(0, 1).all()


def test_notebook01_bad_parameter_names_itself(tmp_path):
    """A bad model name fails in the first code cell with a message naming the parameter."""
    with pytest.raises(Exception) as err:
        run_notebooks(PROFILE, only=["01"], overrides={"models": ["no-such-model"]}, progress_bar=False,
                      results_root=tmp_path)
    text = str(err.value)
    assert "models" in text and "no-such-model" in text
