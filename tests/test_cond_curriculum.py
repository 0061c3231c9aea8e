"""The conditional image curriculum (notebook 06): conditional stages, their episodes, and
``python -m icc_utils.vision.cond_curriculum`` on the smoke profile (the embedded model)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from icc_utils.vision import curriculum as IC
from icc_utils.vision.shapes import make_shapes_set


@pytest.fixture(scope="module")
def shapes():
    return make_shapes_set(400, seed=0, image_size=8)


def test_a_conditional_stage_draws_each_condition_in_turn_from_the_given_objects_only(shapes):
    stage = IC.ImageStage.from_dict({"name": "c2", "conditions": ["shape", "color"], "n_clusters": [2, 3],
                                     "n_episodes": 10, "images": [4, 6]})
    assert stage.conditions == ("shape", "color")
    objects = shapes.class_names[::5]
    eps = stage.episodes(shapes, objects, seed=0, index=0)
    assert len(eps) == 10
    # condition-major interleaving: every (condition, c) pair shows up among the first four
    assert {(e.params["condition"], e.n_clusters) for e in eps[:4]} == {("color", 2), ("color", 3), ("shape", 2), ("shape", 3)}
    names = np.asarray(shapes.class_names)[shapes.labels]
    for e in eps:
        assert set(names[e.indices]) <= set(objects)             # indices point into the full set
        values = [shapes.attributes[e.params["condition"]][i] for i in e.indices]
        assert len(set(values)) == e.n_clusters and 4 <= e.n_points <= 6
        # the labels are the partition by the condition's values
        assert all((a == b) == (values[i] == values[j]) for i, a in enumerate(e.labels)
                   for j, b in enumerate(e.labels))
    assert [e.indices for e in stage.episodes(shapes, objects, 0, 1)] != [e.indices for e in eps]   # seeded per stage
    assert [e.indices for e in stage.episodes(shapes, objects, 0, 0)] == [e.indices for e in eps]


def test_an_unconditional_stage_clusters_by_class_and_names_no_condition(shapes):
    stage = IC.ImageStage.from_dict({"name": "obj", "n_clusters": [2], "n_episodes": 4, "images": [4, 6]})
    for e in stage.episodes(shapes, shapes.class_names, seed=0, index=0):
        assert e.params["condition"] is None and len(set(shapes.labels[e.indices])) == 2


def test_a_stages_conditions_must_be_a_list_of_names():
    with pytest.raises(ValueError, match=r"stage\.conditions"):
        IC.ImageStage.from_dict({"name": "c2", "conditions": [1, 2], "n_clusters": [2], "n_episodes": 1})


def test_holdout_keeps_a_one_image_class_in_training_and_refuses_a_missing_one(shapes):
    names = np.asarray(shapes.class_names)[shapes.labels]
    single, many = names[0], names[names != names[0]][0]
    drop = np.flatnonzero(names == single)[1:]                   # keep one image of the first object
    shapes = shapes.subset(np.setdiff1d(np.arange(shapes.n_images), drop))
    names = np.asarray(shapes.class_names)[shapes.labels]
    assert (names == single).sum() == 1 and (names == many).sum() > 3
    fit, val = IC.holdout_split(shapes, [single, many], 0.2, seed=0, name="cond_val_fraction")
    assert single in set(names[fit]) and single not in set(names[val]) and many in set(names[val])
    with pytest.raises(ValueError, match="class 'nothing' has no images"):
        IC.holdout_split(shapes, ["nothing"], 0.2, seed=0)
    with pytest.raises(ValueError, match="cond_val_fraction"):
        IC.holdout_split(shapes, [many], 1.0, seed=0, name="cond_val_fraction")


def test_the_default_profiles_two_models_have_the_same_budget():
    from icc_utils.profiles import load_profile

    p = load_profile("default")
    cond = IC.image_curriculum_from_params(p["cond_curriculum"])
    uncond = IC.image_curriculum_from_params(p["cond_uncond_curriculum"])
    assert all(s.conditions for s in cond) and not any(s.conditions for s in uncond)
    assert [(s.n_episodes, s.images, s.kernel) for s in cond] == [(s.n_episodes, s.images, s.kernel) for s in uncond]


def test_make_train_conditional_on_the_smoke_profile(tmp_path, capsys):
    from icc_utils.vision.cond_curriculum import main

    out = tmp_path / "conditional"
    main(["--profile", "smoke", "--model", "conditional", "--out", str(out)])
    curve = pd.read_csv(out / "curve.csv")
    # the curve is measured on conditional validation episodes, per condition
    assert {"accuracy_shape", "accuracy_color", "accuracy_pattern", "kmeans_accuracy"} <= set(curve.columns)
    assert curve["episodes_seen"].iloc[-1] == 2 and (out / "curve.png").is_file()
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert "c2-k4" in capsys.readouterr().out


def test_the_unconditional_model_trains_its_own_stages_on_the_same_validation_episodes(tmp_path, monkeypatch):
    """``--model unconditional`` trains cond_uncond_curriculum (no condition), validated on conditional episodes."""
    from icc_utils.vision import cond_curriculum, curriculum

    seen = {}

    def fake(base, stages, fit, classes, val, val_eps, out, config, every, *args):
        seen.update(base=base, stages=stages, val_eps=val_eps, classes=classes)
        return None, pd.DataFrame()

    monkeypatch.setattr(curriculum, "train_with_curve", fake)
    cond_curriculum.main(["--profile", "smoke", "--model", "unconditional", "--out", str(tmp_path / "u")])
    assert [s.conditions for s in seen["stages"]] == [()] and seen["base"] == tmp_path / "u" / "base"  # not aligned
    assert {e.params["condition"] for e in seen["val_eps"]} == {"shape", "color", "pattern"}
    assert (tmp_path / "u" / "tower" / "tower_training.json").is_file()


def test_make_train_conditional_refuses_the_paper_profile(capsys):
    from icc_utils.vision.cond_curriculum import main

    with pytest.raises(SystemExit):
        main(["--profile", "paper"])
    assert "trains the embedded stand-in" in capsys.readouterr().err


@pytest.mark.parametrize("name, key", [("icc-conditional", "cond_curriculum"),
                                       ("icc-unconditional", "cond_uncond_curriculum")])
def test_published_conditional_stages_are_what_make_train_conditional_runs(name, key):
    """Every published stage of models/icc-conditional (icc-unconditional) has the default profile's recipe and
    training episodes (same data sha256), on the profile's validation split of the training objects."""
    import json

    from icc_utils import PROJECT_ROOT
    from icc_utils.finetune.data import data_sha256
    from icc_utils.profiles import load_profile
    from icc_utils.vision import conditional as C

    root = PROJECT_ROOT / "models" / name
    if not (root / "PROVENANCE.json").is_file():
        pytest.skip(f"models/{name} is not published")
    p = load_profile("default")
    stages = IC.image_curriculum_from_params(p[key])
    images = C.load_conditional_set("shapes", "", p["cond_image_size"], p["cond_n_images"], p["seed"])
    classes = C.object_split(images, "shapes", p["cond_test_fraction"], p["seed"])["train"]
    fit = images.subset(IC.holdout_split(images, classes, p["cond_val_fraction"], p["seed"])[0])
    prov = json.loads((root / "PROVENANCE.json").read_text())
    assert 1 <= len(prov["stages"]) <= len(stages)      # icc-conditional: its first two stages (published --partial)
    for k, entry in enumerate(prov["stages"]):
        meta = json.loads((root / entry["folder"] / "train_config.json").read_text())
        assert meta["data_sha256"] == data_sha256(stages[k].episodes(fit, classes, p["seed"], k)), stages[k].name
        assert meta["config"]["learning_rate"] == p["cond_curriculum_learning_rate"] and meta["finished"]
        assert meta["lora_overrides"]["_pooling_kernel"] == stages[k].kernel
    tower = json.loads((root / "tower" / "tower_training.json").read_text())
    assert tower["config"]["epochs"] == p["cond_tower_epochs"] and tower["targets"] == p["cond_conditions"]


