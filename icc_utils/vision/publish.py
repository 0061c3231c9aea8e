"""Publishing the image curriculum (``make train-images``) into ``models/<name>`` (issue 38).

A published image model is the frozen tower that every stage was trained on (``tower/``: SigLIP-architecture
weights, its processor and its training record) and the curriculum's adapters as
:func:`icc_utils.publish.publish_curriculum` lays them out (the final adapter at the top, earlier stages under
``stages/<k>-<name>/``; standard PEFT folders whose ``modules_to_save`` hold the projector), beside the learning
curve (``curve.csv``, ``curve.png``) and ``PROVENANCE.json``. The language model is not copied: it is the embedded
SmolLM2-135M-Instruct, and :func:`icc_utils.vision.vlm.build_embedded_llava` rebuilds the base from the tower.

Training goes on from a published stage on another machine with ``python -m icc_utils.vision.curriculum
--tower models/<name>/tower --from-stage K --init-adapter models/<name>/stages/<K-1>-<stage>``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path
from typing import Sequence

from ..io import sha256_file, write_json
from ..publish import MODELS_DIR, WEIGHTS, _stage_folders, publish_curriculum

#: The tower's files that a published image model keeps.
TOWER_FILES = ("model.safetensors", "config.json", "preprocessor_config.json", "tower_training.json")
#: What the published adapters name as their base model (never a folder on the training machine).
BASE_MODEL_NAME = "embedded-llava (SmolLM2-135M-Instruct + tower/)"


def copy_tower(src: str | Path, dst: str | Path) -> Path:
    """Copy a trained tower folder's :data:`TOWER_FILES` to ``dst``; a clear error naming a missing file."""
    src, dst = Path(src), Path(dst)
    missing = [f for f in TOWER_FILES if not (src / f).is_file()]
    if missing:
        raise FileNotFoundError(f"tower folder {src} lacks {missing}; a trained tower has {list(TOWER_FILES)} "
                                "(python -m icc_utils.vision.curriculum writes it to <out>/tower)")
    dst.mkdir(parents=True, exist_ok=True)
    for f in TOWER_FILES:
        shutil.copy2(src / f, dst / f)
    return dst


def _name_base_model(folder: Path) -> None:
    """The published configs name the base model, not the training run's folder of it."""
    path = folder / "adapter_config.json"
    if path.is_file():
        cfg = json.loads(path.read_text())
        cfg["base_model_name_or_path"] = BASE_MODEL_NAME
        write_json(path, cfg)
    path = folder / "train_config.json"
    if path.is_file():
        meta = json.loads(path.read_text())
        meta["base_model"] = meta["config"]["model"] = BASE_MODEL_NAME
        write_json(path, meta)


def publish_image_model(run: str | Path, dst: str | Path, stage_folders: Sequence[str | Path] | None = None,
                        extra: dict | None = None, partial: bool = False) -> dict:
    """Publish a ``make train-images`` output folder ``run`` (``tower/``, ``adapter[_stages]/``, ``curve.*``)
    into ``dst``. ``stage_folders``: the stages' adapter folders in order (default: those under ``run``, as
    :func:`icc_utils.finetune.curriculum.stage_dirs` lays them out). ``partial``: the curriculum is not finished;
    every given stage goes under ``stages/`` and there is no final adapter (nothing for the notebooks to
    evaluate yet; the next machine goes on from the last stage). Returns the provenance record."""
    run, dst = Path(run), Path(dst)
    folders = [Path(f) for f in stage_folders] if stage_folders else _stage_folders(run / "adapter")
    if partial and not stage_folders:
        folders = folders[:-1]
    unfinished = [str(f) for f in folders if not (f / WEIGHTS).is_file()]
    if unfinished or not folders:
        raise FileNotFoundError(f"no adapter weights in {unfinished or [str(run / 'adapter_stages')]}: train those "
                                "stages first (make train-images)")
    copy_tower(run / "tower", dst / "tower")
    record = publish_curriculum(folders, dst, extra, final=not partial)
    if partial:
        record["final"] = None
    for f in [dst, *sorted((dst / "stages").glob("*"))]:
        _name_base_model(f)
    for name in ("curve.csv", "curve.png"):
        if (run / name).is_file():
            shutil.copy2(run / name, dst / name)
    record["tower"] = json.loads((run / "tower" / "tower_training.json").read_text()).get("config")
    write_json(dst / "PROVENANCE.json", record)
    return record


