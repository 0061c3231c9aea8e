"""``train()``: LoRA fine-tuning on clustering episodes, next-token loss on the answer only (paper Section 4).

One run, in the order it happens: decide from ``train_config.json`` whether a finished run can be reused
(its *identity*: the config's weight-changing fields, the data's sha256, the starting adapter's sha256, the
kernels); load the frozen base model and wrap it in LoRA; build the seeded dataset and the schedule; train
with transformers' ``Trainer`` (checkpoints every ``save_steps``, resumable, a progress bar with the time left);
write a standard PEFT adapter with its curves.

Files written under ``output_dir``: ``adapter_config.json`` + ``adapter_model.safetensors``
(``PeftModel.from_pretrained(base, output_dir)``), the tokenizer, ``train_config.json``,
``loss_curve.csv`` / ``loss_curve.png``, ``eval_curve.csv`` (with ``on_eval``) and ``checkpoints/``.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..data import Episode
from ..io import write_json
from .config import BOOKKEEPING_FIELDS, FinetuneConfig
from .data import EpisodeDataset, collate, data_sha256


@dataclass
class TrainResult:
    """What :func:`train` did: where the adapter is, how far it got, whether it was reused."""

    output_dir: Path
    global_step: int
    max_steps: int
    episodes_seen: int
    finished: bool
    reused: bool
    train_seconds: float
    final_loss: float | None
    model: object = field(default=None, repr=False)  #: the in-memory PeftModel (None when reused)
    stages: tuple = field(default=(), repr=False)    #: a curriculum's per-stage results (train_curriculum)


# ---------------------------------------------------------------- the schedule

def per_step(config: FinetuneConfig) -> int:
    """Training examples per optimiser step, over every process (``WORLD_SIZE``: set by accelerate launch or
    torchrun)."""
    return config.effective_batch_size * max(1, int(os.environ.get("WORLD_SIZE", 1)))


def n_epochs(config: FinetuneConfig, n_items: int) -> int:
    """Passes over ``n_items`` examples: ``config.n_epochs``, or as many as ``config.max_steps`` needs."""
    if config.max_steps is None:
        return config.n_epochs
    return max(1, math.ceil(config.max_steps * per_step(config) / n_items))


def planned_steps(config: FinetuneConfig, n_items: int) -> int:
    """Optimiser steps of a run on ``n_items`` examples (episodes x permutations) of the text dataset."""
    return config.max_steps or math.ceil(n_items * n_epochs(config, n_items) / per_step(config))


# ---------------------------------------------------------------- the run's identity and its folder

def _identity(cfg: dict) -> dict:
    """The fields of a saved config that change the trained weights; fields it predates take their defaults."""
    full = {f.name: f.default for f in fields(FinetuneConfig) if f.default is not MISSING}
    full.update(cfg)
    return {k: v for k, v in full.items() if k not in BOOKKEEPING_FIELDS}


def _adapter_identity(adapter_dir: str | Path) -> dict:
    """The weights' sha256 of a PEFT adapter directory (a clear error when it holds none), and its folder's
    name for readers; never its path, so that a chain of stages can move to another checkout."""
    path = Path(adapter_dir).expanduser().resolve() / "adapter_model.safetensors"
    if not path.is_file():
        raise ValueError(f"init_adapter={str(adapter_dir)!r} is not allowed; it must be a PEFT adapter directory "
                         f"holding adapter_model.safetensors (the output_dir of an earlier train())")
    return {"name": path.parent.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def run_identity(config: FinetuneConfig, train_episodes: Sequence, lora_overrides: dict | None = None,
                 init_adapter: str | Path | None = None) -> dict:
    """What ``train_config.json`` records about a run before it starts (its progress fields come later)."""
    from ..models import model_id

    meta = {"config": config.to_dict(), "n_episodes": len(train_episodes),
            "n_examples_per_epoch": len(train_episodes) * config.n_permutations,
            "data_sha256": data_sha256(train_episodes), "base_model": model_id(config.model),
            "kernels": config.resolved_kernels()}
    if lora_overrides:
        meta["lora_overrides"] = dict(lora_overrides)
    if init_adapter is not None:
        meta["init_adapter"] = _adapter_identity(init_adapter)
    return meta


def same_run(old: dict, new: dict) -> bool:
    """Whether a saved ``train_config.json`` (``old``) is the run ``new`` (:func:`run_identity`) would train."""
    return (_identity(old["config"]) == _identity(new["config"]) and old["data_sha256"] == new["data_sha256"]
            and old.get("lora_overrides") == new.get("lora_overrides")
            and (old.get("init_adapter") or {}).get("sha256") == (new.get("init_adapter") or {}).get("sha256")
            and old.get("kernels", "torch") == new["kernels"])


def _last_checkpoint(ckpt_dir: Path) -> Path | None:
    cands = [p for p in ckpt_dir.glob("checkpoint-*") if (p / "trainer_state.json").exists()]
    return max(cands, key=lambda p: int(p.name.split("-")[-1])) if cands else None


def _checkpoint_step(checkpoint: Path | None) -> int | None:
    """The global step of ``checkpoint`` (a ``checkpoint-*`` directory; None for None)."""
    return json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] if checkpoint else None


def _restore_curves(output_dir: Path, last: Path | None, step: int) -> tuple[list, list]:
    """The loss and eval curves' rows up to ``step`` when resuming from checkpoint ``last``; from step 0,
    empty lists, and curves left by an earlier (e.g. published) run are deleted: they are not this run's."""
    import pandas as pd

    if last is None:
        for name in ("loss_curve.csv", "loss_curve.png", "eval_curve.csv"):
            (output_dir / name).unlink(missing_ok=True)
        return [], []
    curves = []
    for name in ("loss_curve.csv", "eval_curve.csv"):
        path = output_dir / name
        df = pd.read_csv(path) if path.exists() else None
        curves.append(df[df["step"] <= step].to_dict("records") if df is not None else [])
    return curves[0], curves[1]


