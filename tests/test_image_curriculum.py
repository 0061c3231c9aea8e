"""icc_utils.vision.curriculum: the image curriculum's stages, validation split and staged training (on a tiny
random LLaVA model: SigLIP-architecture tower + tiny Llama)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from icc_utils.vision import curriculum as IC
from icc_utils.vision.images import ImageSet


def _imageset(n_per_class: int = 12, seed: int = 0) -> ImageSet:
    """8x8 images of four classes: a bright top, bottom, left or right half."""
    rng = np.random.default_rng(seed)
    imgs, labels = [], []
    for c in range(4):
        for _ in range(n_per_class):
            x = rng.integers(0, 40, (8, 8))
            [x[:4], x[4:], x[:, :4], x[:, 4:]][c][...] += 200
            imgs.append(np.clip(x, 0, 255).astype(np.uint8))
            labels.append(c)
    return ImageSet("toy", np.stack(imgs), np.array(labels), ["top", "bottom", "left", "right"])


CLASSES = ["top", "bottom", "left"]


# ---------------------------------------------------------------- stages

def test_a_stage_from_a_profile_mapping_takes_the_defaults():
    s = IC.ImageStage.from_dict({"name": "c2", "n_clusters": [2], "n_episodes": 5})
    assert s == IC.ImageStage("c2", (2,), 5, 4, (10, 30), ())


@pytest.mark.parametrize("stage, words", [
    ({"name": "c2", "n_clusters": [2]}, "missing keys ['n_episodes']"),
    ({"name": "c2", "n_clusters": [2], "n_episodes": 5, "dim": 1}, "unknown keys ['dim']"),
    ({"name": "a b", "n_clusters": [2], "n_episodes": 5}, "img_curriculum[0].name='a b' is not allowed"),
    ({"name": "c", "n_clusters": [1], "n_episodes": 5}, "img_curriculum[0].n_clusters=[1]"),
    ({"name": "c", "n_clusters": [2, 4], "n_episodes": 5, "images": [3, 9]}, "at least max(n_clusters)=4 images"),
    ({"name": "c", "n_clusters": [3], "n_episodes": 5, "classes": ["top", "left"]}, "fewer classes than"),
    ({"name": "c", "n_clusters": [2], "n_episodes": 0}, "img_curriculum[0].n_episodes=0 is out of range"),
    ({"name": "c", "n_clusters": [2], "n_episodes": 5, "kernel": 0}, "img_curriculum[0].kernel=0 is out of range"),
])
def test_a_bad_stage_names_the_key_and_what_is_allowed(stage, words):
    with pytest.raises(ValueError) as err:
        IC.image_curriculum_from_params([stage])
    assert words in str(err.value)


def test_stage_names_must_be_distinct_and_the_curriculum_a_list():
    with pytest.raises(ValueError, match="must be distinct"):
        IC.image_curriculum_from_params([{"name": "a", "n_clusters": [2], "n_episodes": 1}] * 2)
    with pytest.raises(ValueError, match="must be a list of stages"):
        IC.image_curriculum_from_params({"name": "a"})


def test_the_default_profiles_curriculum_is_valid_and_easy_first():
    from icc_utils.profiles import load_profile

    stages = IC.image_curriculum_from_params(load_profile("default")["img_curriculum"])
    assert stages[0].n_clusters == (2,) and stages[0].images[1] < stages[-1].images[1]
    assert max(stages[-1].n_clusters) > 2


def test_stage_episodes_are_seeded_per_stage_interleaved_and_from_the_stage_classes():
    s = _imageset()
    stage = IC.ImageStage("c23", (2, 3), 7, images=(4, 8))
    a, again = stage.episodes(s, CLASSES, 0, 0), stage.episodes(s, CLASSES, 0, 0)
    assert len(a) == 7 and [e.n_clusters for e in a][:4] == [2, 3, 2, 3]
    assert [e.indices for e in a] == [e.indices for e in again]           # deterministic
    later = stage.episodes(s, CLASSES, 0, 1)                                 # the next stage: other episodes
    assert [e.indices for e in later] != [e.indices for e in a]
    names = np.asarray(s.class_names)[s.labels]
    assert {names[i] for e in a for i in e.indices} <= set(CLASSES)         # never the held-back class
    two = IC.ImageStage("two", (2,), 6, images=(4, 8), classes=("top", "bottom")).episodes(s, CLASSES, 0, 0)
    assert {names[i] for e in two for i in e.indices} == {"top", "bottom"}
    with pytest.raises(ValueError, match=r"classes \['right'\] are not training classes"):
        IC.ImageStage("x", (2,), 2, images=(4, 8), classes=("top", "right")).episodes(s, CLASSES, 0, 0)


# ---------------------------------------------------------------- the validation split

def test_holdout_split_holds_out_a_share_of_every_training_class_only():
    s = _imageset(n_per_class=10)
    fit, val = IC.holdout_split(s, CLASSES, 0.2, seed=0)
    assert not set(fit) & set(val)
    names = np.asarray(s.class_names)[s.labels]
    assert sorted(names[val]) == sorted(["top", "bottom", "left"] * 2)     # 20% of 10 per class
    assert set(names[fit]) == set(CLASSES) and len(fit) == 24               # the fourth class is in neither
    again = IC.holdout_split(s, CLASSES, 0.2, seed=0)
    assert np.array_equal(again[1], val) and not np.array_equal(IC.holdout_split(s, CLASSES, 0.2, seed=1)[1], val)
    for bad in (0, 1, 1.5):
        with pytest.raises(ValueError, match="img_val_fraction"):
            IC.holdout_split(s, CLASSES, bad, seed=0)


# ---------------------------------------------------------------- training, on a tiny model

@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory, tiny_llama_dir):
    from icc_utils.vision import tower as T, vlm as V

    tower = tmp_path_factory.mktemp("tower")
    T.pretrain_tower(_imageset(), CLASSES, tower, T.TowerConfig(hidden_size=32, num_hidden_layers=1,
                                                                num_attention_heads=2, intermediate_size=64,
                                                                epochs=2, batch_size=16))
    return V.build_embedded_llava(tower, tmp_path_factory.mktemp("vlm"), language_model=str(tiny_llama_dir))


def test_curriculum_trains_each_stage_from_the_last_with_its_kernel_and_a_curve(tiny_vlm, tmp_path):
    import json

    from icc_utils.finetune import FinetuneConfig
    from icc_utils.finetune.curriculum import stage_dirs
    from icc_utils.vision import vlm as V

    s = _imageset()
    fit_idx, val_idx = IC.holdout_split(s, CLASSES, 0.25, seed=0)
    fit, val = s.subset(fit_idx), s.subset(val_idx)
    stages = [IC.ImageStage("one-token", (2,), 4, kernel=4, images=(3, 5)),
              IC.ImageStage("four-tokens", (2, 3), 4, kernel=2, images=(3, 5))]
    val_eps = IC.make_image_episodes(val, CLASSES, [2, 3], 2, 0, "val", (3, 5))
    _, _, processor = V.load_vlm(str(tiny_vlm))
    kernels = []
    evaluator = IC.image_curve_evaluator(val_eps, val, processor, batch_size=4)

    def on_eval(model, tokenizer, step, seen):
        kernels.append(IC.pooling_kernel(model))
        return evaluator(model, tokenizer, step, seen)

    cfg = FinetuneConfig(model="unused", lora_r=4, lora_alpha=8, per_device_batch_size=2,
                         gradient_accumulation_steps=1, save_steps=1, learning_rate=1e-2)
    out = tmp_path / "adapter"
    res = IC.train_image_curriculum(cfg, tiny_vlm, stages, fit, CLASSES, out, on_eval, eval_every_steps=1)
    assert res.finished and len(res.stages) == 2 and res.episodes_seen == 8
    first, last = stage_dirs(stages, out)
    assert (first / "adapter_model.safetensors").is_file() and (last / "adapter_model.safetensors").is_file()
    ident = json.loads((last / "train_config.json").read_text())
    assert ident["init_adapter"]["sha256"]                                     # stage 2 started from stage 1
    assert kernels[0] == 4 and kernels[-1] == 2                                # each stage reads with its kernel
    curve = IC.curve_table(stages, out, {"kmeans_accuracy": 0.5, "kmeans_ari": 0.0})
    assert list(curve["stage"].unique()) == ["one-token", "four-tokens"]
    assert curve["episodes_seen"].is_monotonic_increasing and curve["episodes_seen"].iloc[-1] == 8
    assert {"accuracy", "ari", "well_formed", "labels_used", "accuracy_c2", "accuracy_c3"} <= set(curve)
    assert curve["accuracy"].between(0, 1).all() and (curve["kmeans_accuracy"] == 0.5).all()
    assert IC.plot_curve(curve, tmp_path / "curve.png").stat().st_size > 0
    # called again: every finished stage is reused, nothing trains
    again = IC.train_image_curriculum(cfg, tiny_vlm, stages, fit, CLASSES, out)
    assert again.reused


def test_the_curve_evaluator_generates_one_reply_per_episode_even_when_prompts_are_the_same(tiny_vlm, monkeypatch):
    """The images are not in the prompt text: episodes of the same length and c must not share a reply."""
    from icc_utils.models import LocalChatModel
    from icc_utils.vision import vlm as V

    s = _imageset()
    eps = IC.make_image_episodes(s, CLASSES, [2], 4, 0, "val", (4, 4))     # four episodes, one prompt text
    assert len({(e.n_points, e.n_clusters) for e in eps}) == 1 and len({tuple(e.indices) for e in eps}) == 4
    model, tok, processor = V.load_vlm(str(tiny_vlm))
    generated = []
    real = LocalChatModel.generate_batch

    def counting(self, prompts, *args, **kwargs):
        generated.extend(prompts)
        return real(self, prompts, *args, **kwargs)

    monkeypatch.setattr(LocalChatModel, "generate_batch", counting)
    row = IC.image_curve_evaluator(eps, s, processor, batch_size=2)(model.eval(), tok, 0, 0)
    assert len(generated) == 4 and 0 <= row["accuracy"] <= 1


def test_kmeans_reference_scores_the_features_it_is_given():
    s = _imageset()
    eps = IC.make_image_episodes(s, CLASSES, [2, 3], 4, 0, "val", (6, 9))
    onehot = np.eye(4)[s.labels]                                               # features that are the class
    perfect = IC.kmeans_reference(onehot, eps)
    assert perfect == {"kmeans_accuracy": 1.0, "kmeans_ari": 1.0}
    noise = IC.kmeans_reference(np.random.default_rng(0).normal(size=(len(s.labels), 4)), eps)
    assert noise["kmeans_ari"] < 0.5


def test_one_trainer_per_stage():
    from icc_utils.finetune import FinetuneConfig, train_curriculum
    from icc_utils.finetune.curriculum import CurriculumStage

    stages = [CurriculumStage("a", 2, 1, 2), CurriculumStage("b", 2, 1, 2)]
    with pytest.raises(ValueError, match="trainers has 1 entries for 2 stages"):
        train_curriculum(FinetuneConfig(), stages, "unused", stage_episodes=[[], []], trainers=[print])


def test_curve_table_without_any_stage_run_is_empty(tmp_path):
    curve = IC.curve_table([IC.ImageStage("a", (2,), 1)], tmp_path / "adapter", {"kmeans_accuracy": 0.5})
    assert isinstance(curve, pd.DataFrame) and curve.empty


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """``make train-images`` on the smoke profile (two tiny stages, the embedded model), once for this module."""
    from icc_utils.vision.curriculum import main

    out = tmp_path_factory.mktemp("images") / "run"
    main(["--profile", "smoke", "--out", str(out)])
    return out


def test_make_train_images_on_the_smoke_profile(smoke_run, capsys):
    """The command ``make train-images`` runs, on the smoke profile's two tiny stages (the embedded model)."""
    from icc_utils.vision.curriculum import main

    out = smoke_run
    main(["--profile", "smoke", "--out", str(out)])   # a finished run is reused, and prints its curve again
    curve = pd.read_csv(out / "curve.csv")
    assert list(curve["stage"].unique()) == ["c2-k4", "c23-k2"]
    assert curve["episodes_seen"].iloc[-1] == 4 and curve["kmeans_accuracy"].between(0.5, 1).all()
    assert (out / "curve.png").is_file() and (out / "tower" / "tower_training.json").is_file()
    assert "c23-k2" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--profile", "smoke", "--out", str(out), "--from-stage", "2"])   # stage 2 needs stage 1's adapter


