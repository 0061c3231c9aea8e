"""The tiny Llama fixture of ``tests/`` for the probes' tests (``pytest experiments/finetune-probes``)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1] / "tests")]   # probes.py; tests/tiny_models.py


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A tiny Llama-3-style chat model directory (the same as ``tests/conftest.py``'s)."""
    from tiny_models import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama") / "model")