# ---------------------------------------------------------------- the model

def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _load_adapter_weights(model, adapter_dir: str | Path) -> None:
    """Copy an earlier adapter's LoRA weights into ``model`` (a fresh PeftModel of the same LoRA shape)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(Path(adapter_dir).expanduser().resolve() / "adapter_model.safetensors"))
    try:
        result = set_peft_model_state_dict(model, weights)
    except RuntimeError as err:   # a shape mismatch (another rank)
        raise ValueError(f"init_adapter={str(adapter_dir)!r} does not fit this run's LoRA: {err}") from None
    missing = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing:
        raise ValueError(f"init_adapter={str(adapter_dir)!r} does not fit this run's LoRA (other target modules): "
                         f"{len(result.unexpected_keys)} of its tensors unused, {len(missing)} of ours not set")


def lora_model(config: FinetuneConfig, model_loader: Callable | None = None, lora_overrides: dict | None = None,
               init_adapter: str | Path | None = None, kernels: str = "torch"):
    """The seeded frozen base model (``config.weights_dtype``) wrapped in LoRA (float32 weights), started from
    ``init_adapter``'s weights when given, with :mod:`icc_utils.kernels` for ``kernels="blocked"``.
    Returns ``(model, tokenizer)``."""
    from peft import LoraConfig, get_peft_model

    from ..models import load_model_and_tokenizer

    _seed_everything(config.seed)
    if model_loader is not None:
        model, tok = model_loader(config)
    else:
        model, tok = load_model_and_tokenizer(config.model, dtype=config.weights_dtype)
    model.config.use_cache = False
    lora_kwargs = {"target_modules": list(config.target_modules),
                   **{k: v for k, v in (lora_overrides or {}).items() if not k.startswith("_")}}
    lora = LoraConfig(task_type="CAUSAL_LM", r=config.lora_r, lora_alpha=config.lora_alpha,
                      lora_dropout=config.lora_dropout, **lora_kwargs)
    model = get_peft_model(model, lora)   # adapter weights are float32 (autocast_adapter_dtype)
    if init_adapter is not None:
        _load_adapter_weights(model, init_adapter)
    if kernels == "blocked":
        from ..kernels import use_blocked_kernels
        use_blocked_kernels(model)
    return model, tok


def _portable_adapter_config(adapter_dir: Path, base_model: str) -> None:
    """PEFT writes the base model's local path into ``adapter_config.json``; name the model instead."""
    path = adapter_dir / "adapter_config.json"
    if path.exists():
        cfg = json.loads(path.read_text())
        cfg["base_model_name_or_path"] = base_model
        write_json(path, cfg)


