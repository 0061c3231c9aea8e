"""Do the points inform their labels? The pairing probe on fine-tuned adapters (issue 4).

Greedy accuracy cannot tell a model that is starting to cluster from one that answers one label for
every point until its answer flips. This probe can: for each model (the pretrained embedded model and
every ``--adapter``) it scores the true answers of held-out validation episodes (``val`` seed split)
under teacher forcing, once with the true prompt and once with the points shuffled
(:func:`icc_utils.finetune.pairing_gain`), and reports the gain in NLL per point. About 0: the model
answers from the label sequence alone; clearly above 0 (several standard errors): the points inform
their labels.

One row per model in ``--out`` (written as each is scored; a rerun skips those already there): the
mean gain with its standard error over episodes, per df, and the NLL per point. Prints the table,
then last: the largest gain in standard errors.

    python benchmarks/pairing_probe.py --adapter 480=results/budget-c2d1/adapter ... \\
        --clusters 2 --dims 1 --eval-dfs 1 100 --out results/budget-c2d1/pairing.csv

``--labels sign`` / ``sign-canonical`` scores the answers of a label-rule control instead
(:func:`icc_utils.data.rule_labelled`; see ``benchmarks/finetune_budget.py``); ``--answer-format indexed``
scores every model in that ablation's format (for adapters trained with ``--recipe indexed``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from icc_utils import data as D, finetune as F  # noqa: E402
from icc_utils.io import write_csv  # noqa: E402
from icc_utils.models import get_backend  # noqa: E402
from icc_utils.profiles import load_profile  # noqa: E402
from icc_utils.prompts import ANSWER_FORMATS  # noqa: E402


def summary_row(name: str, table: pd.DataFrame) -> dict:
    """Mean gain and NLL, the gain's standard error over episodes, and the gain per df."""
    row = {"model": name, "n_episodes": len(table), "gain": table["gain"].mean(),
           "gain_se": table["gain"].std(ddof=1) / np.sqrt(len(table)), "nll_per_point": table["nll_per_point"].mean(),
           "nll_per_point_shuffled": table["nll_per_point_shuffled"].mean()}
    for df, g in table.groupby("df"):
        row[f"gain_df{df:g}"] = g["gain"].mean()
    return row


def parse_adapters(specs: list[str]) -> list[tuple[str, str | None]]:
    """``("pretrained", None)`` then one ``(name, dir)`` per ``--adapter NAME=DIR``; a clear error for a bad one."""
    models = [("pretrained", None)]
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not (Path(path) / "adapter_config.json").exists():
            raise SystemExit(f"--adapter={spec!r} is not allowed; it must be NAME=DIR with DIR holding a PEFT "
                             "adapter (adapter_config.json)")
        models.append((name, path))
    return models


def add_probe_args(ap: argparse.ArgumentParser) -> None:
    """The options every teacher-forced probe shares: the adapters, the validation setting, the label rule."""
    ap.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR",
                    help="an adapter to probe (repeatable); the pretrained model is always probed")
    ap.add_argument("--clusters", type=int, default=3)
    ap.add_argument("--dims", type=int, default=3)
    ap.add_argument("--eval-dfs", type=float, nargs="+", default=[1.0])
    ap.add_argument("--eval-n", type=int, default=20, help="validation episodes per df")
    ap.add_argument("--labels", default="clusters", choices=D.LABEL_RULES, help="label rule of the episodes")
    ap.add_argument("--out", required=True, help="CSV path")


def probe_setup(args: argparse.Namespace) -> tuple[list, dict, list, Path]:
    """The models to probe (:func:`parse_adapters`), the default profile, the validation episodes of ``args``'
    setting (``val`` seed split) labelled by ``args.labels``, and the output path."""
    params = load_profile("default")
    val = [D.rule_labelled(ep, args.labels) for ep in
           D.validation_episodes(params["seed"], args.clusters, args.dims, args.eval_dfs, args.eval_n)]
    return parse_adapters(args.adapter), params, val, Path(args.out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_probe_args(ap)
    ap.add_argument("--shuffles", type=int, default=4, help="shuffled prompts per episode")
    ap.add_argument("--answer-format", default="paper", choices=ANSWER_FORMATS,
                    help="prompt and answer format of every model scored (indexed: the labelled ablation)")
    args = ap.parse_args(argv)
    models, params, val, out = probe_setup(args)
    rows = pd.read_csv(out).to_dict("records") if out.exists() else []
    done = {str(r["model"]) for r in rows}
    for name, adapter in models:
        if name in done:
            continue
        backend = get_backend(params["model"], adapter=adapter, dtype="float32")
        table = F.pairing_gain(backend.model, backend.tokenizer, val, n_shuffles=args.shuffles, seed=params["seed"],
                               answer_format=args.answer_format)
        rows.append(summary_row(name, table))
        write_csv(out, pd.DataFrame(rows))
        print(f"{name}: gain {rows[-1]['gain']:+.4f} ± {rows[-1]['gain_se']:.4f} nats/point", flush=True)
    table = pd.DataFrame(rows)
    print(table.round(4).to_string(index=False))
    z = table["gain"] / table["gain_se"]
    best = int(z.fillna(-np.inf).idxmax())   # one episode: no standard error
    print(f"largest pairing gain: {table.loc[best, 'model']} {table.loc[best, 'gain']:+.4f} nats/point "
          f"({z[best]:.1f} standard errors; c={args.clusters}, d={args.dims}, df={args.eval_dfs}, labels: {args.labels})")


if __name__ == "__main__":
    main()
