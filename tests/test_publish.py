"""Publishing adapters (icc_utils.publish): bfloat16 weights under the size limit, portable configs,
provenance, the curriculum's stages, and adapter names that resolve or fail clearly."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from icc_utils import publish as PB
from icc_utils.data import generate_episode
from icc_utils.finetune import CurriculumStage, FinetuneConfig, stage_dirs, train_curriculum


def tiny_stages():
    return [CurriculumStage("easy", 2, 1, 4, points=(4, 8), dfs=(100.0,)),
            CurriculumStage("hard", 3, 2, 4, points=(6, 10), dfs=(1.0,))]


@pytest.fixture(scope="module")
def tiny_run(tiny_llama_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "adapter"
    cfg = FinetuneConfig(model=str(tiny_llama_dir), lora_r=4, lora_alpha=8, learning_rate=5e-3,
                         per_device_batch_size=2, gradient_accumulation_steps=1, save_steps=2, seed=3)
    assert train_curriculum(cfg, tiny_stages(), out).finished
    return out


def test_publish_curriculum_writes_standard_portable_folders(tiny_run, tiny_llama_dir, tmp_path):
    folders = stage_dirs(tiny_stages(), tiny_run)
    record = PB.publish_curriculum(folders, tmp_path / "m", {"training_commit": "abc"})
    final, stage1 = tmp_path / "m", tmp_path / "m" / "stages" / "1-easy"
    for d in (final, stage1):
        assert {"adapter_config.json", "adapter_model.safetensors", "train_config.json", "loss_curve.csv",
                "PROVENANCE.json"} <= {p.name for p in d.iterdir()}
        assert json.loads((d / "adapter_config.json").read_text())["base_model_name_or_path"] == tiny_llama_dir.name
        assert str(tmp_path) not in (d / "train_config.json").read_text()
    assert [s["folder"] for s in record["stages"]] == ["stages/1-easy", "."]
    assert record["stages"][1]["init_adapter"]["name"] == "1-easy" and record["training_commit"] == "abc"
    assert record["stages"][0]["data_sha256"] == json.loads((folders[0] / "train_config.json").read_text())["data_sha256"]
    # small enough: kept in float32, bit for bit
    a, b = load_file(str(folders[1] / PB.WEIGHTS)), load_file(str(final / PB.WEIGHTS))
    assert all(torch.equal(a[k], b[k]) for k in a) and record["stages"][1]["saved_dtype"] == "float32"


def test_weights_over_the_limit_are_saved_in_bfloat16(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setattr(PB, "MAX_FILE_BYTES", (tiny_run / PB.WEIGHTS).stat().st_size - 1)
    rec = PB.publish_adapter(tiny_run, tmp_path / "m")
    w = load_file(str(tmp_path / "m" / PB.WEIGHTS))
    assert rec["saved_dtype"] == "bfloat16" and all(v.dtype == torch.bfloat16 for v in w.values())
    monkeypatch.setattr(PB, "MAX_FILE_BYTES", 100)
    with pytest.raises(ValueError, match="over the 100-byte limit"):
        PB.publish_adapter(tiny_run, tmp_path / "n")


def test_unfinished_runs_are_not_published(tiny_run, tmp_path):
    meta = json.loads((tiny_run / "train_config.json").read_text())
    bad = tmp_path / "half"
    bad.mkdir()
    (bad / "train_config.json").write_text(json.dumps({**meta, "finished": False}))
    with pytest.raises(ValueError, match="unfinished"):
        PB.publish_adapter(bad, tmp_path / "m")


def test_adapter_names_resolve_or_fail_clearly(tiny_run, tmp_path, monkeypatch):
    from icc_utils.validation import check_adapter

    monkeypatch.setattr(PB, "MODELS_DIR", tmp_path / "models")
    PB.publish_adapter(tiny_run, tmp_path / "models" / "mine")
    assert PB.published_adapter("mine") == tmp_path / "models" / "mine"
    with pytest.raises(FileNotFoundError, match="published: \\['mine'\\]"):
        PB.published_adapter("other")
    # the notebooks' parameter check resolves the same names (and folders), and names what is published
    assert check_adapter("finetuned_adapter", "mine", tmp_path) == str(tmp_path / "models" / "mine")
    assert check_adapter("finetuned_adapter", "", tmp_path) is None
    assert check_adapter("finetuned_adapter", str(tiny_run), tmp_path) == str(tiny_run)
    with pytest.raises(ValueError, match=r"finetuned_adapter='nope' is neither.*published: \['mine'\]"):
        check_adapter("finetuned_adapter", "nope", tmp_path)
