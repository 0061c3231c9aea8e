"""The pieces :func:`~icc_utils.finetune.training.train` hands to transformers' ``Trainer``: the trainer with the
answer-only loss, the callback that writes the curves and keeps the time budget, and the progress bar.

Imported by ``train()`` when it runs (transformers is heavy), not when :mod:`icc_utils.finetune` is imported.
"""
from __future__ import annotations

import random
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch.utils.data import SequentialSampler
from tqdm.auto import tqdm
from transformers import Trainer, TrainerCallback

from ..io import write_csv
from .loss import answer_only_loss


class AnswerOnlyTrainer(Trainer):
    """``Trainer`` with :func:`~icc_utils.finetune.loss.answer_only_loss`, normalised over the whole accumulated
    batch, and the training data in the dataset's own (seeded) order."""

    loss_is_scaled_for_ga = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = True   # makes Trainer count answer tokens per optimiser step
        self._loss_shifts_labels = True

    def _get_train_sampler(self, train_dataset=None):
        return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "labels")}
        loss = answer_only_loss(model, inputs["input_ids"], inputs["attention_mask"], inputs["labels"],
                                num_items_in_batch, **extra)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients over processes
        return (loss, None) if return_outputs else loss


class Recorder(TrainerCallback):
    """Writes ``loss_curve.csv`` at every log and ``eval_curve.csv`` at every evaluation, calls ``on_eval``
    (step 0 and every ``eval_every_steps``), and stops cleanly once ``max_train_seconds`` are spent.

    ``rows`` / ``eval_rows`` hold the curves so far (a resumed run's rows up to its checkpoint);
    ``start_offset_s`` is the training time of the earlier sessions of this run.
    """

    def __init__(self, output_dir: Path, max_train_seconds: float | None, per_step: int, n_examples: int,
                 start_offset_s: float, rows: list, eval_rows: list, on_eval: Callable | None,
                 eval_every_steps: int | None, tokenizer):
        self.output_dir, self.max_train_seconds = output_dir, max_train_seconds
        self.per_step, self.n_examples, self.offset = per_step, n_examples, start_offset_s
        self.rows, self.eval_rows, self.tokenizer = rows, eval_rows, tokenizer
        self.on_eval, self.eval_every_steps = on_eval, eval_every_steps
        self.t0 = time.perf_counter()
        self.stopped_for_time = False

    def elapsed(self) -> float:
        """Training seconds of this run, its earlier sessions included."""
        return self.offset + time.perf_counter() - self.t0

    def seen(self, state) -> int:
        return min(state.global_step * self.per_step, self.n_examples)

    def _eval(self, state, model) -> None:
        """``on_eval`` in eval mode without gradients; the RNG state is restored, so training is unchanged."""
        if self.on_eval is None or not state.is_world_process_zero:
            return
        rng = (random.getstate(), np.random.get_state(), torch.get_rng_state())
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                rec = self.on_eval(model, self.tokenizer, state.global_step, self.seen(state))
        finally:
            model.train(was_training)
            random.setstate(rng[0]); np.random.set_state(rng[1]); torch.set_rng_state(rng[2])
        if isinstance(rec, dict):
            self.eval_rows.append({"step": state.global_step, "episodes_seen": self.seen(state),
                                   "elapsed_s": self.elapsed(), **rec})
            write_csv(self.output_dir / "eval_curve.csv", pd.DataFrame(self.eval_rows))

    def on_train_begin(self, args, state, control, model=None, **kw):
        if self.eval_every_steps and state.global_step == 0:
            self._eval(state, model)

    def on_log(self, args, state, control, logs=None, **kw):
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return
        self.rows.append({"step": state.global_step, "episodes_seen": self.seen(state), "loss": float(logs["loss"]),
                          "learning_rate": float(logs.get("learning_rate", float("nan"))),
                          "elapsed_s": round(self.elapsed(), 3)})
        write_csv(self.output_dir / "loss_curve.csv", pd.DataFrame(self.rows))

    def on_step_end(self, args, state, control, model=None, **kw):
        if self.eval_every_steps and state.global_step % self.eval_every_steps == 0:
            self._eval(state, model)
        if self.max_train_seconds is not None and self.elapsed() >= self.max_train_seconds \
                and state.global_step < state.max_steps:
            self.stopped_for_time = True
            control.should_save = True
            control.should_training_stop = True
        return control


class Progress(TrainerCallback):
    """A progress bar of optimiser steps (tqdm: steps done, steps/s, elapsed and remaining time) with the last
    logged loss beside it; a resumed run starts at its checkpoint's step. It only reports: the RNG, the data
    order and the weights are untouched. Redrawn every second on a terminal, every 30 s elsewhere (a log file,
    a notebook without widgets), so that a long run's log stays small."""

    def __init__(self, desc: str):
        self.desc, self.bar = desc, None

    def on_train_begin(self, args, state, control, **kw):
        if state.is_world_process_zero:
            interactive = getattr(sys.stderr, "isatty", lambda: False)()
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=self.desc, unit="step",
                            mininterval=1.0 if interactive else 30.0, dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kw):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kw):
        if self.bar is not None and logs and "loss" in logs:
            self.bar.set_postfix(loss=f"{float(logs['loss']):.4g}", refresh=False)

    def on_train_end(self, args, state, control, **kw):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def plot_loss_curve(df: pd.DataFrame, path: str | Path) -> Path:
    """Training loss against episodes seen, saved as a PNG."""
    from ..plots import plt, save_figure

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(df["episodes_seen"], df["loss"], lw=1.2)
    ax.set_xlabel("training episodes seen")
    ax.set_ylabel("answer-token loss (nats)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    save_figure(fig, tmp)
    plt.close(fig)
    tmp.replace(path)
    return path