def resolve_image_model(spec: str, name: str = "img_model") -> tuple[Path, Path, int]:
    """The (tower folder, adapter folder, pooling kernel) that ``spec`` names: a published model ``"icc-images"``
    (its final adapter) or one of its stages ``"icc-images/stages/1-c2-short-k4"``, under ``models/``. A clear
    error names ``name`` and what is published."""
    if not isinstance(spec, str) or not spec or Path(spec).is_absolute() or ".." in Path(spec).parts:
        raise ValueError(f"{name}={spec!r} is not allowed; it must name a published image model under models/, "
                         "such as 'icc-images' or 'icc-images/stages/1-c2-short-k4'")
    adapter = MODELS_DIR / spec
    tower = MODELS_DIR / Path(spec).parts[0] / "tower"
    if not (adapter / WEIGHTS).is_file() or not (tower / "model.safetensors").is_file():
        have = sorted(str(p.parent.relative_to(MODELS_DIR)) for p in MODELS_DIR.glob("*/**/" + WEIGHTS)
                      if (MODELS_DIR / p.relative_to(MODELS_DIR).parts[0] / "tower").is_dir())
        raise FileNotFoundError(f"{name}={spec!r}: no published image adapter at models/{spec} with a tower at "
                                f"models/{Path(spec).parts[0]}/tower; published: {have or 'none'}")
    return tower, adapter, adapter_kernel(adapter)


def adapter_kernel(adapter: str | Path) -> int:
    """The pooling kernel an image adapter was trained with (its ``train_config.json``)."""
    meta = json.loads((Path(adapter) / "train_config.json").read_text())
    return int(meta["lora_overrides"]["_pooling_kernel"])


def image_model_base(spec: str, vlm: str, out_dir: str | Path, seed: int = 0,
                     name: str = "img_model") -> tuple[Path, Path, int]:
    """Notebook 05's (06's) model when ``img_model`` (``cond_model``) is set: the base rebuilt from the published
    tower into ``out_dir``, the adapter folder and its pooling kernel (:func:`resolve_image_model`)."""
    from .vlm import EMBEDDED_VLM, build_embedded_llava

    if vlm != EMBEDDED_VLM:
        raise ValueError(f"{name}={spec!r} needs vlm={EMBEDDED_VLM!r} (a published image model is the stand-in's "
                         f"tower, projector and LoRA); got vlm={vlm!r}")
    tower, adapter, kernel = resolve_image_model(spec, name)
    return build_embedded_llava(tower, out_dir, seed=seed), adapter, kernel


def same_tower(spec: str, other: str, name: str = "cond_uncond_model") -> tuple[Path, int]:
    """The adapter folder and pooling kernel of ``other``, a published model evaluated beside ``spec`` on
    ``spec``'s base: a ValueError naming ``name`` when its tower differs (its adapter would read other features)."""
    tower, _, _ = resolve_image_model(spec)
    other_tower, adapter, kernel = resolve_image_model(other, name)
    if sha256_file(tower / "model.safetensors") != sha256_file(other_tower / "model.safetensors"):
        raise ValueError(f"{name}={other!r} was trained on another tower than {spec!r}; evaluate models that share "
                         "one tower (train the second with --tower models/<first>/tower)")
    return adapter, kernel


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m icc_utils.vision.publish --run runs/icc-images --name icc-images``: publish a finished image
    curriculum (tower, every stage's adapter, learning curve) into ``models/<name>``."""
    from .. import PROJECT_ROOT
    from ..runner import environment_info

    ap = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="the make train-images output folder (holds tower/ and adapter/)")
    ap.add_argument("--name", default="icc-images", help="published name: models/<name>")
    ap.add_argument("--stage", action="append", default=None,
                    help="a stage's adapter folder, in order (repeat; default: those under --run)")
    ap.add_argument("--commit", default=None, help="commit of the code that trained it (default: HEAD)")
    ap.add_argument("--partial", action="store_true",
                    help="the curriculum is not finished: publish the finished stages only (no final adapter)")
    args = ap.parse_args(argv)
    commit = args.commit or subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                           cwd=PROJECT_ROOT).stdout.strip()
    env = environment_info()
    extra = {"training_commit": commit, "machine": env.get("machine"), "versions": env.get("versions")}
    record = publish_image_model(args.run, MODELS_DIR / args.name, args.stage, extra, args.partial)
    print(json.dumps(record, indent=1)[:2000])


if __name__ == "__main__":
    main()
