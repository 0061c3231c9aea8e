"""Publishing trained adapters into ``models/`` (what ``make train`` ends with, and what the notebooks load).

A published adapter is a standard PEFT folder whose weights are saved in bfloat16 when the float32 file
would be over :data:`MAX_FILE_BYTES` (the repository's limit for one file), beside its ``train_config.json``,
loss curve, and ``PROVENANCE.json`` (training commit, data sha256, wall time, machine). A curriculum is
published as its final adapter plus ``stages/<k>-<name>/`` for the earlier stages, so that training can go
on from the last finished stage on another machine (``python -m icc_utils.finetune --from-stage``).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Sequence

from . import MAX_FILE_BYTES, PROJECT_ROOT
from .io import write_json

#: Published adapters, one folder each.
MODELS_DIR: Path = PROJECT_ROOT / "models"
WEIGHTS = "adapter_model.safetensors"
#: Files copied from a training folder beside the weights (when present).
KEPT = ("adapter_config.json", "train_config.json", "loss_curve.csv", "loss_curve.png", "eval_curve.csv")


def published_adapter(name: str) -> Path:
    """The folder of a published adapter ``models/<name>``; a clear error naming what exists when absent."""
    path = MODELS_DIR / name
    if not (path / WEIGHTS).is_file():
        have = sorted(p.name for p in MODELS_DIR.glob("*") if (p / WEIGHTS).is_file()) if MODELS_DIR.is_dir() else []
        raise FileNotFoundError(f"adapter={name!r}: no published adapter at models/{name}/{WEIGHTS}; "
                                f"published: {have or 'none'} (make train publishes them)")
    return path


def save_weights(src: Path, dst: Path, dtype: str | None = None) -> str:
    """Copy ``src`` (a safetensors file) to ``dst``, cast to bfloat16 when ``dtype`` says so or when the
    float32 file is over :data:`MAX_FILE_BYTES`; returns the dtype written."""
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(src))
    if dtype is None:
        dtype = "bfloat16" if src.stat().st_size > MAX_FILE_BYTES else "float32"
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype={dtype!r} is not allowed; choose float32, bfloat16 or float16")
    cast = {k: (v.to(getattr(torch, dtype)) if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(".tmp")
    save_file(cast, str(tmp), metadata={"format": "pt"})
    tmp.replace(dst)
    dst.chmod(0o644)
    if dst.stat().st_size > MAX_FILE_BYTES:
        raise ValueError(f"{dst.name} is {dst.stat().st_size} bytes in {dtype}, over the {MAX_FILE_BYTES}-byte limit")
    return dtype


def publish_adapter(src: str | Path, dst: str | Path, dtype: str | None = None, extra: dict | None = None) -> dict:
    """Publish one finished training folder ``src`` into ``dst`` (weights, configs, curves, a README);
    returns its provenance entry (also in ``dst/PROVENANCE.json``)."""
    src, dst = Path(src), Path(dst)
    meta = json.loads((src / "train_config.json").read_text())
    if not meta.get("finished"):
        raise ValueError(f"{src} holds an unfinished run ({meta.get('global_step')} of {meta.get('max_steps')} "
                         "steps): finish training first")
    dst.mkdir(parents=True, exist_ok=True)
    written = save_weights(src / WEIGHTS, dst / WEIGHTS, dtype)
    for name in KEPT:
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)
    record = {"saved_dtype": written, "data_sha256": meta["data_sha256"], "n_episodes": meta["n_episodes"],
              "train_seconds": round(float(meta["train_seconds"]), 1), "base_model": meta["base_model"],
              "init_adapter": meta.get("init_adapter"), **(extra or {})}
    write_json(dst / "PROVENANCE.json", record)
    return record


def publish_curriculum(stage_dirs: Sequence[str | Path], dst: str | Path, extra: dict | None = None,
                       final: bool = True) -> dict:
    """Publish a curriculum's stages (``stage_dirs`` in order, the last is the final adapter) into ``dst``
    (final) and ``dst/stages/<k>-<name>`` (earlier ones); ``PROVENANCE.json`` lists every stage. Without
    ``final`` (an unfinished curriculum) every stage goes under ``stages/``."""
    dst = Path(dst)
    stages = []
    for k, d in enumerate(map(Path, stage_dirs), 1):
        out = dst if final and k == len(stage_dirs) else dst / "stages" / d.name
        stages.append({"stage": k, "folder": out.relative_to(dst).as_posix() or ".",
                       **publish_adapter(d, out, extra=extra)})
    total = {"stages": stages, "train_seconds": round(sum(s["train_seconds"] for s in stages), 1), **(extra or {})}
    write_json(dst / "PROVENANCE.json", total)
    return total


def validation_scores(adapter: str | Path | None, episodes: Sequence, dtype: str = "auto", batch_size: int = 16,
                      model: str = "embedded") -> "pd.DataFrame":
    """Per-episode scores (greedy free decoding) of ``model`` with ``adapter`` (None: the pretrained model)."""
    from .evaluate import score_predictions
    from .models import get_backend

    backend = get_backend(model, adapter=str(adapter) if adapter else None, dtype=dtype, batch_size=batch_size)
    preds = backend.predict(list(episodes), desc=f"validation, {Path(adapter).name if adapter else model}")
    return score_predictions(episodes, preds, backend.name, "finetuned" if adapter else "zero-shot")


def validation_curve(stage_folders: Sequence[str | Path], episodes: Sequence, **kwargs) -> "pd.DataFrame":
    """The curriculum's learning curve on validation episodes: each stage's end (its published adapter),
    one row per stage with accuracy, ARI and well-formed share overall and per df, and k-means beside."""
    import pandas as pd

    from .evaluate import evaluate
    from .models import get_backend

    km = evaluate(get_backend("kmeans"), episodes, "validation")
    rows, seen = [], 0
    for folder in map(Path, stage_folders):
        meta = json.loads((folder / "train_config.json").read_text())
        seen += int(meta["n_episodes"])
        s = validation_scores(folder, episodes, **kwargs)
        row = {"stage": folder.name if folder.parent.name == "stages" else "final", "episodes_seen": seen,
               "accuracy": s["accuracy"].mean(), "ari": s["ari"].mean(), "well_formed": s["well_formed"].mean(),
               "kmeans_accuracy": km["accuracy"].mean(), "n": len(s)}
        for df, g in s.groupby("df"):
            row[f"accuracy_df{df:g}"] = g["accuracy"].mean()
            row[f"kmeans_accuracy_df{df:g}"] = km.loc[km["df"].eq(df), "accuracy"].mean()
        rows.append(row)
    return pd.DataFrame(rows)


def precision_check(trained: str | Path, published: str | Path, episodes: Sequence, **kwargs) -> dict:
    """Accuracy of the float32 adapter as trained against the published (e.g. bfloat16) copy, same episodes."""
    a, b = validation_scores(trained, episodes, **kwargs), validation_scores(published, episodes, **kwargs)
    return {"n": len(a), "accuracy_trained": float(a["accuracy"].mean()),
            "accuracy_published": float(b["accuracy"].mean()),
            "difference": float(b["accuracy"].mean() - a["accuracy"].mean()),
            "identical_labels": int(sum(x == y for x, y in zip(a["accuracy"], b["accuracy"])))}


def _stage_folders(run: Path) -> list[Path]:
    stages = sorted((p for p in run.with_name(f"{run.name}_stages").glob("*") if (p / WEIGHTS).is_file()),
                    key=lambda p: int(p.name.split("-")[0]))
    return [*stages, run]


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m icc_utils.publish --run runs/icc-numeric/adapter --name icc-numeric``: publish a finished
    training run (a curriculum's stages too) into ``models/<name>``, with its validation curve and the
    check that the saved precision changes validation accuracy by less than 0.01."""
    import argparse
    import subprocess

    from .data import validation_episodes
    from .io import write_csv
    from .runner import environment_info

    ap = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="the training output folder (the final stage's adapter)")
    ap.add_argument("--name", required=True, help="published name: models/<name>")
    ap.add_argument("--commit", default=None, help="commit of the code that trained it (default: HEAD)")
    ap.add_argument("--curve-n-per-df", type=int, default=20, help="validation episodes per df for the curve")
    ap.add_argument("--check-n-per-df", type=int, default=50, help="validation episodes per df for the precision check")
    ap.add_argument("--final-only", action="store_true", help="publish the final adapter only (not the stages)")
    args = ap.parse_args(argv)
    run, dst = Path(args.run), MODELS_DIR / args.name
    commit = args.commit or subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                           cwd=PROJECT_ROOT).stdout.strip()
    env = environment_info()
    extra = {"training_commit": commit, "machine": env.get("machine"), "versions": env.get("versions")}
    folders = [run] if args.final_only else _stage_folders(run)
    record = publish_curriculum(folders, dst, extra)
    published = [dst / "stages" / f.name for f in folders[:-1]] + [dst]
    val = validation_episodes(0, 3, 3, [1, 100], max(args.curve_n_per_df, args.check_n_per_df))
    curve_eps = [e for e in val if int(e.id.rsplit("-", 1)[1]) < args.curve_n_per_df]
    if args.curve_n_per_df:
        write_csv(dst / "validation_curve.csv", validation_curve(published, curve_eps))
    if args.check_n_per_df:
        check_eps = [e for e in val if int(e.id.rsplit("-", 1)[1]) < args.check_n_per_df]
        record["precision_check"] = precision_check(run, dst, check_eps)
        write_json(dst / "PROVENANCE.json", record)
    print(json.dumps(record, indent=1)[:2000])



