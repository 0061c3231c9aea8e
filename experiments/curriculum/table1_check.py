"""Does an adapter trained outside notebook 04 beat k-means at df 1 on Table 1's own test episodes?

``experiments/finetune-budget/finetune_budget.py`` reads its learning curve on validation episodes (the ``val`` seed split). This
script scores finished adapters once on the test episodes of Table 1's setting, the same ones notebook 04 scores
(the default profile's ``t1_*`` cells of notebook 00's t test set, c=3, d=3, 15 episodes per df as the default
profile then had (``WHEN_RUN``; these are now development episodes, before the verdict block of ``verdict_start``);
regenerated here from their seeds, so notebook 00 need not have run), with k-means and answering one label for every
point beside. Greedy free decoding in the paper's answer format, the profile's dtype and batch size. Nothing here
is tuned on these episodes: run it on adapters whose training and stopping were decided on the validation curve.

Writes ``table1_episodes.csv`` (one row per model and episode; a rerun skips models already there) and
``table1_summary.csv`` (mean and standard error per model and df) under ``--out``. Prints the summary, then last,
per adapter: its accuracy at df=1 against k-means' (the target) and its mean over the df against one label's.

    .venv/bin/python experiments/curriculum/table1_check.py \\
        --adapter curriculum-s3=experiments/curriculum/c3d3-curriculum-s3/adapter \\
        --adapter curriculum-s2=experiments/curriculum/c3d3-curriculum-s2/adapter \\
        --out experiments/curriculum/c3d3-curriculum-s3/table1
    .venv/bin/python experiments/curriculum/table1_check.py --adapter curriculum=experiments/curriculum/notebook-run/04/adapter \\
        --n-per-df 30 --out experiments/curriculum-seed1/table1-n30
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "finetune-probes"))

from probes import parse_adapters  # noqa: E402  (puts the repository on sys.path)

from icc_utils import data as D, profiles as P  # noqa: E402
from icc_utils import evaluate as E  # noqa: E402
from icc_utils.cache import ReplyCache  # noqa: E402
from icc_utils.io import write_csv  # noqa: E402
from icc_utils.metrics import summarize  # noqa: E402
from icc_utils.models import get_backend  # noqa: E402


#: The default profile's Table 1 counts when this experiment ran (the profile has since moved on).
WHEN_RUN = {"t1_n_per_cell": 15, "test_n_per_cell": 30}


def table1_episodes(params: dict, dfs: list[float] | None = None, n_per_df: int | None = None) -> list:
    """Notebook 04's Table 1 episodes of the default profile as it was (``WHEN_RUN``): the first ``n_per_df``
    (default 15) of each notebook-00 cell, so a larger ``n_per_df`` adds the cell's later test episodes."""
    params = {**params, **WHEN_RUN}
    dfs = [float(x) for x in (dfs or params["t1_dfs"])]
    grid = D.make_grid("t", [params["t1_n_clusters"]], [params["t1_dim"]], dfs, params["test_n_per_cell"],
                       params["seed"], "test", tuple(params["length_range"]))
    return D.select(grid, distribution="t", n_clusters=params["t1_n_clusters"], dim=params["t1_dim"], df=dfs,
                    n_per_cell=n_per_df or params["t1_n_per_cell"])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR", required=True,
                    help="an adapter to score (repeatable)")
    ap.add_argument("--dfs", type=float, nargs="+", help="Table 1's dfs to score (default: all of t1_dfs)")
    ap.add_argument("--n-per-df", type=int, help="test episodes per df (default 15, as notebook 04 then scored; at most "
                    "30, the development episodes)")
    ap.add_argument("--out", required=True, help="output folder")
    args = ap.parse_args(argv)
    params = {**P.load_profile("default"), **WHEN_RUN}
    for df in args.dfs or []:
        if df not in [float(x) for x in params["t1_dfs"]]:
            raise SystemExit(f"--dfs: {df:g} is not allowed; Table 1's dfs are {params['t1_dfs']}")
    if args.n_per_df is not None and not 1 <= args.n_per_df <= params["test_n_per_cell"]:
        raise SystemExit(f"--n-per-df: {args.n_per_df} is not allowed; it must be between 1 and test_n_per_cell "
                         f"({params['test_n_per_cell']})")
    adapters = parse_adapters(args.adapter)[1:]   # the pretrained model's Table 1 is notebook 04's zero-shot row
    episodes = table1_episodes(params, args.dfs, args.n_per_df)
    out = Path(args.out)
    path = out / "table1_episodes.csv"
    if not path.exists():
        write_csv(path, pd.concat([E.evaluate(get_backend("kmeans"), episodes, "default"), E.one_label_rows(episodes)],
                                  ignore_index=True))
    rows = pd.read_csv(path)
    dtype = P.check_dtype("dtype", params["dtype"])
    for name, adapter in adapters:
        if name in set(rows["model"].astype(str)):
            continue
        backend = get_backend(params["model"], adapter=adapter, dtype=dtype, batch_size=params["batch_size"])
        preds = backend.predict(episodes, cache=ReplyCache(out / f"replies_{name}.jsonl"), desc=name)
        rows = pd.concat([rows, E.score_predictions(episodes, preds, name, "finetuned")], ignore_index=True)
        write_csv(path, rows)
    rows = pd.read_csv(path)   # the rows as saved: a rerun that scores nothing new writes the same summary
    summary = summarize(rows, ["model", "method", "df"], metrics=("accuracy", "ari", "well_formed"))
    write_csv(out / "table1_summary.csv", summary)
    print(summary.round(3).to_string(index=False))
    acc = summary.pivot_table(index="df", columns="model", values="accuracy")
    df1 = acc.index.min()
    for name, _ in adapters:
        verdict = "beats" if acc.loc[df1, name] > acc.loc[df1, "kmeans"] else "does not beat"
        print(f"{name}: df={df1:g} {acc.loc[df1, name]:.3f} {verdict} k-means {acc.loc[df1, 'kmeans']:.3f} "
              f"(one label {acc.loc[df1, 'one label']:.3f}); mean over df {acc[name].mean():.3f} vs one label "
              f"{acc['one label'].mean():.3f}, k-means {acc['kmeans'].mean():.3f} ({len(episodes)} test episodes)")


if __name__ == "__main__":
    main()
