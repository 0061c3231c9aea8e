"""Profiles (default.yml holds every parameter; the others extend it) and the validators."""
from __future__ import annotations

import json
import math

import nbformat
import pytest
import yaml

from icc_utils import NOTEBOOKS_DIR
from icc_utils.profiles import (ProfileError, available_profiles, check_choice, check_int, check_length_range,
                                check_models, check_number, check_numbers, check_profile, check_subset, load_profile,
                                load_yaml, notebook_parameters, parameters_for, profile_differences, profile_path,
                                read_profile_file)
from icc_utils.runner import find_notebooks


# ---------------------------------------------------------------- validators

def test_check_profile_names_the_parameter_and_the_profiles():
    assert check_profile("smoke") == "smoke"
    with pytest.raises(ValueError) as e:
        check_profile("nope")
    msg = str(e.value)
    assert "profile='nope'" in msg
    for name in ("smoke", "default", "paper"):
        assert name in msg


def test_check_choice():
    assert check_choice("distribution", "t", ["t", "gaussian"]) == "t"
    with pytest.raises(ValueError, match=r"distribution='x'.*\['t', 'gaussian'\]"):
        check_choice("distribution", "x", ["t", "gaussian"])
    with pytest.raises(ValueError, match="metric"):
        check_choice("metric", ["unhashable"], {"a", "b"})


def test_check_subset():
    assert check_subset("dims", (1, 2), [1, 2, 3, 4]) == [1, 2]
    assert check_subset("dims", [], [1, 2]) == []
    with pytest.raises(ValueError, match=r"dims=.*\[7\].*\[1, 2, 3, 4\]"):
        check_subset("dims", [1, 7], [1, 2, 3, 4])
    for not_a_list in (3, "12", None, {1, 2}):
        with pytest.raises(ValueError, match=r"dims=.*list"):
            check_subset("dims", not_a_list, [1, 2, 3, 4])


def test_bools_and_floats_are_not_integers_in_choices():
    with pytest.raises(ValueError, match="dims"):
        check_subset("dims", [True], range(1, 5))
    with pytest.raises(ValueError, match="dims"):
        check_subset("dims", [2.0], range(1, 5))
    with pytest.raises(ValueError, match="modes"):
        check_subset("modes", [0, 1], [False, True])
    assert check_subset("modes", [True, False], [False, True]) == [True, False]
    assert check_subset("dfs", [1, 2.5], [1.0, 2.5, 5.0]) == [1, 2.5]  # an int where floats are allowed is fine
    with pytest.raises(ValueError, match="c=2.0"):
        check_choice("c", 2.0, [2, 3])


def test_check_numbers():
    assert check_numbers("dfs", [1, 1.25, float("inf")], lo=0.01) == [1.0, 1.25, math.inf]
    with pytest.raises(ValueError, match=r"dfs\[1\]=0 .*>= 0.01"):
        check_numbers("dfs", [1, 0], lo=0.01)
    with pytest.raises(ValueError, match="dfs=2 must be a list"):
        check_numbers("dfs", 2, lo=0.01)


def test_check_int():
    assert check_int("n", 3, 1) == 3
    assert check_int("n", 10, 1, 10) == 10
    for bad in (0, 11, 2.0, "3", True, None):
        with pytest.raises(ValueError) as e:
            check_int("n", bad, 1, 10)
        assert "n=" in str(e.value) and "[1, 10]" in str(e.value)
    with pytest.raises(ValueError, match=">= 1"):
        check_int("n", -5, 1)


def test_check_number():
    assert check_number("lr", 5e-4, 0) == 5e-4
    assert check_number("lr", 3, 0, 10) == 3.0
    assert math.isinf(check_number("df", float("inf"), 0))
    for bad in (-1, float("nan"), "0.1", True, None):
        with pytest.raises(ValueError) as e:
            check_number("lr", bad, 0)
        assert "lr=" in str(e.value) and ">= 0" in str(e.value)
    with pytest.raises(ValueError, match=r"frac=2.*\[0, 1\]"):
        check_number("frac", 2, 0, 1)
    with pytest.raises(ValueError, match="<= 1"):
        check_number("frac", 2, hi=1)