def published_curve(adapter_dir: str | Path) -> "pd.DataFrame":
    """The validation curve published with an adapter (``validation_curve.csv``: accuracy at each stage's end,
    k-means on the same episodes), in the columns of a learning curve; empty when none was published."""
    import pandas as pd

    path = Path(adapter_dir) / "validation_curve.csv"
    return pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=["episodes_seen", "accuracy"])


def provenance_table(adapter_dir: str | Path) -> "pd.DataFrame":
    """One row per training stage of a published adapter (``PROVENANCE.json``): episodes, training minutes,
    training data sha256, saved dtype; the machine and commit in the table's attrs."""
    import pandas as pd

    path = Path(adapter_dir) / "PROVENANCE.json"
    if not path.is_file():
        return pd.DataFrame()
    rec = json.loads(path.read_text())
    stages = rec.get("stages", [rec])
    table = pd.DataFrame([{"stage": s.get("folder", "."), "episodes": s["n_episodes"],
                           "train_minutes": round(s["train_seconds"] / 60, 1), "data_sha256": s["data_sha256"][:12],
                           "saved_dtype": s["saved_dtype"]} for s in stages])
    table.attrs = {"machine": rec.get("machine"), "training_commit": rec.get("training_commit")}
    return table


if __name__ == "__main__":
    main()
