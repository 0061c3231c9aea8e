"""The image curriculum: notebook 05's multimodal stand-in trained easy to hard (issue 38), as the numeric
adapter was (:mod:`icc_utils.finetune.curriculum`).

* :class:`ImageStage`: one stage (c values, episodes, pooling kernel, images per episode, classes);
  a profile's ``img_curriculum`` is a list of them (:func:`image_curriculum_from_params`).
* :func:`holdout_split`: the validation images, held out of every training class before the tower and the
  language model see any image. The learning curve is measured on episodes of these images only, never on
  the unseen test classes.
* :func:`train_image_curriculum`: the stages in order through :func:`icc_utils.vision.train.train_image_icc`,
  each from the previous stage's adapter, under one time budget (a stopped run goes on when called again).
* :func:`image_curve_evaluator`: the learning curve's evaluator (accuracy, ARI, well-formed share per c);
  :func:`kmeans_reference`: k-means on the same frozen features, the curve's reference line.
* ``python -m icc_utils.vision.curriculum --profile default``: tower, model, curriculum and curve into
  ``runs/icc-images`` (``make train-images``).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import MISSING, dataclass, fields, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from ..validation import check_int, check_ints, check_length_range, check_number, check_strs
from .episodes import DEFAULT_IMAGE_LENGTH_RANGE, interleave_by_c, make_conditional_episodes, make_image_episodes
from .images import ImageSet, images_hash

if TYPE_CHECKING:
    import pandas as pd

    from ..finetune import FinetuneConfig, TrainResult

#: Mixed into each stage's episode seed, so that no two stages (and no notebook's episodes) share episodes.
_STAGE_SEED_TAG = 38


@dataclass(frozen=True)
class ImageStage:
    """One stage: ``n_episodes`` training episodes whose c cycles through ``n_clusters``, of ``images`` = [lo, hi]
    images each from ``classes`` (``()``: every training class), read with pooling ``kernel`` (the stand-in's
    4x4 grid: 4 gives one token per image, 2 four, 1 sixteen). With ``conditions`` (notebook 06), the episodes
    are text-conditioned: each clusters by one of these attributes in turn and its prompt names it; the
    classes (for the shapes: the objects, attribute combinations) only choose which images may be drawn."""

    name: str
    n_clusters: tuple
    n_episodes: int
    kernel: int = 4
    images: tuple = DEFAULT_IMAGE_LENGTH_RANGE
    classes: tuple = ()
    conditions: tuple = ()

    @classmethod
    def from_dict(cls, d, where: str = "stage") -> "ImageStage":
        """A stage from a mapping (a profile's ``img_curriculum`` item); a ValueError names ``where`` and the key."""
        if not isinstance(d, dict):
            raise ValueError(f"{where}={d!r} must be a mapping with keys {list(IMAGE_STAGE_KEYS)}")
        unknown = sorted(set(d) - set(IMAGE_STAGE_KEYS))
        missing = [k for k, v in IMAGE_STAGE_KEYS.items() if v is None and k not in d]
        if unknown or missing:
            raise ValueError(f"{where}: unknown keys {unknown}, missing keys {missing}; a stage has the keys "
                             f"{list(IMAGE_STAGE_KEYS)} (required: "
                             f"{[k for k, v in IMAGE_STAGE_KEYS.items() if v is None]})")
        d = {**{k: v for k, v in IMAGE_STAGE_KEYS.items() if v is not None}, **d}
        name = d["name"]
        if not isinstance(name, str) or not name or not all(ch.isalnum() or ch in "-_." for ch in name):
            raise ValueError(f"{where}.name={name!r} is not allowed; it must be a non-empty folder name "
                             "(letters, digits, '-', '_', '.')")
        cs = check_ints(f"{where}.n_clusters", d["n_clusters"], 2, 10, nonempty=True)
        lo, hi = check_length_range(f"{where}.images", d["images"])
        if lo < max(cs):
            raise ValueError(f"{where}.images={list(d['images'])!r} is not allowed; every episode needs at least "
                             f"max(n_clusters)={max(cs)} images (no empty cluster)")
        classes = check_strs(f"{where}.classes", d["classes"])
        conditions = check_strs(f"{where}.conditions", d["conditions"])
        if classes and not conditions and len(classes) < max(cs):
            raise ValueError(f"{where}.classes={classes!r} has fewer classes than max(n_clusters)={max(cs)}")
        return cls(name=name, n_clusters=tuple(cs), n_episodes=check_int(f"{where}.n_episodes", d["n_episodes"], 1),
                   kernel=check_int(f"{where}.kernel", d["kernel"], 1, 64), images=(lo, hi), classes=tuple(classes),
                   conditions=tuple(conditions))

    def episodes(self, imageset: ImageSet, classes: Sequence[str], seed: int, index: int) -> list:
        """The stage's training episodes from ``imageset`` (``self.classes`` or else ``classes``), c interleaved,
        seeded by (``seed``, the stage's ``index``) so that stages never repeat each other's episodes."""
        pool = list(self.classes) or [str(c) for c in classes]
        unknown = sorted(set(pool) - set(classes))
        if unknown:
            raise ValueError(f"stage {self.name!r}: classes {unknown} are not training classes ({list(classes)})")
        root = int(np.random.SeedSequence([int(seed), _STAGE_SEED_TAG, int(index)]).generate_state(1)[0])
        if self.conditions:
            return conditional_stage_episodes(imageset, pool, self, root)
        per_c = -(-self.n_episodes // len(self.n_clusters))
        eps = make_image_episodes(imageset, pool, self.n_clusters, per_c, root, "train", self.images)
        return interleave_by_c(eps)[:self.n_episodes]


def conditional_stage_episodes(imageset: ImageSet, classes: Sequence[str], stage: ImageStage, root: int) -> list:
    """A conditional stage's episodes: images of ``classes`` only, each condition and c in turn, indices into
    ``imageset``."""
    names = np.asarray(imageset.class_names, dtype=object)[imageset.labels]
    keep = np.flatnonzero(np.isin(names, list(classes)))
    per = -(-stage.n_episodes // (len(stage.conditions) * len(stage.n_clusters)))
    eps = make_conditional_episodes(imageset.subset(keep), None, stage.conditions, stage.n_clusters, per, root,
                                    "train", stage.images)
    eps = [replace(e, indices=[int(keep[i]) for i in e.indices]) for e in eps]
    return interleave_by_c(eps, by_condition=True)[:stage.n_episodes]


#: Keys of one image stage (a profile's ``img_curriculum`` items) and their defaults (None: required).
IMAGE_STAGE_KEYS = {f.name: None if f.default is MISSING else f.default for f in fields(ImageStage)}


def image_curriculum_from_params(stages: Sequence, name: str = "img_curriculum") -> list[ImageStage]:
    """The stages of a profile's ``img_curriculum`` (a list of mappings), checked; stage names distinct."""
    if isinstance(stages, (str, bytes, dict)) or not isinstance(stages, (list, tuple)):
        raise ValueError(f"{name}={stages!r} must be a list of stages (mappings with keys {list(IMAGE_STAGE_KEYS)})")
    out = [ImageStage.from_dict(s, f"{name}[{i}]") for i, s in enumerate(stages)]
    names = [s.name for s in out]
    if len(set(names)) < len(names):
        raise ValueError(f"{name}: stage names {names} must be distinct (each stage has its own folder)")
    return out


def holdout_split(imageset: ImageSet, classes: Sequence[str], fraction: float, seed: int,
                  name: str = "img_val_fraction") -> tuple[np.ndarray, np.ndarray]:
    """Indices of ``classes``' images for training and for validation: a seeded ``fraction`` of each class
    (at least one image; none of a class with a single image) is held out. Images of other classes are in
    neither; a class without images is a ValueError."""
    fraction = check_number(name, fraction, 0, 1, lo_open=True)
    if fraction >= 1:
        raise ValueError(f"{name}={fraction!r} is out of range; it must be in (0, 1)")
    names = np.asarray(imageset.class_names, dtype=object)[imageset.labels]
    fit, val = [], []
    for k, cls in enumerate(sorted(str(c) for c in classes)):
        idx = np.flatnonzero(names == cls)
        if not len(idx):
            raise ValueError(f"class {cls!r} has no images in {imageset.name!r}; choose from its classes")
        idx = np.random.default_rng([int(seed), _STAGE_SEED_TAG, k]).permutation(idx)
        n_val = min(len(idx) - 1, max(1, int(round(fraction * len(idx)))))
        val.extend(idx[:n_val])
        fit.extend(idx[n_val:])
    return np.sort(np.asarray(fit, dtype=np.int64)), np.sort(np.asarray(val, dtype=np.int64))


def pooling_kernel(model) -> int:
    """The pooling kernel a LLaVA model (through PEFT wrappers) currently reads images with."""
    from .vlm import llava_core

    proj = llava_core(model).multi_modal_projector
    for t in [proj, *getattr(proj, "modules_to_save", {}).values()]:
        if hasattr(t, "kernel"):
            return int(t.kernel)
    return 1


def image_curve_evaluator(episodes: Sequence, imageset: ImageSet, processor, batch_size: int = 8) -> Callable:
    """An ``on_eval`` for :func:`~icc_utils.finetune.training.train`: greedy free-decoding replies of the model
    being trained on image ``episodes`` (indices into ``imageset``), read with the model's current pooling:
    mean accuracy, ARI, well-formed share, ``labels_used`` (mean distinct labels / c: 1/c for one label for
    every point) and the accuracy per c."""
    from ..metrics import ari, clustering_accuracy
    from ..models import LocalChatModel
    from .tower import pixel_values
    from .vlm import image_prompt, tokens_per_image

    episodes = list(episodes)
    salts = [images_hash(imageset.images[ep.indices]) for ep in episodes]

    def on_eval(model, tokenizer, step, episodes_seen):
        chat = LocalChatModel.from_loaded(model, tokenizer, name=f"in-training-step{step}", batch_size=batch_size)
        n_tok = tokens_per_image(model, pooling_kernel(model))
        prompts = [image_prompt(tokenizer, ep, n_tok) for ep in episodes]

        def batch_inputs(idx):
            return {"pixel_values": pixel_values(processor, np.concatenate([imageset.images[episodes[i].indices]
                                                                            for i in idx]))}

        # the images are not in the prompt text: without their hash as the key's salt, two episodes with the same
        # length and c (and condition) would share one reply
        preds = chat.predict_prompts(episodes, prompts, [ep.n_clusters for ep in episodes], False, None,
                                     f"image curve, step {step}", key_salts=salts, batch_inputs=batch_inputs)
        acc = np.array([clustering_accuracy(ep.labels, p.labels) for ep, p in zip(episodes, preds)])
        cs = np.array([ep.n_clusters for ep in episodes])
        row = {"accuracy": float(acc.mean()),
               "ari": float(np.mean([ari(ep.labels, p.labels) for ep, p in zip(episodes, preds)])),
               "well_formed": float(np.mean([bool(p.well_formed) for p in preds])),
               "labels_used": float(np.mean([len({l for l in p.labels if l >= 0}) / ep.n_clusters
                                             for ep, p in zip(episodes, preds)]))}
        for c in np.unique(cs):
            row[f"accuracy_c{c}"] = float(acc[cs == c].mean())
        conds = np.array([str((ep.params or {}).get("condition")) for ep in episodes])
        for cond in sorted(set(conds) - {"None"}):   # conditional episodes: the accuracy under each condition
            row[f"accuracy_{cond}"] = float(acc[conds == cond].mean())
        return row

    return on_eval


def kmeans_reference(features: np.ndarray, episodes: Sequence, seed: int = 0) -> dict:
    """k-means on the frozen features of ``episodes``' images: mean accuracy and ARI, the curve's reference."""
    from ..metrics import ari, clustering_accuracy
    from .baselines import kmeans_on_features

    preds = kmeans_on_features(features, episodes, seed)
    return {"kmeans_accuracy": float(np.mean([clustering_accuracy(e.labels, p) for e, p in zip(episodes, preds)])),
            "kmeans_ari": float(np.mean([ari(e.labels, p) for e, p in zip(episodes, preds)]))}


def _train_stage(config, episodes, output_dir, *, base_dir, kernel, imageset, **kwargs) -> "TrainResult":
    from .train import train_image_icc

    return train_image_icc(config, base_dir, kernel, episodes, imageset, output_dir, **kwargs)


def train_image_curriculum(config: "FinetuneConfig", base_dir: str | Path, stages: Sequence[ImageStage],
                           imageset: ImageSet, classes: Sequence[str], output_dir: str | Path,
                           on_eval: Callable | None = None, eval_every_steps: int | None = None,
                           init_adapter: str | Path | None = None, first_index: int = 0) -> "TrainResult":
    """Train ``stages`` in order (LoRA on the language model + the projector, tower frozen), each from the previous
    stage's adapter, through :func:`icc_utils.finetune.train_curriculum` (its folders, budget and resumption).
    ``first_index``: the index of ``stages[0]`` in the whole curriculum (its episodes' seed), when going on from a
    published stage with ``init_adapter``."""
    from ..finetune import train_curriculum

    stages = list(stages)
    episodes = [s.episodes(imageset, classes, config.seed, first_index + k) for k, s in enumerate(stages)]
    trainers = [partial(_train_stage, base_dir=base_dir, kernel=s.kernel, imageset=imageset) for s in stages]
    return train_curriculum(config, stages, output_dir, on_eval, eval_every_steps, stage_episodes=episodes,
                            init_adapter=init_adapter, trainers=trainers, first_stage=first_index + 1)


def curve_table(stages: Sequence[ImageStage], output_dir: str | Path, reference: dict,
                first_stage: int = 1) -> "pd.DataFrame":
    """Every stage's ``eval_curve.csv`` in one table (``episodes_seen`` counts earlier stages), with the k-means
    ``reference`` columns; ``first_stage`` as in :func:`~icc_utils.finetune.curriculum.stage_dirs`."""
    import pandas as pd

    from ..finetune.curriculum import stage_dirs

    parts = [pd.read_csv(d / "eval_curve.csv") for d in stage_dirs(stages, output_dir, first_stage)
             if (d / "eval_curve.csv").exists()]
    curve = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["step", "episodes_seen", "accuracy"])
    return curve.assign(**reference)


def plot_curve(curve: "pd.DataFrame", path: str | Path,
               title: str = "Image curriculum: validation episodes (held-out images of the training classes)") -> Path:
    """Validation accuracy and ARI against training episodes, k-means on the same frozen features dashed."""
    from ..plots import plt, save_figure

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, metric in zip(axes, ("accuracy", "ari")):
        ax.plot(curve["episodes_seen"], curve[metric], marker="o", label="ICC (in training)")
        if len(curve):
            ax.axhline(float(curve[f"kmeans_{metric}"].iloc[0]), ls="--", color="grey", label="k-means (frozen features)")
        ax.set_xlabel("training episodes seen"); ax.set_ylabel(f"validation {metric}"); ax.legend(fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, path)


def override_params(params: dict, assignments: Sequence[str]) -> dict:
    """``params`` with each ``KEY=VALUE`` of ``assignments`` applied (VALUE read as YAML); an unknown KEY or a
    missing ``=`` is a ValueError naming the assignment and what is allowed."""
    import yaml

    out = dict(params)
    for a in assignments:
        key, eq, value = a.partition("=")
        if not eq or key.strip() not in params:
            raise ValueError(f"--set {a!r} is not allowed; it must be KEY=VALUE with KEY a parameter of the profile "
                             f"(for example img_ft_learning_rate=0.0005)")
        v = yaml.safe_load(value)
        if isinstance(v, str):   # YAML 1.1 reads 5e-4 as a string
            try:
                v = float(v)
            except ValueError:
                pass
        out[key.strip()] = v
    return out


def prepare_tower(tower: str | Path | None, out: Path, train: Callable[[], dict]) -> dict:
    """The curriculum's tower in ``out/tower``: ``train()`` (reused when its record matches), after copying a
    published ``tower`` there; a ValueError when the published tower's record differs from the profile's."""
    if tower and not (out / "tower" / "tower_training.json").is_file():
        from .publish import copy_tower

        copy_tower(tower, out / "tower")   # reused by train() when its config and data match the profile's
    rec = train()
    if tower and rec != json.loads((Path(tower) / "tower_training.json").read_text()):
        raise ValueError(f"--tower {tower}: its training record (config, data sha256) differs from this "
                         "profile's tower (tower epochs, objective, seed, training images)")
    return rec


def train_with_curve(base: Path, stages: Sequence[ImageStage], fit: ImageSet, classes: Sequence[str],
                     val: ImageSet, val_eps: Sequence, out: Path, config: "FinetuneConfig", every: int,
                     from_stage: int = 1, init_adapter: str | None = None, title: str | None = None):
    """Stages ``from_stage``.. of ``stages`` trained on ``fit`` into ``out/adapter``, the learning curve on
    ``val_eps`` (episodes of ``val``) every ``every`` steps beside k-means on the same frozen features, written
    to ``out/curve.csv`` and ``out/curve.png``. Returns (training result, curve table)."""
    from . import vlm as V
    from .baselines import mean_pooled_features

    model, _, processor = V.load_vlm(str(base))
    reference = kmeans_reference(mean_pooled_features(model, processor, val.images), val_eps, config.seed)
    del model
    k0 = from_stage - 1
    result = train_image_curriculum(config, base, stages[k0:], fit, classes, out / "adapter",
                                    image_curve_evaluator(val_eps, val, processor), every, init_adapter, first_index=k0)
    curve = curve_table(stages[k0:], out / "adapter", reference, first_stage=from_stage)
    curve.to_csv(out / "curve.csv", index=False)
    plot_curve(curve, out / "curve.png", **({"title": title} if title else {}))
    return result, curve


def curriculum_arguments(description: str, default_out: str) -> argparse.ArgumentParser:
    """The command-line options shared by the image curricula (notebooks 05 and 06)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--profile", default="default")
    ap.add_argument("--out", default=default_out)
    ap.add_argument("--from-stage", type=int, default=1, help="train stages K.. only, from --init-adapter")
    ap.add_argument("--init-adapter", default=None, help="the adapter of stage K-1 (K > 1)")
    ap.add_argument("--tower", default=None,
                    help="a trained tower to use instead of training one (a published model's tower/, to go on "
                         "from its stages on another machine)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override one of the profile's parameters (a YAML value), e.g. for a validation experiment")
    return ap


def check_stage_arguments(ap: argparse.ArgumentParser, args, stages: Sequence[ImageStage]) -> None:
    """--from-stage within the curriculum, and --init-adapter exactly when it is above 1."""
    if not 1 <= args.from_stage <= len(stages) or (args.from_stage > 1) != (args.init_adapter is not None):
        ap.error(f"--from-stage must be in 1..{len(stages)}, and K > 1 needs --init-adapter (stage K-1's adapter)")


def curriculum_config(p: dict, prefix: str, base: Path, batch_size: int = 1,
                      accumulation_steps: int = 1) -> "FinetuneConfig":
    """The training config of an image curriculum from the profile's ``<prefix>_ft_lora_*``,
    ``<prefix>_curriculum_*`` and ``<prefix>_curve_every_steps`` values (``prefix``: "img" or "cond")."""
    from ..finetune import FinetuneConfig

    minutes = p[f"{prefix}_curriculum_max_minutes"]
    return FinetuneConfig(model=str(base), lora_r=p[f"{prefix}_ft_lora_r"], lora_alpha=p[f"{prefix}_ft_lora_alpha"],
                          learning_rate=p[f"{prefix}_curriculum_learning_rate"], warmup_ratio=0.03,
                          per_device_batch_size=batch_size, gradient_accumulation_steps=accumulation_steps,
                          save_steps=p[f"{prefix}_curve_every_steps"],
                          max_train_seconds=60.0 * minutes if minutes else None, seed=p["seed"], dtype=p["vlm_dtype"])


def main(argv=None) -> None:
    """``python -m icc_utils.vision.curriculum --profile default``: train notebook 05's stand-in with the profile's
    ``img_curriculum`` (tower, model, stages, learning curve) into ``--out`` (default ``runs/icc-images``)."""
    from .. import PROJECT_ROOT
    from ..params import check_values
    from ..profiles import load_profile
    from . import images as I, tower as T, vlm as V

    ap = curriculum_arguments(main.__doc__.splitlines()[0], str(PROJECT_ROOT / "runs" / "icc-images"))
    ap.add_argument("--size-stage", default=None, metavar="NAME",
                    help="train one of the profile's img_size_stages (another pooling size) from --init-adapter, the "
                         "curriculum's final adapter, as its next stage")
    args = ap.parse_args(argv)
    p = check_values("05", override_params(load_profile(args.profile), args.set))
    if p["vlm"] != V.EMBEDDED_VLM:
        ap.error(f"vlm={p['vlm']!r}: the image curriculum trains the embedded stand-in ('{V.EMBEDDED_VLM}') only")
    stages = image_curriculum_from_params(p["img_curriculum"])
    if args.size_stage:   # a branch: the curriculum's stages, then this one (its episodes seeded as the next stage)
        sizes = {s.name: s for s in image_curriculum_from_params(p["img_size_stages"], "img_size_stages")}
        if args.size_stage not in sizes or args.init_adapter is None:
            ap.error(f"--size-stage {args.size_stage!r}: choose one of img_size_stages {list(sizes)}, with "
                     "--init-adapter (the curriculum's final adapter)")
        stages, args.from_stage = stages + [sizes[args.size_stage]], len(stages) + 1
    check_stage_arguments(ap, args, stages)
    out, seed, classes = Path(args.out), p["seed"], [str(c) for c in p["img_train_classes"]]
    images = I.load_image_folder(PROJECT_ROOT / p["img_root"]) if p["img_root"] else I.load_digits_set()
    fit_idx, val_idx = holdout_split(images, classes, p["img_val_fraction"], seed)
    fit, val = images.subset(fit_idx), images.subset(val_idx)
    prepare_tower(args.tower, out, lambda: T.pretrain_tower(
        fit, classes, out / "tower", T.TowerConfig(epochs=p["img_tower_epochs"], seed=seed,
                                                   objective=p["img_tower_objective"])))
    base = V.build_embedded_llava(out / "tower", out / "base", seed=seed)
    val_cs = sorted({c for s in stages for c in s.n_clusters})
    val_eps = make_image_episodes(val, classes, val_cs, p["img_curve_n_per_c"], seed, "val", tuple(p["img_length_range"]))
    config = curriculum_config(p, "img", base, p["img_ft_per_device_batch_size"],
                               p["img_curriculum_accumulation_steps"])
    result, curve = train_with_curve(base, stages, fit, classes, val, val_eps, out, config, p["img_curve_every_steps"],
                                     args.from_stage, args.init_adapter)
    print(result)
    print(curve.to_string(index=False))


if __name__ == "__main__":
    main()