def test_make_train_images_refuses_a_profile_whose_model_is_not_the_stand_in(capsys):
    from icc_utils.vision.curriculum import main

    with pytest.raises(SystemExit):
        main(["--profile", "paper"])
    assert "trains the embedded stand-in ('embedded-llava') only" in capsys.readouterr().err


def test_override_params_reads_yaml_values_and_refuses_unknown_keys():
    p = {"img_ft_learning_rate": 0.001, "img_curriculum": []}
    out = IC.override_params(p, ["img_ft_learning_rate=5e-4", "img_curriculum=[{name: a, n_clusters: [2], n_episodes: 3}]"])
    assert out["img_ft_learning_rate"] == 0.0005 and out["img_curriculum"][0]["n_episodes"] == 3
    assert p["img_ft_learning_rate"] == 0.001          # the profile itself is not changed
    for bad in ["img_ft_lr=1", "img_ft_learning_rate"]:
        with pytest.raises(ValueError, match="KEY=VALUE with KEY a parameter of the profile"):
            IC.override_params(p, [bad])


def test_make_train_images_checks_an_overridden_value(tmp_path):
    """``--set`` goes through the same validation as the profile: a bad value names the parameter."""
    from icc_utils.vision.curriculum import main

    with pytest.raises(ValueError, match="img_ft_learning_rate"):
        main(["--profile", "smoke", "--out", str(tmp_path / "run"), "--set", "img_ft_learning_rate=-1"])


