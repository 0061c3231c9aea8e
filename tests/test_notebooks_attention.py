"""Papermill smoke runs of notebooks 02 (attention figures) and 03 (spectral clustering on attention, Table 6),
asserting on the files they write (notebook 00 runs first: notebook 03 reads its test set)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from icc_utils import RESULTS_DIR
from icc_utils.profiles import load_profile
from icc_utils.runner import NotebookFailed, run_notebooks

PROFILE = "smoke"
N_LAYERS = 30  # the embedded SmolLM2-135M-Instruct
N_HEADS = 9


@pytest.fixture(scope="module")
def smoke_run():
    """Run notebooks 00, 02 and 03 on the smoke profile once for this module."""
    return run_notebooks(PROFILE, only=["00", "02", "03"], progress_bar=False)


@pytest.fixture(scope="module")
def params():
    return load_profile(PROFILE)


def test_runinfo(smoke_run):
    info = json.loads((RESULTS_DIR / PROFILE / "RUNINFO.json").read_text())
    for name in ("02_attention_visualization.ipynb", "03_attention_spectral_clustering.ipynb"):
        assert info["notebooks"][name]["status"] == "ok"
        assert (RESULTS_DIR / PROFILE / name).exists()


# ---------------------------------------------------------------- notebook 02

def test_notebook02_figures(smoke_run):
    res = RESULTS_DIR / PROFILE / "02"
    for png in ("figure3_block_matrix.png", "figure8_layers.png", "figure10_heads.png", "figure11_preprocessing.png",
                "figure9_t_df.png"):
        assert (res / png).stat().st_size > 10_000, png


def test_notebook02_blocks_have_the_right_shapes(smoke_run, params):
    res = RESULTS_DIR / PROFILE / "02"
    m = params["attn_n_points"]
    with np.load(res / "figure3_blocks.npz") as z:
        for key in ("ii", "oi", "oo"):
            assert z[key].shape == (N_LAYERS, N_HEADS, m, m), key
            assert np.isfinite(z[key]).all() and (z[key] >= 0).all()
        assert list(z["layers"]) == list(range(N_LAYERS))
        assert z["labels"].shape == (m,) and z["answer"].shape == (m,)
        # A^II is causal: a point attends only to itself and earlier points
        assert np.allclose(np.triu(z["ii"], 1), 0)
    with np.load(res / "figure9_blocks.npz") as z:
        for df in params["attn_fig9_dfs"]:
            assert z[f"df{df:g}_blocks"].shape == (2 * m, 2 * m)
    with np.load(res / "figure11_preprocessing.npz") as z:
        final = z[f"step{len(z['names']) - 1}"]
        assert final.shape == (m, m) and np.allclose(final, final.T)


def test_notebook02_layer_profile(smoke_run):
    prof = pd.read_csv(RESULTS_DIR / PROFILE / "02" / "layer_profile.csv")
    assert list(prof["layer"]) == list(range(N_LAYERS))
    assert prof["sc_accuracy"].between(0.5, 1).all()  # 2 clusters: Hungarian-matched accuracy >= 0.5
    assert {"contrast_ii", "contrast_oi", "contrast_oo"} <= set(prof.columns)


# ---------------------------------------------------------------- notebook 03

def _cells(params):
    return {(float(d), float(df)) for d in params["sc_dims"] for df in params["sc_dfs"]}


def test_notebook03_per_layer_rows(smoke_run, params):
    rows = pd.read_csv(RESULTS_DIR / PROFILE / "03" / "sc_layers_episodes.csv")
    n_episodes = len(params["sc_dims"]) * len(params["sc_dfs"]) * params["sc_n_per_cell"]
    assert rows["episode_id"].nunique() == n_episodes
    assert len(rows) == n_episodes * N_LAYERS
    assert not rows.duplicated(["episode_id", "layer"]).any()
    assert set(rows["layer"]) == set(range(N_LAYERS))
    assert rows["accuracy"].between(0, 1).all() and (rows["accuracy"] >= 0.5).all()
    assert set(zip(rows["dim"].astype(float), rows["df"].astype(float))) == _cells(params)
    val = pd.read_csv(RESULTS_DIR / PROFILE / "03" / "sc_val_layers.csv")
    assert len(val) == N_LAYERS and val["chosen"].sum() == 1


def test_notebook03_summary(smoke_run, params):
    res = RESULTS_DIR / PROFILE / "03"
    summary = pd.read_csv(res / "sc_summary.csv")
    assert summary["accuracy"].between(0, 1).all()
    fixed = f"SC(l{22 if params['sc_fixed_layer'] is None else params['sc_fixed_layer']})"  # round(23 * 29 / 31) = 22
    for cell in _cells(params):
        got = summary[(summary["dim"] == cell[0]) & (summary["df"] == cell[1])].set_index("method")
        for method in ("SC(opt)", fixed, "SC(l*)", "Gen", "kmeans"):
            assert method in got.index, (cell, method)
            assert got.loc[method, "n"] == params["sc_n_per_cell"]
        # SC(opt) is the best layer of the cell, so at least any single layer's accuracy
        assert got.loc["SC(opt)", "accuracy"] >= got.loc[fixed, "accuracy"] - 1e-12
        assert got.loc["SC(opt)", "accuracy"] >= got.loc["SC(l*)", "accuracy"] - 1e-12
    # one l* for every cell, chosen on the validation episodes
    assert summary.loc[summary["method"] == "SC(l*)", "layer"].nunique() == 1
    val = pd.read_csv(res / "sc_val_layers.csv")
    assert int(summary.loc[summary["method"] == "SC(l*)", "layer"].iloc[0]) == int(val.loc[val["chosen"], "layer"].iloc[0])


def test_notebook03_table6_figure_verdict(smoke_run, params):
    res = RESULTS_DIR / PROFILE / "03"
    t6 = pd.read_csv(res / "table6.csv")
    assert {f"df={df:g}" for df in params["sc_dfs"]} <= set(t6.columns)
    paper = t6[t6["model"].str.startswith("(paper)")]
    assert len(paper) and {"SC(opt)", "SC(l23)", "Gen"} <= set(paper["method"])
    assert {"SC(opt)", "SC(l*)", "Gen"} <= set(t6.loc[~t6["model"].str.startswith("(paper)"), "method"])
    assert (res / "figure3_inset_sc_per_layer.png").stat().st_size > 10_000
    assert not (res / "verdict.md").exists()         # verdicts come from the claims table (icc_utils.claims) only
    executed = (RESULTS_DIR / PROFILE / "03_attention_spectral_clustering.ipynb").read_text()
    assert "C3" in executed and "C6" in executed and "not testable" in executed   # smoke: too few episodes


def test_notebooks_02_03_show_the_finetuned_adapter_beside_the_pretrained_model(smoke_run, params):
    assert (RESULTS_DIR / PROFILE / "02" / "finetuned" / "figure3_block_matrix.png").stat().st_size > 10_000
    before = pd.read_csv(RESULTS_DIR / PROFILE / "03" / "sc_summary.csv")
    after = pd.read_csv(RESULTS_DIR / PROFILE / "03" / "finetuned" / "sc_summary.csv")
    for summary in (before, after):
        assert {"SC(opt)", "SC(l*)", "Gen"} <= set(summary["method"])
    gen = after[after["method"] == "Gen"]
    assert gen["model"].str.contains("2-c2d1-separated").all()      # the smoke profile's finetuned_adapter
    samples = pd.read_csv(RESULTS_DIR / PROFILE / "03" / "finetuned" / "reply_samples.csv")
    assert len(samples) and {"reply", "well_formed"} <= set(samples.columns)


# ---------------------------------------------------------------- bad parameters

@pytest.mark.parametrize("notebook, overrides, needle", [
    ("03", {"sc_dims": [0]}, "sc_dims"),
    ("03", {"sc_gen_constrained_modes": [True]}, "sc_gen_constrained_modes"),
    ("02", {"attn_layer": 999}, "attn_layer=999"),
])
def test_bad_parameter_names_itself(tmp_path, notebook, overrides, needle):
    """A bad parameter fails with a message naming it (range checks before any episode is processed)."""
    with pytest.raises(NotebookFailed) as err:
        run_notebooks(PROFILE, only=[notebook], overrides=overrides, progress_bar=False, results_root=tmp_path)
    assert needle in str(err.value)
    assert err.value.ename == "ValueError"