def test_align_epochs_caption_the_fit_images_before_the_curriculum(tmp_path, monkeypatch):
    """cond_curriculum_align_epochs > 0: LLaVA's stage 1 (align_projector, tested in test_vision.py) first, on the fit
    images captioned with their own attributes at the stages' kernels; the curriculum starts from the aligned model."""
    from icc_utils.vision import cond_curriculum, curriculum, train

    seen, calls = [], []

    def fake_align(base, images, captions, out, kernels, epochs, seed):
        calls.append(dict(base=base, images=images, captions=captions, out=out, kernels=kernels, epochs=epochs))
        return {"history": [{"loss": 2.0}], "final_loss": 1.0, "seconds": 0.0}

    monkeypatch.setattr(train, "align_projector", fake_align)
    monkeypatch.setattr(curriculum, "train_with_curve", lambda base, *a, **k: seen.append((base, a[1])) or (None, pd.DataFrame()))
    out = tmp_path / "c"
    cond_curriculum.main(["--profile", "smoke", "--out", str(out), "--set", "cond_curriculum_align_epochs=2"])
    (call,), ((base, fit),) = calls, seen
    assert call["base"] == out / "base" and call["out"] == base == out / "base-aligned" and call["epochs"] == 2
    assert call["images"] is fit and call["kernels"] == [4]     # the smoke curriculum's one stage, kernel 4
    assert call["captions"][0] == " ".join(["a"] + [str(fit.attributes[k][0]) for k in ("color", "pattern", "shape")])
    assert len(call["captions"]) == fit.n_images
    with pytest.raises(ValueError, match="cond_curriculum_align_epochs=-1 is out of range"):
        cond_curriculum.main(["--profile", "smoke", "--out", str(out), "--set", "cond_curriculum_align_epochs=-1"])