# ---------------------------------------------------------------- train()

def _check_eval_every_steps(eval_every_steps) -> None:
    if eval_every_steps is not None and (isinstance(eval_every_steps, bool) or not isinstance(eval_every_steps, int)
                                         or eval_every_steps < 1):
        raise ValueError(f"eval_every_steps={eval_every_steps!r} is not allowed; it must be None or an integer >= 1")


def train(config: FinetuneConfig, train_episodes: Sequence[Episode], output_dir: str | Path, resume: bool = True,
          on_eval: Callable | None = None, eval_every_steps: int | None = None,
          callbacks: Sequence = (), model_loader: Callable | None = None, make_dataset: Callable | None = None,
          collate_fn: Callable | None = None, lora_overrides: dict | None = None,
          init_adapter: str | Path | None = None) -> TrainResult:
    """Fine-tune ``config.model`` with LoRA on ``train_episodes``; the adapter goes to ``output_dir``.

    * A finished run with the same identity (:func:`same_run`: bookkeeping fields aside) is reused as is, when
      it was trained here: its last checkpoint is in ``output_dir/checkpoints``. A finished adapter without its
      checkpoints (a published one, in a fresh clone) is trained again from step 0, so ``make reproduce``
      re-derives the adapter instead of reading back the published one.
    * ``resume=True`` continues from the last checkpoint in ``output_dir/checkpoints``; the result
      is the same adapter as an uninterrupted run. ``resume=False`` discards earlier outputs.
    * ``on_eval(model, tokenizer, step, episodes_seen)`` is called at step 0 and every
      ``eval_every_steps`` steps with the model in eval mode (under ``no_grad``; the RNG state is
      restored afterwards, so evaluating does not change training); a returned dict becomes a row
      of ``eval_curve.csv``.
    * ``max_train_seconds`` stops cleanly (checkpoint + adapter, ``finished=False``); call
      again to continue.
    * Other models and data (notebook 05's multimodal model): ``model_loader(config) -> (model,
      tokenizer)`` replaces the text-model loader, ``make_dataset(episodes, tokenizer, n_epochs)``
      the text dataset, ``collate_fn(examples, pad_id)`` the text collator, and ``lora_overrides``
      (e.g. ``target_modules`` as a regex, ``modules_to_save``) update the ``LoraConfig`` (keys
      starting with ``_`` are only recorded, as part of the run's identity).
    * ``init_adapter``: a PEFT adapter directory of an earlier run (same LoRA shape) whose weights
      start this run instead of the fresh LoRA initialisation (with a new optimiser and schedule): the
      next stage of a curriculum. Its weights' sha256 is part of the run's identity.
    """
    import pandas as pd
    import torch
    from transformers import PrinterCallback, TrainingArguments

    from ..models import model_id
    from .trainer import AnswerOnlyTrainer, Progress, Recorder, plot_loss_curve

    if not isinstance(config, FinetuneConfig):
        raise ValueError(f"config must be a FinetuneConfig, got {type(config).__name__}")
    config.validate()
    train_episodes = list(train_episodes)
    if not train_episodes:
        raise ValueError("train_episodes is empty; pass at least one Episode")
    _check_eval_every_steps(eval_every_steps)

    # ---- reuse a finished run, resume a stopped one, or start afresh
    output_dir = Path(output_dir).expanduser().resolve()
    ckpt_dir, meta_path = output_dir / "checkpoints", output_dir / "train_config.json"
    meta = run_identity(config, train_episodes, lora_overrides, init_adapter)
    old = json.loads(meta_path.read_text()) if meta_path.exists() else None
    same = old is not None and same_run(old, meta)
    if resume and same and old.get("finished") and (output_dir / "adapter_model.safetensors").exists() \
            and _checkpoint_step(_last_checkpoint(ckpt_dir)) == old["global_step"]:
        return TrainResult(output_dir, old["global_step"], old["max_steps"], old["episodes_seen"], True, True,
                           old["train_seconds"], old.get("final_loss"))
    if resume and old is not None and not same:
        raise ValueError(f"{output_dir} holds a run with a different config or training data; "
                         "use another output_dir, or resume=False to discard it")
    if not resume:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        for name in ("train_config.json", "adapter_model.safetensors", "adapter_config.json"):  # curves: below
            (output_dir / name).unlink(missing_ok=True)
    output_dir.mkdir(parents=True, exist_ok=True)

    # ---- model: frozen base (fp32 or bf16) + LoRA in fp32, seeded
    model, tok = lora_model(config, model_loader, lora_overrides, init_adapter, meta["kernels"])
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    # ---- data and schedule: the dataset's own seeded order, one optimiser step per per_step examples
    step_size = per_step(config)
    epochs = n_epochs(config, len(train_episodes) * config.n_permutations)
    dataset = (make_dataset(train_episodes, tok, epochs) if make_dataset is not None
               else EpisodeDataset(train_episodes, tok, config.n_permutations, config.seed, epochs))
    max_steps = config.max_steps or math.ceil(len(dataset) / step_size)
    args = TrainingArguments(
        output_dir=str(ckpt_dir), per_device_train_batch_size=config.per_device_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps, max_steps=max_steps,
        learning_rate=config.learning_rate, lr_scheduler_type=config.lr_schedule,
        warmup_steps=config.warmup_ratio, weight_decay=0.0, max_grad_norm=1.0,
        bf16=config.autocast, activation_checkpointing=config.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if config.gradient_checkpointing else None,
        logging_steps=config.logging_steps, save_strategy="steps", save_steps=config.save_steps,
        save_total_limit=2, seed=config.seed, data_seed=config.seed, report_to="none",
        remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=True,
        optim="adamw_torch", use_cpu=not torch.cuda.is_available())

    # ---- resume bookkeeping: the curves up to the checkpoint's step, the time already spent
    last = _last_checkpoint(ckpt_dir) if resume else None
    resumed_step = _checkpoint_step(last) or 0
    rows, eval_rows = _restore_curves(output_dir, last, resumed_step)
    offset = float(rows[-1]["elapsed_s"]) if rows else 0.0
    write_json(meta_path, {**meta, "finished": False, "global_step": resumed_step, "max_steps": max_steps,
                           "episodes_seen": resumed_step * step_size, "train_seconds": offset})

    # ---- train
    recorder = Recorder(output_dir, config.max_train_seconds, step_size, len(dataset), offset, rows, eval_rows,
                        on_eval, eval_every_steps, tok)
    trainer = AnswerOnlyTrainer(model=model, args=args, train_dataset=dataset,
                                data_collator=lambda ex: (collate_fn or collate)(ex, pad_id),
                                callbacks=[recorder, Progress(output_dir.name), *callbacks])
    trainer.remove_callback(PrinterCallback)   # the progress bar shows the loss; the curves keep every value
    trainer.train(resume_from_checkpoint=str(last) if last else None)

    # ---- outputs: the PEFT adapter, the tokenizer, the curves, and train_config.json with the progress
    state = trainer.state
    finished = state.global_step >= max_steps
    seen = min(state.global_step * step_size, len(dataset))
    final_loss = None
    if trainer.is_world_process_zero():
        trainer.model.save_pretrained(output_dir)
        tok.save_pretrained(output_dir)
        _portable_adapter_config(output_dir, model_id(config.model))
        if rows:
            plot_loss_curve(pd.DataFrame(rows), output_dir / "loss_curve.png")
        final_loss = float(rows[-1]["loss"]) if rows else None
        write_json(meta_path, {**meta, "finished": finished, "global_step": state.global_step, "max_steps": max_steps,
                               "episodes_seen": seen, "train_seconds": recorder.elapsed(), "final_loss": final_loss})
    return TrainResult(output_dir, state.global_step, max_steps, seen, finished, False, recorder.elapsed(),
                       final_loss, trainer.model)