def test_check_models():
    assert check_models("models", ["embedded", "kmeans", "gpt-4o"]) == ["embedded", "kmeans", "gpt-4o"]
    with pytest.raises(ValueError) as e:
        check_models("models", ["kmeans", "no-such-model"])
    msg = str(e.value)
    assert msg.startswith("models:") and "no-such-model" in msg and "kmeans" in msg and "embedded" in msg
    with pytest.raises(ValueError, match="models=.*list"):
        check_models("models", "kmeans")
    with pytest.raises(ValueError, match="models"):
        check_models("models", [3])


def test_check_length_range():
    assert check_length_range("length_range", [10, 50]) == (10, 50)
    assert check_length_range("length_range", (5, 5)) == (5, 5)
    for bad in ([50, 10], [0, 5], [1], [1, 2, 3], "10-50", [1.5, 3], None, [True, 3]):
        with pytest.raises(ValueError, match="length_range=.*1 <= lo <= hi"):
            check_length_range("length_range", bad)


# ---------------------------------------------------------------- profile files

def test_foundation_profiles_exist():
    assert {"smoke", "default", "paper"} <= set(available_profiles())


@pytest.mark.parametrize("name", available_profiles())
def test_every_profile_loads(name):
    prof = load_profile(name)
    assert isinstance(prof, dict) and prof["profile"] == name
    assert all(isinstance(k, str) and k.isidentifier() for k in prof)


@pytest.mark.parametrize("name", available_profiles())
def test_profile_reads_the_same_with_papermill_f(name):
    """``papermill -f profile.yml`` parses with plain yaml.safe_load: the values must not differ
    (write 5.0e-4, not 5e-4, which plain YAML 1.1 reads as text)."""
    text = profile_path(name).read_text()
    assert yaml.safe_load(text) == load_yaml(text)


def test_load_yaml_reads_scientific_notation():
    assert load_yaml("lr: 5e-4\nn: 3\nx: [1E6, .inf, 1.5]\ns: e5") == {"lr": 5e-4, "n": 3, "x": [1e6, math.inf, 1.5],
                                                                      "s": "e5"}
    assert yaml.safe_load("lr: 5e-4") == {"lr": "5e-4"}  # why load_yaml exists


def test_unknown_profile_is_a_clear_error():
    with pytest.raises(ValueError, match=r"profile='x' is not a known profile; available: \["):
        load_profile("x")


def test_profile_files_are_flat_and_named_consistently(tmp_path):
    (tmp_path / "a.yml").write_text("profile: b\n")
    (tmp_path / "nested.yml").write_text("profile: nested\nopts: {x: 1}\n")
    (tmp_path / "ok.yml").write_text("seed: 3\n")
    assert available_profiles(tmp_path) == ["a", "nested", "ok"]
    with pytest.raises(ValueError, match="does not match"):
        load_profile("a", tmp_path)
    with pytest.raises(ValueError, match="flat"):
        load_profile("nested", tmp_path)
    assert load_profile("ok", tmp_path) == {"seed": 3, "profile": "ok"}


@pytest.mark.parametrize("name", available_profiles())
def test_every_profile_key_is_a_notebook_parameter(name):
    notebooks = find_notebooks(NOTEBOOKS_DIR)
    if not notebooks:
        pytest.skip("no numbered notebooks yet")
    declared = set()
    for nb in notebooks:
        declared |= set(notebook_parameters(nb))
    unused = sorted(set(load_profile(name)) - declared)
    assert not unused, (f"profile {name!r} has keys that no notebook declares in its parameters cell: {unused} "
                        f"(notebooks: {[nb.name for nb in notebooks]})")


