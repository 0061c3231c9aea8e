"""Which recipe lever moves the embedded model past answering one label? Equal-compute arms.

Each arm is the default profile's recipe (``ft_*`` in ``notebooks/profiles/default.yml``) with one
lever changed, trained for about the same CPU time on notebook 00's default training split, and
evaluated on the same held-out validation episodes of Table 1's setting (c=3, d=3, df=1, the ``val``
seed split: never training, never test) halfway and at the end. Beside them: k-means and answering
one label for every point (the largest cluster's share; ARI 0) on the same episodes. Accuracy above
the one-label score, or an ARI clearly above 0, is what "learned to cluster" looks like; the default
recipe's 720-episode run (``experiments/finetune-budget/budget/``) plateaus at the one-label score.

Arms (``--arms``, default all, in this order):

* ``default``      the recipe as is, on the first ``--episodes`` training episodes (shuffled).
* ``short``        shorter episodes: only training episodes with at most 20 points (the test
                   episodes keep 10-50), so about twice as many fit the same time.
* ``curriculum``   the same episodes as ``default``, easy to hard: by (c, d, n), not shuffled.
* ``updates``      8x more optimiser steps with more capacity: batch 1 without accumulation,
                   learning rate 2e-4, LoRA on all linear layers (q, k, v, o, gate, up, down).
* ``indexed``      a labelled ablation of the answer format (not the paper's): the same episodes as
                   ``default``, with numbered points and ``index: label`` answers
                   (``[1: [0.12, -3.40], 2: ...]`` -> ``[1: 0, 2: 1, ...]``), trained and scored in
                   that format, so the model can find each label's point and knows where the list ends.

Every arm writes to ``--out/<arm>/adapter`` (resumable: rerun to continue); ``levers.csv`` and
``levers.png`` are rebuilt from every arm found under ``--out``. Prints the table, then last: the
best arm's validation accuracy and ARI against the one-label score and k-means.

``--constrained`` then scores every finished arm's adapter, the pretrained model and any
``--also-adapters`` (e.g. ``experiments/finetune-budget/budget/adapter``) with constrained decoding on the same episodes
(the reply forced to exactly n labels in 0..c-1): with the count taken off the model's hands, an ARI
above 0 would show clustering that free decoding hides. One CSV row per model in
``constrained.csv`` (each written as soon as it is scored; a rerun skips those already there).

    .venv/bin/python -m icc_utils.run --profile default --only 00     # the training split, once
    .venv/bin/python experiments/training-levers/finetune_levers.py [--arms default short] [--episodes 160] \\
        [--minutes 25]                      # writes experiments/training-levers/levers
    .venv/bin/python experiments/training-levers/finetune_levers.py --arms --constrained \\
        --also-adapters experiments/finetune-budget/budget/adapter
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))   # the repository

from icc_utils import data as D, finetune as F, plots  # noqa: E402
from icc_utils import evaluate as E  # noqa: E402
from icc_utils.io import write_csv  # noqa: E402
from icc_utils.models import get_backend  # noqa: E402
from icc_utils.profiles import load_profile  # noqa: E402

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class Arm:
    """One lever: config overrides, an episode filter and count factor, the curriculum order, the answer format."""
    overrides: dict = field(default_factory=dict)
    keep: Callable | None = None
    factor: int = 1
    ordered: bool = False
    answer_format: str = "paper"


ARMS = {
    "default": Arm(),
    "short": Arm(keep=lambda ep: ep.n_points <= 20, factor=2),
    "curriculum": Arm(ordered=True),
    "updates": Arm(overrides={"gradient_accumulation_steps": 1, "learning_rate": 2e-4, "target_modules": ALL_LINEAR}),
    "indexed": Arm(answer_format="indexed"),
}


class OrderedEpisodes:
    """Training examples in the order given (the curriculum); :class:`icc_utils.finetune.EpisodeDataset`
    shuffles instead."""

    def __init__(self, episodes, tokenizer, answer_format: str = "paper"):
        self.episodes, self.tokenizer, self.answer_format = list(episodes), tokenizer, answer_format

    def __len__(self) -> int:
        return len(self.episodes)

    def __getitem__(self, i: int) -> dict:
        return F.encode_training_example(self.tokenizer, self.episodes[i], answer_format=self.answer_format)


def arm_episodes(arm: str, n: int) -> list:
    """The arm's training episodes: the first ``n`` (x the arm's factor) of the default split that pass its filter."""
    spec = ARMS[arm]
    pool = F.training_episodes("default", 0)
    chosen = [ep for ep in pool if spec.keep is None or spec.keep(ep)][:n * spec.factor]
    if len(chosen) < n * spec.factor:
        raise SystemExit(f"--episodes={n}: arm {arm!r} needs {n * spec.factor} training episodes, the split has "
                         f"{len(chosen)}; lower --episodes")
    if spec.ordered:
        chosen.sort(key=lambda ep: (ep.n_clusters, ep.params["dim"], ep.n_points))
    return chosen


def dataset_maker(spec: Arm, config) -> Callable | None:
    """``make_dataset`` for :func:`icc_utils.finetune.train`: the curriculum's fixed order, the ablation's answer
    format, or None (the default shuffled dataset)."""
    if spec.ordered:
        return lambda eps, tok, n_epochs: OrderedEpisodes(eps, tok, spec.answer_format)
    if spec.answer_format != "paper":
        return lambda eps, tok, n_epochs: F.EpisodeDataset(eps, tok, config.n_permutations, config.seed, n_epochs,
                                                           answer_format=spec.answer_format)
    return None


def train_arm(arm: str, n: int, minutes: float, val, params: dict, out: Path) -> None:
    spec = ARMS[arm]
    config = F.config_from_params({**params, "ft_max_train_minutes": minutes}, params["model"], params["seed"])
    config = F.FinetuneConfig.from_dict({**config.to_dict(), **spec.overrides})
    episodes = arm_episodes(arm, n)
    D.check_disjoint(episodes, val)
    max_steps = -(-len(episodes) // config.effective_batch_size)
    half = max(1, max_steps // 2)
    print(f"[{arm}] {len(episodes)} episodes, {max_steps} steps of {config.effective_batch_size}, lr "
          f"{config.learning_rate}, LoRA r={config.lora_r} on {list(config.target_modules)}, answer format "
          f"{spec.answer_format}; eval at steps {half} and {max_steps}", flush=True)
    evaluate = F.curve_evaluator(val, params["batch_size"], answer_format=spec.answer_format)

    def on_eval(model, tokenizer, step, seen):  # step 0 is the zero-shot model (notebooks 01 and 04)
        return evaluate(model, tokenizer, step, seen) if step in (half, max_steps) else None

    # the ablation's format is recorded in train_config.json, as part of the run's identity
    record = {"_answer_format": spec.answer_format} if spec.answer_format != "paper" else None
    run = F.train(config, episodes, out / arm / "adapter", on_eval=on_eval, eval_every_steps=1,
                  make_dataset=dataset_maker(spec, config), lora_overrides=record)
    print(f"[{arm}] {run.episodes_seen} episodes in {run.train_seconds / 60:.1f} min, finished={run.finished}",
          flush=True)


def lever_table(out: Path, refs: dict) -> pd.DataFrame:
    """One row per (arm, evaluation) from every ``<arm>/adapter/eval_curve.csv`` under ``out``;
    ``minutes`` is wall time since the arm started, its evaluations included."""
    frames = []
    for arm in ARMS:
        path = out / arm / "adapter" / "eval_curve.csv"
        if path.exists():
            frames.append(pd.read_csv(path).assign(arm=arm, answer_format=ARMS[arm].answer_format,
                                                   minutes=lambda d: d["elapsed_s"] / 60))
    if not frames:
        return pd.DataFrame()
    table = pd.concat(frames, ignore_index=True)
    cols = ["arm", "answer_format", "step", "episodes_seen", "minutes", "accuracy", "ari", "well_formed"]
    cols += [c for c in ("length_ratio",) if c in table]   # labels written / points (evaluations since it exists)
    return table[cols].assign(**refs).round(4)


def constrained_table(out: Path, val, params: dict, also: list, refs: dict) -> pd.DataFrame:
    """Constrained-decoding accuracy and ARI on ``val`` for the pretrained model, every finished arm and ``also``
    (not the ``indexed`` ablation: constrained decoding writes the paper's format only)."""
    path = out / "constrained.csv"
    rows = pd.read_csv(path).to_dict("records") if path.exists() else []
    done = {r["model"] for r in rows}
    candidates = [("pretrained", None, 0)]
    arms = [arm for arm, spec in ARMS.items() if spec.answer_format == "paper"]
    for adapter in [out / arm / "adapter" for arm in arms] + [Path(a) for a in also]:
        meta = adapter / "train_config.json"
        meta = json.loads(meta.read_text()) if meta.exists() else {}
        if meta.get("finished"):
            name = adapter.parent.name if adapter.parent.parent == out else str(adapter)
            candidates.append((name, adapter, meta["episodes_seen"]))
    for name, adapter, seen in candidates:
        if name in done:
            continue
        backend = get_backend(params["model"], adapter=str(adapter) if adapter else None, dtype="float32",
                              batch_size=params["batch_size"])
        scored = E.score_predictions(val, backend.predict(val, constrained=True, desc=f"{name}, constrained"),
                                     name, "constrained")
        rows.append({"model": name, "episodes_seen": seen, "constrained_accuracy": float(scored["accuracy"].mean()),
                     "constrained_ari": float(scored["ari"].mean())})
        write_csv(path, pd.DataFrame(rows))
        print(f"constrained: {rows[-1]}", flush=True)
    table = pd.DataFrame(rows).assign(**refs).round(4)
    write_csv(path, table)
    return table


def plot_levers(table: pd.DataFrame, refs: dict):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for arm, g in table.groupby("arm", sort=False):
        label = arm if ARMS[arm].answer_format == "paper" else f"{arm} (ablation: not the paper's answer format)"
        axes[0].plot(g["minutes"], g["accuracy"], marker="o", label=label)
        axes[1].plot(g["minutes"], g["ari"], marker="o", label=label)
    axes[0].axhline(refs["kmeans_accuracy"], color="k", ls="--", lw=1, label="k-means")
    axes[0].axhline(refs["one_label_accuracy"], color="gray", ls=":", lw=1.5, label="one label for every point")
    axes[1].axhline(refs["kmeans_ari"], color="k", ls="--", lw=1, label="k-means")
    axes[1].axhline(0.0, color="gray", ls=":", lw=1.5, label="one label (ARI 0)")
    for ax, what in zip(axes, ("accuracy", "ARI")):
        ax.set_xlabel("minutes since the arm started, evaluations included (2-core CPU, float32)")
        ax.set_ylabel(f"validation {what}")
        ax.legend(fontsize=8)
    fig.suptitle("SmolLM2-135M-Instruct, one lever per arm: c=3, d=3, df=1 (validation episodes)", fontsize=10)
    fig.tight_layout()
    return fig


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arms", nargs="*", default=list(ARMS), help=f"any of {list(ARMS)}")
    ap.add_argument("--episodes", type=int, default=160, help="training episodes per arm (short: twice as many)")
    ap.add_argument("--minutes", type=float, default=25.0, help="time cap per arm (rerun to continue)")
    ap.add_argument("--eval-n", type=int, default=20, help="validation episodes at df=1")
    ap.add_argument("--out", default=str(HERE / "levers"))
    ap.add_argument("--constrained", action="store_true", help="then score the adapters with constrained decoding")
    ap.add_argument("--also-adapters", nargs="*", default=[], help="more adapter directories for --constrained")
    args = ap.parse_args(argv)
    bad = [a for a in args.arms if a not in ARMS]
    if bad:
        raise SystemExit(f"--arms: {bad} not allowed; choose from {list(ARMS)}")
    for name in ("episodes", "eval_n"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')}={getattr(args, name)} is not allowed; it must be >= 1")
    for a in args.also_adapters:
        if not (Path(a) / "adapter_model.safetensors").exists():
            raise SystemExit(f"--also-adapters: {a} holds no adapter_model.safetensors; give PEFT adapter directories")
    if not args.minutes > 0:
        raise SystemExit(f"--minutes={args.minutes} is not allowed; it must be > 0")

    params = load_profile("default")
    val = D.validation_episodes(params["seed"], params["t1_n_clusters"], params["t1_dim"], [1], args.eval_n)
    out = Path(args.out)
    for arm in args.arms:
        train_arm(arm, args.episodes, args.minutes, val, params, out)
    refs = E.reference_scores(val)
    table = lever_table(out, refs)
    write_csv(out / "levers.csv", table)
    plots.save_figure(plot_levers(table, refs), out / "levers.png")
    print(table.to_string(index=False))
    last = table.sort_values("step").groupby("arm", sort=False).tail(1)
    best = last.sort_values("accuracy").iloc[-1]
    print(f"best arm at its end: {best['arm']} accuracy {best['accuracy']:.3f} ARI {best['ari']:.3f} after "
          f"{int(best['episodes_seen'])} episodes; one label {refs['one_label_accuracy']:.3f}, k-means "
          f"{refs['kmeans_accuracy']:.3f} (ARI {refs['kmeans_ari']:.3f})")
    if args.constrained:
        print(constrained_table(out, val, params, args.also_adapters, refs).to_string(index=False))


if __name__ == "__main__":
    main()