def test_publish_image_model_and_go_on_from_a_published_stage(smoke_run, tmp_path):
    """The smoke run published (tower, both stages, curve; the base model named, not a folder), then stage 2
    trained again on "another machine" from the published tower and stage 1."""
    import json

    from icc_utils.vision import publish as VP
    from icc_utils.vision.curriculum import main

    dst = tmp_path / "models" / "icc-images"
    record = VP.publish_image_model(smoke_run, dst, extra={"training_commit": "abc"})
    assert [s["folder"] for s in record["stages"]] == ["stages/1-c2-k4", "."]
    assert record["training_commit"] == "abc" and record["tower"]["objective"] == "reconstruct"
    for folder in (dst, dst / "stages" / "1-c2-k4"):
        assert (folder / "adapter_model.safetensors").stat().st_size < 10_000_000
        cfg = json.loads((folder / "adapter_config.json").read_text())
        assert cfg["base_model_name_or_path"] == VP.BASE_MODEL_NAME and cfg["modules_to_save"] == ["multi_modal_projector"]
    assert sorted(p.name for p in (dst / "tower").iterdir()) == sorted(VP.TOWER_FILES)
    assert (dst / "curve.csv").is_file() and json.loads((dst / "PROVENANCE.json").read_text())["stages"][0]["stage"] == 1

    out = tmp_path / "elsewhere"
    main(["--profile", "smoke", "--out", str(out), "--tower", str(dst / "tower"),
          "--from-stage", "2", "--init-adapter", str(dst / "stages" / "1-c2-k4")])
    assert (out / "tower" / "model.safetensors").read_bytes() == (dst / "tower" / "model.safetensors").read_bytes()
    assert json.loads((out / "adapter" / "train_config.json").read_text())["finished"]
    assert pd.read_csv(out / "curve.csv")["stage"].unique().tolist() == ["c23-k2"]
    assert not (out / "adapter_stages").exists()     # stage 2 is the last: the adapter folder itself


