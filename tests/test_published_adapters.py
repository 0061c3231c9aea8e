"""The adapters published in models/ are what `make train` trains: the default profile's curriculum, stage by stage
(same recipe, same training data sha256, each stage from the previous one), portable and under 10 MB a file.

Checks what is committed: each published folder is checked when it is there (a stage is published as soon as it is
trained, so that training can go on from it on another machine); the final adapters are required by the default
profile, whose parameter checks fail without them (tests/test_params.py).
"""
from __future__ import annotations

import json
from functools import lru_cache

import pytest

from icc_utils import PROJECT_ROOT
from icc_utils import finetune as F
from icc_utils.finetune.training import _identity
from icc_utils.profiles import load_profile
from icc_utils.publish import MAX_FILE_BYTES, MODELS_DIR

DEFAULT = load_profile("default")
STAGES = F.curriculum_from_params(DEFAULT["ft_curriculum"])


def _folders(name: str, final_only: bool = False) -> list[tuple[int, object]]:
    """(stage index, folder) of each published stage of models/<name> that exists."""
    root = MODELS_DIR / name
    out = [] if final_only else [(k, root / "stages" / f"{k + 1}-{s.name}") for k, s in enumerate(STAGES[:-1])]
    out.append((len(STAGES) - 1, root))
    return [(k, f) for k, f in out if (f / "adapter_model.safetensors").is_file()]


@lru_cache(maxsize=None)
def _sha(k: int, seed: int) -> str:
    return F.data_sha256(STAGES[k].episodes(seed))


def _recipe(seed: int, n_permutations: int = 1) -> dict:
    config = F.config_from_params(DEFAULT, DEFAULT["model"], seed).to_dict()
    return _identity({**config, "n_permutations": n_permutations})


PUBLISHED = [("icc-numeric", 0, 1, False), ("icc-numeric-seed1", 1, 1, True),
             ("icc-numeric-aug", 0, DEFAULT["ft_aug_permutations"], True)]


@pytest.mark.parametrize("name, seed, n_permutations, final_only", PUBLISHED)
def test_published_stages_are_what_make_train_runs(name, seed, n_permutations, final_only):
    folders = _folders(name, final_only)
    if not folders:
        pytest.skip(f"models/{name} is not published yet (make train)")
    for k, folder in folders:
        meta = json.loads((folder / "train_config.json").read_text())
        where = folder.relative_to(PROJECT_ROOT)
        assert meta["finished"] and meta["n_episodes"] == STAGES[k].n_episodes, where
        assert meta["data_sha256"] == _sha(k, seed), f"{where}: trained on other data than stage {k + 1} draws"
        assert _identity(meta["config"]) == _recipe(seed, n_permutations), f"{where}: another recipe"
        parent = meta.get("init_adapter")
        if k == 0:
            assert parent is None, where
        else:
            assert parent["name"] == f"{k}-{STAGES[k - 1].name}", where


@pytest.mark.parametrize("name, final_only", [(n, f) for n, _, _, f in PUBLISHED])
def test_the_published_adapter_is_portable_small_and_checked(name, final_only):
    folders = _folders(name, final_only)
    if not folders:
        pytest.skip(f"models/{name} is not published yet (make train)")
    for _, folder in folders:
        cfg = json.loads((folder / "adapter_config.json").read_text())
        assert cfg["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
        assert all(p.stat().st_size <= MAX_FILE_BYTES for p in folder.iterdir() if p.is_file()), folder
        prov = json.loads((folder / "PROVENANCE.json").read_text())
        entry = prov["stages"][-1] if "stages" in prov else prov       # the final folder lists every stage
        assert entry["data_sha256"] and entry["saved_dtype"] in ("float32", "bfloat16")
        assert prov["machine"]["cpu_count"] and prov["training_commit"]
    final = MODELS_DIR / name
    if (final / "adapter_model.safetensors").is_file():
        prov = json.loads((final / "PROVENANCE.json").read_text())
        check = prov["precision_check"]
        assert abs(check["difference"]) < 0.01 and check["n"] >= 100, check
        assert (final / "validation_curve.csv").is_file()


def test_the_augmented_adapter_starts_from_the_same_stage_4_as_the_published_stage_5():
    aug, base = MODELS_DIR / "icc-numeric-aug", MODELS_DIR / "icc-numeric"
    if not (aug / "train_config.json").is_file() or not (base / "train_config.json").is_file():
        pytest.skip("models/icc-numeric-aug is not published yet (make train)")
    a, b = (json.loads((p / "train_config.json").read_text()) for p in (aug, base))
    assert a["init_adapter"] == b["init_adapter"]
    assert a["n_examples_per_epoch"] == DEFAULT["ft_aug_permutations"] * b["n_examples_per_epoch"]
