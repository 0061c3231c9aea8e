"""Do the points inform their labels? The pairing probe on fine-tuned adapters.

Greedy accuracy cannot tell a model that is starting to cluster from one that answers one label for
every point until its answer flips. This probe can: for each model (the pretrained embedded model and
every ``--adapter``) it scores the true answers of held-out validation episodes (``val`` seed split)
under teacher forcing, once with the true prompt and once with the points shuffled
(:func:`probes.pairing_gain`), and reports the gain in NLL per point. About 0: the model
answers from the label sequence alone; clearly above 0 (several standard errors): the points inform
their labels.

One row per model in ``--out`` (written as each is scored; a rerun skips those already there): the
mean gain with its standard error over episodes, per df, and the NLL per point. Prints the table,
then last: the largest gain in standard errors.

    .venv/bin/python experiments/finetune-probes/pairing_probe.py \\
        --adapter 4800=experiments/finetune-budget/budget-c2d1/adapter \\
        --clusters 2 --dims 1 --eval-dfs 1 100 --out experiments/finetune-budget/budget-c2d1/pairing.csv

``--labels sign`` / ``sign-canonical`` scores the answers of a label-rule control instead
(:func:`icc_utils.data.rule_labelled`; see ``experiments/label-controls``); ``--answer-format indexed``
scores every model in that ablation's format (for adapters trained with ``--recipe indexed``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from probes import add_probe_args, pairing_gain, probe_setup  # noqa: E402  (puts the repository on sys.path)

from icc_utils.io import write_csv  # noqa: E402
from icc_utils.models import get_backend  # noqa: E402
from icc_utils.prompts import ANSWER_FORMATS  # noqa: E402


def summary_row(name: str, table: pd.DataFrame) -> dict:
    """Mean gain and NLL, the gain's standard error over episodes, and the gain per df."""
    row = {"model": name, "n_episodes": len(table), "gain": table["gain"].mean(),
           "gain_se": table["gain"].std(ddof=1) / np.sqrt(len(table)), "nll_per_point": table["nll_per_point"].mean(),
           "nll_per_point_shuffled": table["nll_per_point_shuffled"].mean()}
    for df, g in table.groupby("df"):
        row[f"gain_df{df:g}"] = g["gain"].mean()
    return row


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
        table = pairing_gain(backend.model, backend.tokenizer, val, n_shuffles=args.shuffles, seed=params["seed"],
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