def test_publish_image_model_errors_name_what_is_missing(tmp_path):
    from icc_utils.vision import publish as VP

    with pytest.raises(FileNotFoundError, match="no adapter weights"):
        VP.publish_image_model(tmp_path, tmp_path / "dst")
    with pytest.raises(FileNotFoundError, match="lacks"):
        VP.copy_tower(tmp_path, tmp_path / "dst")
    with pytest.raises(FileNotFoundError, match="img_model='nothing-here': no published image adapter at models/nothing-here"):
        VP.resolve_image_model("nothing-here")


def test_a_tower_that_does_not_match_the_profile_is_refused(smoke_run, tmp_path):
    import json
    import shutil

    from icc_utils.vision.curriculum import main

    tower = tmp_path / "tower"
    shutil.copytree(smoke_run / "tower", tower)
    rec = json.loads((tower / "tower_training.json").read_text())
    rec["config"]["epochs"] += 1
    (tower / "tower_training.json").write_text(json.dumps(rec))
    with pytest.raises(ValueError, match="--tower .* differs from this profile's tower"):
        main(["--profile", "smoke", "--out", str(tmp_path / "run"), "--tower", str(tower)])


def test_publish_an_unfinished_curriculum_keeps_its_stages_only(smoke_run, tmp_path, monkeypatch):
    """``--partial``: the finished stages under stages/, no final adapter, so nothing claims to be the model."""
    import json

    from icc_utils.vision import publish as VP

    monkeypatch.setattr(VP, "MODELS_DIR", tmp_path / "models")
    VP.main(["--run", str(smoke_run), "--name", "part", "--partial", "--commit", "abc"])
    dst = tmp_path / "models" / "part"
    rec = json.loads((dst / "PROVENANCE.json").read_text())
    assert rec["final"] is None and [s["folder"] for s in rec["stages"]] == ["stages/1-c2-k4"]
    assert (dst / "stages" / "1-c2-k4" / "adapter_model.safetensors").is_file()
    assert not (dst / "adapter_model.safetensors").exists() and (dst / "tower" / "model.safetensors").is_file()
    with pytest.raises(FileNotFoundError, match="img_model='part': no published image adapter at models/part"):
        VP.resolve_image_model("part")


