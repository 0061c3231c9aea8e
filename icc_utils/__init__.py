"""icc_utils: the thin, tested package behind the In-Context Clustering (ICC) study notebooks.

One module per concern: ``data`` (seeded episodes), ``prompts``, ``parsing``, ``metrics``,
``cache`` (model replies), ``models`` (local, OpenAI-compatible and classical backends),
``profiles`` (parameter files and validation), ``plots``, ``evaluate`` and ``runner``.
Paths are resolved from the package, never from the working directory.
"""
from __future__ import annotations

import os
from pathlib import Path

__version__ = "0.1.0"

#: Root of the study checkout (the folder holding ``icc_utils/`` and ``notebooks/``).
PROJECT_ROOT: Path = Path(__file__).resolve().parent.parent
DATA_DIR: Path = PROJECT_ROOT / "data"
RESULTS_DIR: Path = PROJECT_ROOT / "results"
NOTEBOOKS_DIR: Path = PROJECT_ROOT / "notebooks"
PROFILES_DIR: Path = NOTEBOOKS_DIR / "profiles"
#: The paper's reported numbers (a copy of ``shared/paper/reported_results.csv``).
PAPER_RESULTS_CSV: Path = DATA_DIR / "paper" / "reported_results.csv"


def cache_dir() -> Path:
    """Folder for converted models and other re-creatable artefacts.

    Defaults to ``<PROJECT_ROOT>/.cache``; set ``ICC_CACHE_DIR`` to move it.
    """
    return Path(os.environ.get("ICC_CACHE_DIR") or PROJECT_ROOT / ".cache").expanduser().resolve()


def results_dir(profile: str, *parts: str) -> Path:
    """``results/<profile>/<parts...>``, created if missing."""
    path = RESULTS_DIR.joinpath(profile, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir(profile: str) -> Path:
    """``data/<profile>/``, created if missing."""
    path = DATA_DIR / profile
    path.mkdir(parents=True, exist_ok=True)
    return path