def _same(a, b) -> bool:
    """Equal with the same types (``1`` is not ``1.0``, ``True`` is not ``1``)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@pytest.mark.parametrize("name", [n for n in available_profiles() if n != "default"])
def test_other_profiles_extend_default_and_hold_only_their_differences(name):
    own, _ = read_profile_file(name)
    assert own.get("extends") == "default"
    default = load_profile("default")
    repeats = sorted(k for k, v in profile_differences(name).items() if _same(v, default[k]))
    assert not repeats, f"{name}.yml repeats default.yml's values of {repeats}: delete those lines"
    merged = load_profile(name)
    assert list(merged) == list(default)
    assert all(_same(merged[k], v) for k, v in profile_differences(name).items())


def test_default_profile_extends_nothing():
    own, _ = read_profile_file("default")
    assert "extends" not in own and own["profile"] == "default"


def _profiles(tmp_path, **files):
    for name, text in files.items():
        (tmp_path / f"{name}.yml").write_text(text)
    return tmp_path


def test_a_yaml_syntax_error_names_the_file_line_and_column(tmp_path):
    d = _profiles(tmp_path, base="profile: base\nn: 1\nm: [1, 2\nk: 3\n")
    with pytest.raises(ProfileError) as e:
        load_profile("base", d)
    msg = str(e.value)
    assert msg.startswith(f"{d / 'base.yml'}, line 4, column 2: YAML syntax error: ")
    assert "unicode string" not in msg


def test_a_duplicate_key_is_an_error_naming_the_file_line_and_key(tmp_path):
    d = _profiles(tmp_path, base="profile: base\nn: 1\nm: 2\nn: 3\n")
    with pytest.raises(ProfileError, match=r"base.yml, line 4, column 1: duplicate key 'n' \(first on line 2\)"):
        load_profile("base", d)
    with pytest.raises(ProfileError, match="duplicate key 'a'"):
        load_yaml("x: {a: 1, a: 2}")


def test_extends_merges_and_rejects_unknown_keys_bases_and_cycles(tmp_path):
    d = _profiles(tmp_path, base="profile: base\nn: 1\nm: [1, 2]\n", small="extends: base\nn: 2\n",
                  tiny="extends: small\nm: []\n", typo="extends: base\n\nnn: 2\n", nobase="extends: nope\n",
                  loop1="extends: loop2\n", loop2="extends: loop1\n")
    assert load_profile("small", d) == {"profile": "small", "n": 2, "m": [1, 2]}
    assert load_profile("tiny", d) == {"profile": "tiny", "n": 2, "m": []}
    with pytest.raises(ProfileError, match=r"typo.yml, line 3: 'nn' is not a parameter of the base profile 'base'"):
        load_profile("typo", d)
    with pytest.raises(ProfileError, match=r"nobase.yml, line 1: extends='nope' is not a known profile"):
        load_profile("nobase", d)
    with pytest.raises(ProfileError, match="cycle: loop1 -> loop2 -> loop1"):
        load_profile("loop1", d)


# ---------------------------------------------------------------- parameters_for

def _notebook(path, params_src):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(params_src)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# t"), cell, nbformat.v4.new_code_cell("x = 1")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_notebook_parameters_and_parameters_for(tmp_path):
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "tiny.yml").write_text("profile: tiny\nseed: 4\nn_episodes: 5\nnot_declared: 1\n")
    nb = _notebook(tmp_path / "01_x.ipynb", 'profile = "smoke"\nseed = 0\nn_episodes = 2\nmodels = ["kmeans"]\n')
    assert set(notebook_parameters(nb)) == {"profile", "seed", "n_episodes", "models"}
    assert notebook_parameters(nb)["n_episodes"]["default"] == "2"
    assert parameters_for(nb, "tiny", profiles_dir=profiles) == {"profile": "tiny", "seed": 4, "n_episodes": 5}
    got = parameters_for(nb, "tiny", {"n_episodes": 9, "models": ["gmm"], "other": 1}, profiles_dir=profiles)
    assert got == {"profile": "tiny", "seed": 4, "n_episodes": 9, "models": ["gmm"]}
    with pytest.raises(ValueError, match="profile='nope'"):
        parameters_for(nb, "nope", profiles_dir=profiles)
    with pytest.raises(FileNotFoundError):
        notebook_parameters(tmp_path / "missing.ipynb")


def test_check_dtype_resolves_auto_by_the_machine(monkeypatch, capsys):
    from icc_utils import models as M
    from icc_utils import model_loading as ML
    from icc_utils.profiles import check_dtype

    assert check_dtype("dtype", "float32") == "float32"
    assert check_dtype("dtype", "bfloat16") == "bfloat16"
    monkeypatch.setattr(ML, "native_bf16", lambda: True)
    assert check_dtype("dtype", "auto") == "bfloat16"
    assert "dtype=auto -> bfloat16" in capsys.readouterr().out
    monkeypatch.setattr(ML, "native_bf16", lambda: False)
    assert check_dtype("vlm_dtype", "auto") == "float32"
    with pytest.raises(ValueError, match=r"vlm_dtype='fp8' is not allowed; choose one of \['auto', 'float32'"):
        check_dtype("vlm_dtype", "fp8")


def test_auto_dtype_names_the_resolved_dtype_in_the_model_id(monkeypatch):
    """The reply cache must never mix float32 and bfloat16 replies under one 'auto' id."""
    from icc_utils import models as M
    from icc_utils import model_loading as ML

    monkeypatch.setattr(ML, "native_bf16", lambda: False)
    assert M.LocalChatModel("embedded", dtype="auto").model_id.endswith("|float32")
    monkeypatch.setattr(ML, "native_bf16", lambda: True)
    assert M.LocalChatModel("embedded", dtype="auto").model_id.endswith("|bfloat16")
    with pytest.raises(ValueError, match="dtype='half' is not allowed"):
        M.LocalChatModel("embedded", dtype="half")


def test_ft_bf16_auto_follows_the_machine(monkeypatch):
    from icc_utils import finetune as F
    from icc_utils import models as M
    from icc_utils import model_loading as ML
    from icc_utils.profiles import load_profile

    params = load_profile("default")
    assert params["ft_bf16"] == "auto"
    for native in (True, False):
        monkeypatch.setattr(ML, "native_bf16", lambda native=native: native)
        cfg = F.config_from_params(params, "embedded", 0)
        assert cfg.bf16 is native and cfg.weights_dtype == ("bfloat16" if native else "float32")
        assert cfg.kernels == params["ft_kernels"] == "auto"
        assert cfg.resolved_kernels(cuda=False) == ("blocked" if native else "torch")


# ---------------------------------------------------------------- the default profile's curriculum

#: The exploratory runs that the default profile's curriculum stages repeat, in order (experiments/curriculum/README.md).
CURRICULUM_RUNS = tuple(f"experiments/curriculum/{run}" for run in (
    "c2d1-separated-short-updates", "c2d1-separated-curriculum", "c3d3-curriculum-s1", "c3d3-curriculum-s2",
    "c3d3-curriculum-s3"))
#: The recipe fields that change the trained weights and do not depend on the machine (bf16 and kernels do).
RECIPE_FIELDS = ("lora_r", "lora_alpha", "lora_dropout", "target_modules", "learning_rate", "lr_schedule",
                 "warmup_ratio", "per_device_batch_size", "gradient_accumulation_steps", "n_epochs", "n_permutations",
                 "seed")


def test_default_curriculum_repeats_the_published_stages():
    """The default profile's curriculum (what make train runs): each stage draws the training episodes of the
    exploratory run it repeats (same sha256), with its recipe."""
    import json

    from icc_utils import PROJECT_ROOT
    from icc_utils import finetune as F

    params = load_profile("default")
    stages = F.curriculum_from_params(params["ft_curriculum"])
    config = F.config_from_params(params, params["model"], params["seed"]).to_dict()
    assert len(stages) == len(CURRICULUM_RUNS)
    for stage, run in zip(stages, CURRICULUM_RUNS):
        meta = json.loads((PROJECT_ROOT / run / "adapter" / "train_config.json").read_text())
        assert F.data_sha256(stage.episodes(params["seed"])) == meta["data_sha256"], stage.name
        assert {k: config[k] for k in RECIPE_FIELDS} == {k: meta["config"][k] for k in RECIPE_FIELDS}, stage.name