def test_published_image_stages_are_what_make_train_images_runs():
    """Every published stage of models/icc-images has the default profile's recipe and training episodes
    (same stage, same data sha256), and its tower the profile's tower config."""
    import json

    from icc_utils import PROJECT_ROOT
    from icc_utils.finetune.data import data_sha256
    from icc_utils.profiles import load_profile
    from icc_utils.vision import images as I

    root = PROJECT_ROOT / "models" / "icc-images"
    if not (root / "PROVENANCE.json").is_file():
        pytest.skip("no image model published")
    p = load_profile("default")
    stages = IC.image_curriculum_from_params(p["img_curriculum"])
    prov = json.loads((root / "PROVENANCE.json").read_text())
    assert prov["tower"]["objective"] == p["img_tower_objective"] and prov["tower"]["epochs"] == p["img_tower_epochs"]
    classes = [str(c) for c in p["img_train_classes"]]
    images = I.load_digits_set()
    fit_idx, _ = IC.holdout_split(images, classes, p["img_val_fraction"], p["seed"])
    fit = images.subset(fit_idx)
    for k, entry in enumerate(prov["stages"]):
        meta = json.loads((root / entry["folder"] / "train_config.json").read_text())
        assert entry["folder"] in (".", f"stages/{k + 1}-{stages[k].name}")
        assert meta["data_sha256"] == data_sha256(stages[k].episodes(fit, classes, p["seed"], k)), stages[k].name
        assert meta["config"]["learning_rate"] == p["img_curriculum_learning_rate"]
        assert meta["config"]["gradient_accumulation_steps"] == p["img_curriculum_accumulation_steps"]
        assert (meta["config"]["lora_r"], meta["config"]["lora_alpha"]) == (p["img_ft_lora_r"], p["img_ft_lora_alpha"])
        assert meta["lora_overrides"]["_pooling_kernel"] == stages[k].kernel and meta["finished"]
    from icc_utils.io import sha256_file

    names = dict(zip(p["img_pool_kernels"], p["img_pool_names"]))
    for size in IC.image_curriculum_from_params(p["img_size_stages"]):   # each the next stage from the final adapter
        branch = PROJECT_ROOT / "models" / f"icc-images-{names[size.kernel].lower()}"   # icc-images-medium, -large
        if not (branch / "train_config.json").is_file():
            continue
        meta = json.loads((branch / "train_config.json").read_text())
        assert meta["data_sha256"] == data_sha256(size.episodes(fit, classes, p["seed"], len(stages))), branch.name
        assert meta["lora_overrides"]["_pooling_kernel"] == size.kernel and meta["finished"]
        assert meta["init_adapter"]["sha256"] == sha256_file(root / "adapter_model.safetensors")   # the final adapter


