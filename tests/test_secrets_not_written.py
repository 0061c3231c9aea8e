"""No executed notebook or results file contains the value of an API key from the environment (issue 7).

Notebook 01 runs on the smoke profile with a fake ``OPENAI_API_KEY`` and ``OPENAI_BASE_URL`` pointing at
a stub OpenAI-compatible server on 127.0.0.1, so its GPT rows are really requested (with the key in the
Authorization header); then every file under ``results/smoke/`` and ``data/smoke/`` is searched for the
key's bytes. Runs last (files run in alphabetical order) because it adds GPT rows to the smoke tables.
"""
from __future__ import annotations

import pandas as pd
import pytest

from icc_utils import DATA_DIR, RESULTS_DIR
from icc_utils.runner import run_notebooks
from test_api import StubServer

PROFILE = "smoke"
FAKE_KEY = "sk-test-LEAK-CANARY-7f3a9c1e5b2d4f6a8c0e"


@pytest.fixture(scope="module")
def run_with_key():
    server = StubServer()
    mp = pytest.MonkeyPatch()
    mp.setenv("OPENAI_API_KEY", FAKE_KEY)
    mp.setenv("OPENAI_BASE_URL", server.base_url)
    try:
        run_notebooks(PROFILE, only=["01"], progress_bar=False)
    finally:
        mp.undo()
        server.close()
    return server


def test_the_key_was_used(run_with_key):
    auth = [r["headers"].get("authorization", "") for r in run_with_key.requests]
    assert auth and all(a == f"Bearer {FAKE_KEY}" for a in auth)
    rows = pd.read_csv(RESULTS_DIR / PROFILE / "01" / "fig2_episodes.csv")
    assert rows["model"].astype(str).str.contains("gpt-4o").any()


def test_no_written_file_contains_the_key(run_with_key):
    needle = FAKE_KEY.encode()
    files = [p for root in (RESULTS_DIR / PROFILE, DATA_DIR / PROFILE) for p in root.rglob("*") if p.is_file()]
    assert len(files) > 20
    leaks = [str(p) for p in files if needle in p.read_bytes()]
    assert leaks == []
