"""Where in the answer does the model lose track of which point it is labelling?

In the paper's answer format a label carries no index: to write label k the model must find the k-th
point of an unnumbered list. This probe scores, under teacher forcing (every earlier true label in
context), the model's most likely token at each label's place
(:func:`probes.label_position_table`), for the pretrained embedded model and every
``--adapter``, on held-out validation episodes (``val`` seed split), binned by the label's position.
Beside it, the same model's accuracy with the points shuffled and the answer kept (what the label
sequence alone gives it; ``gain`` is the difference) and the rate at which a label repeats its
predecessor. A model that finds each label's point gains at every position; one that keeps track only
for the first few labels gains in the first bins only.

Most useful with ``--labels sign`` (see ``experiments/label-controls``): each label can then be read
off its own point, so the only thing to get right is which point that is.

One row per (model, position bin) in ``--out`` (written as each model is scored; a rerun skips those
already there). Prints the table, then last: each model's accuracy and gain at positions 1-5 and 31-50.

    .venv/bin/python experiments/finetune-probes/position_probe.py --clusters 2 --dims 1 --eval-dfs 1 100 \\
        --labels sign --adapter default-1200=experiments/label-controls/control-sign/adapter \\
        --adapter updates-1200=experiments/label-controls/control-sign-updates/adapter \\
        --out experiments/label-controls/control-sign-updates/positions.csv
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from probes import add_probe_args, label_position_table, probe_setup  # noqa: E402  (puts the repository on sys.path)

from icc_utils.io import write_csv  # noqa: E402
from icc_utils.models import get_backend  # noqa: E402

BINS = [0, 5, 10, 20, 30, 50]   # label positions 1-5, 6-10, 11-20, 21-30, 31-50 (episodes have 10-50 points)


def binned(name: str, table: pd.DataFrame) -> pd.DataFrame:
    """Teacher-forced accuracy with the true and the shuffled points, their difference, and the repeat rate
    (of labels after the first) per position bin."""
    bins = pd.cut(table["position"], BINS, labels=[f"{a + 1}-{b}" for a, b in zip(BINS, BINS[1:])])
    rows = []
    for label, g in table.groupby(bins, observed=True):
        later = g[g["position"] > 1]
        rows.append({"model": name, "positions": str(label), "n_labels": len(g), "accuracy": g["right"].mean(),
                     "shuffled_accuracy": g["shuffled_right"].mean(),
                     "gain": g["right"].mean() - g["shuffled_right"].mean(),
                     "repeat_rate": later["repeat_right"].mean() if len(later) else float("nan"),
                     "not_a_number": (g["guess"] < 0).mean()})
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_probe_args(ap)
    models, params, val, out = probe_setup(ap.parse_args(argv))
    table = pd.read_csv(out) if out.exists() else pd.DataFrame(columns=["model"])
    for name, adapter in models:
        if name in set(table["model"].astype(str)):
            continue
        backend = get_backend(params["model"], adapter=adapter, dtype="float32")
        rows = binned(name, label_position_table(backend.model, backend.tokenizer, val, seed=params["seed"]))
        table = pd.concat([table, rows], ignore_index=True) if len(table) else rows
        write_csv(out, table)
        print(f"{name}: teacher-forced gain over shuffled points {rows['gain'].round(3).tolist()} by position bin",
              flush=True)
    print(table.round(3).to_string(index=False))
    for name, g in table.groupby("model", sort=False):
        first, last = g.iloc[0], g.iloc[-1]
        print(f"{name}: positions {first['positions']} {first['accuracy']:.3f} (gain {first['gain']:+.3f}), "
              f"{last['positions']} {last['accuracy']:.3f} (gain {last['gain']:+.3f})")


if __name__ == "__main__":
    main()