def test_a_size_stage_trains_from_the_final_adapter_at_its_own_kernel(smoke_run, tmp_path, capsys):
    """``--size-stage``: one more stage at another pooling kernel, from the curriculum's final adapter."""
    import json

    from icc_utils.vision.curriculum import main

    out = tmp_path / "medium"
    main(["--profile", "smoke", "--out", str(out), "--tower", str(smoke_run / "tower"), "--size-stage", "c2-k1",
          "--init-adapter", str(smoke_run / "adapter")])
    meta = json.loads((out / "adapter" / "train_config.json").read_text())
    assert meta["lora_overrides"]["_pooling_kernel"] == 1 and meta["finished"] and meta["init_adapter"]["sha256"]
    assert pd.read_csv(out / "curve.csv")["stage"].unique().tolist() == ["c2-k1"]
    with pytest.raises(SystemExit):
        main(["--profile", "smoke", "--out", str(out), "--size-stage", "nothing", "--init-adapter", "x"])
    assert "choose one of img_size_stages ['c2-k1']" in capsys.readouterr().err


def test_an_image_curriculum_continued_from_stage_k_keeps_its_numbers(monkeypatch):
    """Stages trained from stage K on (``--from-stage K``) are numbered K, K+1, ... in their folders, and draw the
    same episodes as in the whole curriculum."""
    import icc_utils.finetune as F
    from icc_utils.finetune import FinetuneConfig

    seen = {}
    monkeypatch.setattr(F, "train_curriculum", lambda *a, **k: seen.update(k, stages=a[1]))
    stages = [IC.ImageStage("a", (2,), 2, images=(4, 5)), IC.ImageStage("b", (2,), 3, images=(4, 5)),
              IC.ImageStage("c", (2, 3), 2, images=(4, 5))]
    images, classes = _imageset(), ["top", "bottom", "left"]
    IC.train_image_curriculum(FinetuneConfig(seed=1), "base", stages, images, classes, "out")
    whole = seen["stage_episodes"]
    IC.train_image_curriculum(FinetuneConfig(seed=1), "base", stages[1:], images, classes, "out", first_index=1)
    assert seen["first_stage"] == 2 and [s.name for s in seen["stages"]] == ["b", "c"]
    assert [[e.id for e in eps] for eps in seen["stage_episodes"]] == [[e.id for e in eps] for eps in whole[1:]]
