"""Papermill smoke runs of notebook 04 (LoRA fine-tuning), asserting on the files it writes.

The smoke profile evaluates published curriculum stages (any adapter checks that every cell runs); the later
fixtures set ``finetuned_adapter: ''`` so that the notebook trains a few steps itself, as the paper profile does.
"""
from __future__ import annotations

import hashlib
import json
import shutil

import pandas as pd
import pytest

from icc_utils import RESULTS_DIR
from icc_utils.profiles import load_profile
from icc_utils.runner import run_notebooks

PROFILE = "smoke"
RES = RESULTS_DIR / PROFILE / "04"
TRAIN_HERE = {"finetuned_adapter": "", "second_seed_adapter": "", "aug_adapter": ""}


@pytest.fixture(scope="module")
def smoke_run():
    """Notebook 00 (data) then 04 on the smoke profile, once for this module, from an empty ``results/smoke/04``."""
    shutil.rmtree(RES, ignore_errors=True)
    return run_notebooks(PROFILE, only=["00", "04"], progress_bar=False)


def test_table1_scores_published_adapters_on_the_verdict_block_only(smoke_run):
    params = load_profile(PROFILE)
    rows = pd.read_csv(RES / "table1_episodes.csv")
    assert {"finetuned", "finetuned (seed 1)", "kmeans", "random labels", "one label for every point"} <= set(rows["method"])
    index = rows["episode_id"].str.extract(r"-(\d+)$")[0].astype(int)
    assert (index >= params["verdict_start"]).all(), "a development episode reached the verdict block"
    per_method = rows.groupby("method")["episode_id"].apply(frozenset)
    assert per_method.nunique() == 1, "every method must be scored on the same episodes"
    assert rows.loc[rows["method"] == "finetuned", "model"].str.contains("2-c2d1-separated").all()
    margins = pd.read_csv(RES / "table1_margins.csv")
    assert {"margin", "se", "z", "n", "adapter"} <= set(margins.columns)
    assert set(margins["adapter"]) == {"finetuned", "finetuned (seed 1)"}
    assert (RES / "table1_accuracy_vs_df.png").exists() and (RES / "loss_curves.png").exists()


def test_figure7_table4_table5_and_reply_samples(smoke_run):
    assert {"zero-shot", "finetuned", "kmeans"} <= set(pd.read_csv(RES / "fig7_summary.csv")["method"])
    assert (RES / "figure7_grid.png").exists()
    t4 = pd.read_csv(RES / "table4_episodes.csv")
    assert {"finetuned", "kmeans", "one label for every point"} <= set(t4["method"])
    t5 = pd.read_csv(RES / "table5_episodes.csv")
    assert {"finetuned", "finetuned-aug"} <= set(t5["method"])
    assert t5.groupby(["model", "method", "base_episode"]).size().eq(2).all()   # smoke: 2 orders per episode
    samples = pd.read_csv(RES / "reply_samples.csv")
    assert {"reply", "well_formed"} <= set(samples.columns) and len(samples) >= 2


@pytest.fixture(scope="module")
def trained_run(smoke_run):
    """Notebook 04 training its own adapter (``finetuned_adapter: ''``, 8 episodes of notebook 00's split)."""
    shutil.rmtree(RES, ignore_errors=True)
    return run_notebooks(PROFILE, only=["04"], overrides=TRAIN_HERE, progress_bar=False)


def test_an_adapter_trained_here_is_a_standard_peft_directory(trained_run):
    adapter = RES / "adapter"
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and set(cfg["target_modules"]) == {"q_proj", "v_proj"}
    assert cfg["base_model_name_or_path"] and not cfg["base_model_name_or_path"].startswith("/")
    assert (adapter / "adapter_model.safetensors").stat().st_size > 1000
    train_cfg = json.loads((adapter / "train_config.json").read_text())
    assert train_cfg["n_episodes"] == 8 and train_cfg["finished"]
    loss = pd.read_csv(adapter / "loss_curve.csv")
    assert len(loss) >= 1 and loss["loss"].notna().all() and (loss["episodes_seen"].diff().dropna() > 0).all()
    curve = pd.read_csv(RES / "learning_curve.csv")
    assert len(curve) >= 2 and curve["accuracy"].between(0, 1).all()
    assert (RES / "adapter_aug" / "adapter_model.safetensors").exists()     # smoke: ft_train_aug
    assert "finetuned-aug" in set(pd.read_csv(RES / "table5_episodes.csv")["method"])


def test_rerun_reuses_the_adapter(trained_run):
    """A second run finds the finished adapter and does not train again (same adapter file)."""
    before = (RES / "adapter" / "adapter_model.safetensors").read_bytes()
    run_notebooks(PROFILE, only=["04"], overrides=TRAIN_HERE, progress_bar=False)
    assert (RES / "adapter" / "adapter_model.safetensors").read_bytes() == before
    assert pd.read_csv(RES / "table1_summary.csv")["accuracy"].between(0, 1).all()


def test_bad_parameter_names_itself(tmp_path):
    with pytest.raises(Exception) as err:
        run_notebooks(PROFILE, only=["04"], overrides={"ft_lora_r": 0}, progress_bar=False, results_root=tmp_path)
    assert "lora_r" in str(err.value)


SMOKE_CURRICULUM = [
    {"name": "easy", "n_clusters": 2, "dim": 1, "n_episodes": 4, "points": [4, 8], "dfs": [100], "separated": True},
    {"name": "hard", "n_clusters": 3, "dim": 3, "n_episodes": 4, "points": [6, 12]},
]


@pytest.fixture(scope="module")
def curriculum_run(trained_run):
    """Notebook 04 training a two-stage ``ft_curriculum`` (after the tests above: it replaces ``results/smoke/04``)."""
    shutil.rmtree(RES, ignore_errors=True)
    return run_notebooks(PROFILE, only=["04"], overrides={**TRAIN_HERE, "ft_curriculum": SMOKE_CURRICULUM},
                         progress_bar=False)


def test_curriculum_trains_its_stages_in_order(curriculum_run):
    first, last = RES / "adapter_stages" / "1-easy", RES / "adapter"
    m1 = json.loads((first / "train_config.json").read_text())
    m2 = json.loads((last / "train_config.json").read_text())
    assert m1["finished"] and m1["n_episodes"] == 4 and "init_adapter" not in m1
    assert m2["finished"] and m2["n_episodes"] == 4 and m2["init_adapter"] == {
        "name": first.name, "sha256": hashlib.sha256((first / "adapter_model.safetensors").read_bytes()).hexdigest()}
    assert m1["data_sha256"] != m2["data_sha256"]
    curve = pd.read_csv(RES / "learning_curve.csv")
    assert curve["stage"].iloc[0] == "easy" and curve["stage"].iloc[-1] == "hard"
    assert curve["episodes_seen"].iloc[0] == 0 and curve["episodes_seen"].iloc[-1] == 8
    assert curve["episodes_seen"].is_monotonic_increasing and curve["accuracy"].between(0, 1).all()
    assert "finetuned" in set(pd.read_csv(RES / "table1_summary.csv")["method"])
    assert (RES / "adapter_aug_stages" / "1-easy" / "adapter_model.safetensors").exists()   # smoke: ft_train_aug
