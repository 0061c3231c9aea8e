"""Papermill smoke run of notebook 04 (LoRA fine-tuning), asserting on the files it writes."""
from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from icc_utils import RESULTS_DIR
from icc_utils.runner import run_notebooks

PROFILE = "smoke"
RES = RESULTS_DIR / PROFILE / "04"


@pytest.fixture(scope="module")
def smoke_run():
    """Notebook 00 (data) then 04 on the smoke profile, once for this module, from an empty ``results/smoke/04``:
    a finished adapter left by older code would be reused with its old learning curve."""
    shutil.rmtree(RES, ignore_errors=True)
    return run_notebooks(PROFILE, only=["00", "04"], progress_bar=False)


def test_adapter_is_a_standard_peft_directory(smoke_run):
    adapter = RES / "adapter"
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and set(cfg["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert (adapter / "adapter_model.safetensors").stat().st_size > 1000
    train_cfg = json.loads((adapter / "train_config.json").read_text())
    assert train_cfg["n_episodes"] == 8 and train_cfg["finished"]
    loss = pd.read_csv(adapter / "loss_curve.csv")
    assert len(loss) >= 1 and loss["loss"].notna().all() and (loss["episodes_seen"].diff().dropna() > 0).all()
    assert (adapter / "loss_curve.png").exists()


def test_learning_curve_and_tables(smoke_run):
    curve = pd.read_csv(RES / "learning_curve.csv")
    assert curve["step"].iloc[0] == 0 and len(curve) >= 2  # before training, then during/after
    assert curve["accuracy"].between(0, 1).all() and curve["kmeans_accuracy"].between(0, 1).all()
    assert curve["ari"].between(-1, 1).all() and (curve["length_ratio"] >= 0).all()
    assert (RES / "learning_curve.png").exists()
    t1 = pd.read_csv(RES / "table1_summary.csv")
    assert {"zero-shot", "finetuned", "kmeans", "one label for every point"} <= set(t1["method"])
    assert t1["accuracy"].between(0, 1).all()
    table1 = pd.read_csv(RES / "table1_finetuned.csv")
    assert any(m.startswith("(paper)") and "finetuned" in m for m in table1["method"])
    check = pd.read_csv(RES / "target_check.csv")
    assert len(check) == 3 and set(check["met"].astype(str)) <= {"True", "False"}
    assert "one label" in check["target"].iloc[2]
    assert {"zero-shot", "finetuned"} <= set(pd.read_csv(RES / "fig7_summary.csv")["method"])
    assert (RES / "figure7_grid.png").exists()
    assert any("finetuned" in m for m in pd.read_csv(RES / "table4_finetuned.csv")["method"])
    t5 = pd.read_csv(RES / "table5_episodes.csv")
    assert {"finetuned", "finetuned-aug"} <= set(t5["method"])  # smoke trains the augmented model too
    assert t5.groupby(["model", "method", "base_episode"]).size().eq(2).all()


def test_attention_reruns_with_the_adapter(smoke_run):
    assert (RESULTS_DIR / PROFILE / "02" / "adapter-adapter" / "figure3_block_matrix.png").exists()
    t6 = pd.read_csv(RESULTS_DIR / PROFILE / "03" / "adapter-adapter" / "sc_summary.csv")
    assert {"SC(opt)", "Gen"} <= set(t6["method"])


def test_rerun_reuses_the_adapter(smoke_run):
    """A second run finds the finished adapter and does not train again (same adapter file)."""
    before = (RES / "adapter" / "adapter_model.safetensors").read_bytes()
    run_notebooks(PROFILE, only=["04"], overrides={"rerun_attention": False}, progress_bar=False)
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
def curriculum_run(smoke_run):
    """Notebook 04 with a two-stage ``ft_curriculum``, after the tests above: it replaces ``results/smoke/04``."""
    shutil.rmtree(RES, ignore_errors=True)
    return run_notebooks(PROFILE, only=["04"], overrides={"ft_curriculum": SMOKE_CURRICULUM, "rerun_attention": False},
                         progress_bar=False)


def test_curriculum_trains_its_stages_in_order(curriculum_run):
    import hashlib

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
    assert "finetuned-aug" in set(pd.read_csv(RES / "table5_episodes.csv")["method"])
    executed = (RESULTS_DIR / PROFILE / "04_lora_finetune_numeric.ipynb").read_text()
    assert "a curriculum of: easy (4 of 4 episodes); hard (4 of 4 episodes)" in executed
