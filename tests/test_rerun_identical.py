"""A second run of the smoke profile gives byte-identical CSV tables (issue 7), model replies regenerated.

Runs after the notebook tests (files run in alphabetical order): notebooks 00, 01 and 07 run once if
their tables are missing, their tables are read as bytes, the embedded model's reply cache is moved
away so that every reply is generated again, the notebooks run a second time, and every CSV must be
byte for byte the same.
"""
from __future__ import annotations

import shutil

import pytest

from icc_utils import DATA_DIR, RESULTS_DIR
from icc_utils.runner import run_notebooks

PROFILE = "smoke"
NOTEBOOKS = ["00", "01", "07"]
FOLDERS = ["01", "07"]


def _tables() -> dict[str, bytes]:
    files = [p for f in FOLDERS for p in sorted((RESULTS_DIR / PROFILE / f).glob("*.csv"))]
    files.append(DATA_DIR / PROFILE / "manifest.json")
    return {str(p.relative_to(RESULTS_DIR.parent)): p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    if not all(any((RESULTS_DIR / PROFILE / f).glob("*.csv")) for f in FOLDERS):  # e.g. this file run alone
        run_notebooks(PROFILE, only=NOTEBOOKS, progress_bar=False)
    first = _tables()
    replies = RESULTS_DIR / PROFILE / "replies" / "SmolLM2-135M-Instruct.jsonl"
    if replies.exists():  # regenerate every reply of the embedded model, not just re-read them
        shutil.move(replies, tmp_path_factory.mktemp("old-replies") / replies.name)
    run_notebooks(PROFILE, only=NOTEBOOKS, progress_bar=False)
    return first, _tables(), replies


def test_second_run_writes_byte_identical_tables(two_runs):
    first, second, replies = two_runs
    assert replies.exists()                       # the replies were generated again
    assert len(first) >= 5 and set(first) == set(second)
    changed = sorted(name for name in first if first[name] != second[name])
    assert changed == [], f"tables that differ between two runs: {changed}"
