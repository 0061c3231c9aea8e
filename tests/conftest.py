"""Shared pytest fixtures: tiny randomly initialised chat models and the embedded model.

The tiny models (see tests/tiny_models.py) are built once per test session under pytest's
temporary directory; they are seeded, so every session builds the same weights and tokenizers.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # so tests can `import tiny_models`

try:  # the study targets a 2-core CPU; keep torch from oversubscribing it
    import torch

    torch.set_num_threads(2)
except ImportError:  # pragma: no cover
    pass


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A tiny Llama-3-style chat model directory (BOS, byte-level BPE, Llama-3.1 chat template)."""
    from tiny_models import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama") / "model")


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory) -> Path:
    """A tiny Qwen2.5-style chat model directory (no BOS, digits split, ChatML template)."""
    from tiny_models import make_tiny_qwen2

    return make_tiny_qwen2(tmp_path_factory.mktemp("tiny-qwen2") / "model")


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    """The embedded SmolLM2-135M-Instruct as a transformers directory (converted on first use)."""
    from icc_utils.models import embedded_model_dir

    return embedded_model_dir()
