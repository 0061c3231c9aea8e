"""The reproduction report: the claims table (:mod:`icc_utils.claims`) for one profile's results, as a CSV
row set and as ``REPORT.md`` with links to every figure. Verdicts come from :mod:`icc_utils.verdicts`."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .claims import CLAIM_FUNCTIONS, CLAIMS, COLUMNS, claim_row
from .io import atomic_write_text
from .verdicts import MIN_N, VERDICTS


def claims_table(results_root: Path, z: float = 2.0, claims: list[str] | None = None) -> pd.DataFrame:
    """The claims (default: all, C1-C8) for one profile's results folder (``results/<profile>``), one row each.

    A claim whose files cannot be read (empty, a column missing) is "not testable" with the error as reason.
    """
    rows = []
    for claim in claims or list(CLAIMS):
        try:
            rows.append(CLAIM_FUNCTIONS[claim](Path(results_root), z))
        except (KeyError, ValueError, IndexError, pd.errors.EmptyDataError) as exc:
            rows.append(claim_row(claim, Path(results_root), reason=f"results unreadable: {type(exc).__name__}: {exc}"))
    return pd.DataFrame(rows, columns=COLUMNS)


VERDICT_RULE = (
    "Each claim is one or more differences in the direction the paper claims, paired over the same episodes, "
    "with standard errors (std ddof=1 / sqrt(n)). **reproduced**: every difference is at least z = {z:g} standard "
    "errors in the paper's direction; **contradicted**: one is at least z standard errors the other way; "
    "**inconclusive**: otherwise; **not testable at this profile**: results missing, fewer than {n} episodes, or "
    "the claim presupposes a model that clusters (ARI above 0 by z standard errors) and ours does not. C1, a claim "
    "of no effect, is an equivalence test: ARI within ±0.05 of 0 by two one-sided tests. The rule of each claim "
    "is in the docstring of its function in `icc_utils/claims.py`; the definitions are in docs/protocol.md.")


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub Markdown table of ``df`` (``|`` escaped, newlines flattened)."""
    def cell(value) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(cell, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def figure_links(folder: Path) -> dict[str, list[str]]:
    """Every PNG under ``folder`` (training checkpoints excluded) as a path relative to it, grouped by notebook folder."""
    folder = Path(folder)
    groups: dict[str, list[str]] = {}
    for p in sorted(folder.rglob("*.png")):
        rel = p.relative_to(folder)
        if "checkpoints" in rel.parts or any(s.startswith(".") for s in rel.parts):
            continue
        groups.setdefault(rel.parts[0] if len(rel.parts) > 1 else ".", []).append(rel.as_posix())
    return groups


def write_report(df: pd.DataFrame, path: Path, profile: str, z: float = 2.0) -> Path:
    """Write ``REPORT.md`` (title, verdict rule, claims table, links to every figure) atomically; returns the path."""
    path = Path(path)
    shown = df.assign(our_figure=[f"[{Path(f).name}]({f})" if f else "" for f in df["our_figure"]])
    counts = df["verdict"].value_counts()
    lines = [
        f"# Reproduction report: In-Context Clustering with Large Language Models (profile `{profile}`)", "",
        "Verdict rule: " + VERDICT_RULE.format(z=z, n=MIN_N), "",
        "Counts: " + ", ".join(f"{v}: {int(counts.get(v, 0))}" for v in VERDICTS) + ".", "",
        "## Claims", "", markdown_table(shown), "",
        "## Figures", "",
    ]
    groups = figure_links(path.parent)
    for nb, files in groups.items():
        lines.append(f"### {nb}")
        lines += [f"- [{f}]({f})" for f in files] + [""]
    if not groups:
        lines.append("No figures under this profile's results folder.")
    return atomic_write_text(path, "\n".join(lines).rstrip() + "\n")
