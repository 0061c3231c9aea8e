"""The paper's reported numbers (Tables 1-6), for putting beside ours.

``icc_utils/paper_results.csv`` (package data, so an installed package has it too): the numbers the paper
reports, one row per table cell, accuracy and standard error as fractions.
"""
from __future__ import annotations

from functools import lru_cache

import pandas as pd

from . import PAPER_RESULTS_CSV


@lru_cache(maxsize=1)
def _load() -> pd.DataFrame:
    """The CSV with ``n_clusters`` and ``dim`` as (nullable) integers: image rows leave ``dim`` empty,
    which would otherwise make it float and write ``d=1.0`` where our tables write ``d=1``."""
    return pd.read_csv(PAPER_RESULTS_CSV, dtype={"n_clusters": "Int64", "dim": "Int64"})


def paper_results(table: str | None = None, **filters) -> pd.DataFrame:
    """Rows of the paper's tables matching ``table`` (``"T1"``..``"T6"``) and column filters.

    A filter value may be a scalar or a list; numeric columns compare as numbers.
    """
    df = _load()
    if table is not None:
        df = df[df["table"] == table]
    for col, val in filters.items():
        if col not in df.columns:
            raise ValueError(f"{col!r} is not a column of the paper's results; columns: {list(df.columns)}")
        vals = val if isinstance(val, (list, tuple, set)) else [val]
        df = df[df[col].isin(vals)]
    return df.reset_index(drop=True)


def paper_value(table: str, **filters) -> tuple[float, float] | None:
    """(accuracy, stderr) of the single paper cell matching the filters, or None if there is none."""
    rows = paper_results(table, **filters)
    if len(rows) != 1:
        return None
    r = rows.iloc[0]
    return float(r["accuracy"]), (float(r["stderr"]) if pd.notna(r["stderr"]) else float("nan"))
