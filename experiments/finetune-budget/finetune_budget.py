"""How many training episodes does the embedded model need to beat k-means at df=1?

One long LoRA run with the default profile's recipe (``ft_*`` parameters of
``notebooks/profiles/default.yml``) on notebook 00's default training split, evaluated every
``--eval-every-steps`` optimiser steps on held-out validation episodes of Table 1's setting
(c=3, d=3, df=1, the ``val`` seed split: never training, never test), with k-means on the same
episodes beside it (from step ``--eval-every-steps`` on: step 0 is the zero-shot model, reported
by notebooks 01 and 04). The cosine schedule spans the whole run, so an intermediate point has seen a
higher learning rate than a run that stops there would; read it as the curve of this run.

``--clusters C --dims D`` instead trains on a fresh training set of that one setting (``train`` seed
split, t noise with the training dfs, 10-50 points as in the test sets) and draws the validation
episodes from the same setting at ``--eval-dfs``: a diagnostic on an easier task than Table 1's,
e.g. ``--clusters 2 --dims 1`` (two clusters on a line) asks whether the model starts to cluster at
all within a CPU budget.

``--train-points LO HI`` (with ``--clusters``) draws the training episodes' lengths from LO..HI points
instead of 10-50 (the shorter-episodes lever, e.g. ``4 12``: fewer labels to keep in step); the
validation episodes keep 10-50, as the test sets do. ``--train-dfs DF ...`` draws the training
episodes' noise from those dfs only, and ``--separated`` keeps only the training episodes whose labels
are their points' nearest-mean partition (:func:`icc_utils.data.nearest_mean_agreement` = 1): the easy end
of a curriculum by separation (e.g. ``--train-dfs 100 --separated``). The validation episodes are never
filtered. ``--init-adapter DIR`` starts from an earlier run's adapter (``DIR`` = its ``--out``/adapter; same
recipe) with a fresh optimiser and schedule: the next stage of a curriculum, e.g. the separated short-list
adapter continued on full-length episodes. ``--seed S`` (with ``--clusters``) repeats a run with other training
episodes, LoRA initialisation and data order, scored on the same validation episodes.

``--labels sign`` / ``sign-canonical`` (with ``--clusters``) is a control: the same episodes, prompt and
recipe, but every label (training and validation) follows a fixed rule, 1 where the point is >= 0
(``sign``), or that split relabelled by first appearance as cluster labels are (``sign-canonical``);
see :func:`icc_utils.data.rule_labelled`. If the model learns these and not the clusters, the recipe and
the pipeline can tie a label to its point, and what is missing is the clustering. The k-means column
then scores k-means against the rule's labels, and the last line compares the model with the one-label
score instead. ``--recipe updates`` / ``indexed`` changes the recipe as the arm of that name in
``experiments/training-levers/finetune_levers.py`` does (8x more optimiser steps with LoRA on all linear layers; the
``indexed`` answer-format ablation, not the paper's format).

Writes ``budget_curve.csv`` and ``budget_curve.png`` under ``--out`` as the run goes (the run resumes
from its last checkpoint if killed), with k-means and answering one label for every point on the same
episodes as reference columns; ``--curve-only`` rebuilds them from a stopped run's evaluations. Prints
the curve, for each validation df the first episode count at which its accuracy reached k-means' on that df (df 1 is
the target's), then last: the first episode count at which the fine-tuned model's validation accuracy
reached k-means' (a control: passed the one-label score by ``CONTROL_MARGIN``), or that it did not within the run.

    .venv/bin/python -m icc_utils.run --profile default --only 00     # the training split, once
    .venv/bin/python experiments/finetune-budget/finetune_budget.py [--episodes 720] [--eval-every-steps 18] \\
        [--eval-n 20] [--minutes 95]        # writes experiments/finetune-budget/budget
    .venv/bin/python experiments/finetune-budget/finetune_budget.py --clusters 2 --dims 1 --eval-dfs 1 100 \\
        --episodes 4800 --eval-every-steps 60 --minutes 100 --out experiments/finetune-budget/budget-c2d1

The commands of every published run are in the README of its experiment (``experiments/*/README.md``).
A finished adapter's score on Table 1's own test episodes (not the validation curve):
``experiments/curriculum/table1_check.py``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE.parent / "training-levers")]   # the repository, finetune_levers.py

from icc_utils import data as D, finetune as F, plots  # noqa: E402
from icc_utils import evaluate as E  # noqa: E402
from icc_utils.io import write_csv  # noqa: E402
from icc_utils.profiles import load_profile  # noqa: E402
from finetune_levers import ARMS, dataset_maker  # noqa: E402

RECIPES = ("default", "updates", "indexed")  # the levers of finetune_levers.py that change the recipe, not the data
CONTROL_MARGIN = 0.05  # a control has learned its rule when accuracy is this far above the one-label score


def one_setting_training_set(args: argparse.Namespace, seed: int) -> list:
    """The first ``--episodes`` training episodes of ``--clusters``/``--dims`` with the chosen lengths and dfs
    (:func:`icc_utils.data.one_setting_training_set`, as notebook 04's curriculum stages draw them)."""
    try:
        return D.one_setting_training_set(args.episodes, seed, args.clusters, args.dims,
                                          dfs=tuple(args.train_dfs or D.TRAIN_DFS),
                                          length_range=tuple(args.train_points or D.DEFAULT_LENGTH_RANGE),
                                          separated=args.separated)
    except ValueError as err:
        raise SystemExit(f"--episodes={args.episodes} --separated: {err}") from None


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=720, help="training episodes (the first N of the split)")
    ap.add_argument("--eval-every-steps", type=int, default=18)
    ap.add_argument("--eval-n", type=int, default=20, help="validation episodes per df (--eval-dfs)")
    ap.add_argument("--minutes", type=float, default=95.0, help="training time budget (rerun to continue)")
    ap.add_argument("--out", default=str(HERE / "budget"))
    ap.add_argument("--clusters", type=int, help="train and validate on this c only (with --dims; default: "
                    "notebook 00's training split, validation at Table 1's c=3, d=3)")
    ap.add_argument("--dims", type=int, help="train and validate on this d only (with --clusters)")
    ap.add_argument("--eval-dfs", type=float, nargs="+", default=[1.0], help="validation dfs (--eval-n each)")
    ap.add_argument("--train-points", type=int, nargs=2, metavar=("LO", "HI"),
                    help=f"training episode lengths (needs --clusters; default {D.DEFAULT_LENGTH_RANGE[0]}-"
                         f"{D.DEFAULT_LENGTH_RANGE[1]}); validation keeps the default")
    default_dfs = " ".join(f"{x:g}" for x in D.TRAIN_DFS)
    ap.add_argument("--train-dfs", type=float, nargs="+", metavar="DF",
                    help=f"dfs of the training episodes (needs --clusters; default {default_dfs})")
    ap.add_argument("--separated", action="store_true",
                    help="train only on well-separated episodes (every point nearer its own cluster's mean; needs "
                         "--clusters): the easy end of a curriculum; validation keeps every episode")
    ap.add_argument("--init-adapter", metavar="DIR",
                    help="start from this earlier run's adapter (same recipe; fresh optimiser and schedule): a "
                         "curriculum's next stage")
    ap.add_argument("--labels", default="clusters", choices=D.LABEL_RULES,
                    help="label rule of training and validation episodes (not clusters: a control; needs --clusters)")
    ap.add_argument("--recipe", default="default", choices=RECIPES,
                    help="the default profile's recipe, or it with one lever of finetune_levers.py changed")
    ap.add_argument("--seed", type=int, help="root seed of the training episodes (with --clusters) and of the LoRA "
                    "initialisation and data order (default: the profile's, 0); the validation episodes keep the "
                    "profile's seed, so runs with other seeds are scored on the same episodes")
    ap.add_argument("--curve-only", action="store_true",
                    help="do not train: rebuild budget_curve.csv/png from the run's evaluations so far (a run stopped early)")
    args = ap.parse_args(argv)
    for name in ("episodes", "eval_every_steps", "eval_n"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')}={getattr(args, name)} is not allowed; it must be >= 1")
    if args.seed is not None and (args.seed < 0 or args.clusters is None):
        raise SystemExit(f"--seed={args.seed} is not allowed; it must be >= 0 and needs --clusters and --dims "
                         "(notebook 00's split has the profile's seed)")
    if (args.clusters is None) != (args.dims is None):
        raise SystemExit("--clusters and --dims go together: give both (one setting) or neither (notebook 00's split)")
    if args.clusters is not None and not (2 <= args.clusters <= 10 and 1 <= args.dims <= 16):
        raise SystemExit(f"--clusters={args.clusters} --dims={args.dims} is not allowed; c must be in 2..10, d in 1..16")
    if args.train_points is not None:
        lo, hi = args.train_points
        if args.clusters is None or not args.clusters <= lo <= hi:
            raise SystemExit(f"--train-points={lo} {hi} is not allowed; it needs --clusters and "
                             f"--clusters <= LO <= HI (no empty cluster)")
    if (args.train_dfs or args.separated) and args.clusters is None:
        raise SystemExit("--train-dfs and --separated need --clusters and --dims (a one-setting training set)")
    for df in args.train_dfs or []:  # the data module's rule for a df, checked before any episode is drawn
        try:
            D.normalise_distribution("t", df)
        except ValueError as err:
            raise SystemExit(f"--train-dfs: {err}") from None
    if args.labels != "clusters" and args.clusters is None:
        raise SystemExit(f"--labels={args.labels} needs --clusters and --dims (a control on one setting)")

    params = load_profile("default")
    seed = params["seed"] if args.seed is None else args.seed   # training episodes and initialisation, not validation
    config = F.config_from_params({**params, "ft_max_train_minutes": args.minutes}, params["model"], seed)
    spec = ARMS[args.recipe]
    config = F.FinetuneConfig.from_dict({**config.to_dict(), **spec.overrides})
    if args.clusters is None:
        c, d = params["t1_n_clusters"], params["t1_dim"]
        train_episodes = F.training_episodes("default", args.episodes)
    else:
        c, d = args.clusters, args.dims
        train_episodes = one_setting_training_set(args, seed)
    val = D.validation_episodes(params["seed"], c, d, args.eval_dfs, args.eval_n)
    train_episodes = [D.rule_labelled(ep, args.labels) for ep in train_episodes]
    val = [D.rule_labelled(ep, args.labels) for ep in val]
    D.check_disjoint(train_episodes, val)
    out = Path(args.out)
    trained_on = ", ".join(filter(None, [
        f"{args.train_points[0]}-{args.train_points[1]} points" if args.train_points else "",
        "df " + " ".join(f"{x:g}" for x in args.train_dfs) if args.train_dfs else "",
        "separated" if args.separated else ""]))
    start = f"from {Path(args.init_adapter).resolve().parent.name}" if args.init_adapter else ""  # a curriculum's stage
    print(f"recipe: {config}\ntraining on {len(train_episodes)} episodes{' of ' + trained_on if trained_on else ''}{' ' + start if start else ''}; curve on {len(val)} validation episodes "
          f"(c={c}, d={d}, df={args.eval_dfs}, labels: {args.labels}) every {args.eval_every_steps} steps", flush=True)

    evaluate = F.curve_evaluator(val, params["batch_size"], answer_format=spec.answer_format)

    # step 0 is the zero-shot model (notebooks 01 and 04), or with --init-adapter the earlier stage's end
    def on_eval(model, tokenizer, step, episodes_seen):
        return evaluate(model, tokenizer, step, episodes_seen) if step or args.init_adapter else None

    record = {"_answer_format": spec.answer_format} if spec.answer_format != "paper" else None
    run = None if args.curve_only else F.train(config, train_episodes, out / "adapter", on_eval=on_eval,
                                               eval_every_steps=args.eval_every_steps,
                                               make_dataset=dataset_maker(spec, config), lora_overrides=record,
                                               init_adapter=args.init_adapter)
    curve = F.learning_curve_table(out / "adapter", val)
    seen = run.episodes_seen if run else int(curve["episodes_seen"].max())
    if args.clusters is not None:  # reference columns of the diagnostic runs (the published c=3, d=3 run predates them)
        curve = curve.assign(**E.reference_scores(val, per_df=True))
    write_csv(out / "budget_curve.csv", curve)
    dfs = ", ".join(f"{x:g}" for x in args.eval_dfs)
    rule = "" if args.labels == "clusters" else f", labels: {args.labels} (control)"
    rule += f", trained on {trained_on}" if trained_on else ""
    rule += f", {start}" if start else ""
    rule += "\nablation: not the paper's answer format" if spec.answer_format != "paper" else ""
    fig = plots.plot_learning_curve(curve, title=f"SmolLM2-135M-Instruct, {args.recipe} recipe: c={c}, d={d}, "
                                                 f"df={dfs}{rule} (validation)")
    plots.save_figure(fig, out / "budget_curve.png")
    shown = ["step", "episodes_seen"] + [k for k in curve if k.startswith(("accuracy", "ari", "kmeans", "one_label"))]
    print(curve[shown + ["well_formed"]].round(3).to_string(index=False))
    if run:
        print(f"{run.episodes_seen} episodes in {run.train_seconds / 60:.1f} min, finished={run.finished}")
    else:
        print(f"--curve-only: the curve of the run so far ({seen} episodes at its last evaluation), not trained further")
    # the target is k-means at df=1 in Table 1's setting: each validation df's line, then all of them (last)
    per_df = [k for k in curve if k.startswith("accuracy_") and f"kmeans_{k}" in curve]
    for col in per_df if args.labels == "clusters" else []:
        km, passed = curve[f"kmeans_{col}"].iloc[0], curve[curve[col] >= curve[f"kmeans_{col}"]]
        print(f"at {col[len('accuracy_'):]}: " + (f"passed k-means ({km:.3f}) after {int(passed['episodes_seen'].iloc[0])} "
                                                  f"training episodes ({passed[col].iloc[0]:.3f})" if len(passed) else
                                                  f"did not pass k-means ({km:.3f}); best {curve[col].max():.3f}"))
    # a label-rule control must leave the one-label score (k-means does not know the rule)
    if args.labels == "clusters":
        ref, what, beat = "kmeans_accuracy", "k-means", curve["accuracy"] >= curve["kmeans_accuracy"]
    else:
        ref, what = "one_label_accuracy", f"the one-label score by {CONTROL_MARGIN:g}"
        beat = curve["accuracy"] >= curve[ref] + CONTROL_MARGIN
    beat = curve[beat]
    if len(beat):
        print(f"validation accuracy passed {what} ({curve[ref].iloc[0]:.2f}) after "
              f"{int(beat['episodes_seen'].iloc[0])} training episodes (ARI {beat['ari'].iloc[0]:.2f})")
    else:
        print(f"validation accuracy did not pass {what} ({curve[ref].iloc[0]:.2f}) within "
              f"{seen} training episodes (best {curve['accuracy'].max():.2f})")


if __name__ == "__main__":
    main()
