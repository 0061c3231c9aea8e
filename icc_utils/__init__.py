"""icc_utils: the thin, tested package behind the In-Context Clustering (ICC) study notebooks.

Modules by concern, in the order of the study: ``data`` (seeded episodes), ``prompts``, ``parsing``,
``metrics``; ``model_loading``, ``models``, ``backends`` and ``api`` (local, served and classical models),
``decoding``, ``batch_invariance`` and ``kernels`` (how local models generate and train), ``cache`` (model
replies), ``evaluate``; the subpackages ``attention`` (notebooks 02-03), ``finetune`` (04) and ``vision``
(05-06); ``publish`` (the adapters in ``models/``), ``verdicts``, ``claims`` and ``report`` (C1-C8);
``params``, ``validation`` and ``profiles`` (parameters), ``runner`` and ``runinfo`` (papermill runs);
``estimators`` (:class:`ICCClustering`; ``attention.AttentionSpectralClustering`` is the other scikit-learn
estimator);
``plots``. Paths are resolved from the package, never from the working directory.

Installed without the study's checkout (``pip install .``), the package still has the paper's
numbers (package data) and the estimators; caches then go to the user's cache folder
(:func:`cache_dir`). Importing the package imports neither torch nor transformers.
"""
from __future__ import annotations

import os
from pathlib import Path

__version__ = "0.1.0"

#: The installed package's folder (package data lives here).
PACKAGE_DIR: Path = Path(__file__).resolve().parent
#: Root of the study checkout (the folder holding ``icc_utils/`` and ``notebooks/``).
PROJECT_ROOT: Path = PACKAGE_DIR.parent
DATA_DIR: Path = PROJECT_ROOT / "data"
RESULTS_DIR: Path = PROJECT_ROOT / "results"
NOTEBOOKS_DIR: Path = PROJECT_ROOT / "notebooks"
#: The repository's limit for one committed file (published adapters and run outputs).
MAX_FILE_BYTES = 10_000_000
#: The parameter profiles: ``notebooks/profiles/`` in a checkout, a copy in the package (package data) otherwise.
PROFILES_DIR: Path = NOTEBOOKS_DIR / "profiles" if (NOTEBOOKS_DIR / "profiles").is_dir() else PACKAGE_DIR / "_profiles"
#: The paper's reported numbers, one row per table cell, shipped as package data.
PAPER_RESULTS_CSV: Path = PACKAGE_DIR / "paper_results.csv"
#: Where the study's published fine-tuned adapter (a PEFT folder: ``adapter_config.json`` +
#: ``adapter_model.safetensors``) is looked for, in order: inside the package (package data, so a
#: plain ``pip install .`` ships it), then ``models/icc-numeric/`` of a checkout.
ADAPTER_DIRS: tuple[Path, ...] = (PACKAGE_DIR / "adapters" / "icc-numeric", PROJECT_ROOT / "models" / "icc-numeric")

_LAZY = {"ICCClustering": "estimators"}


def in_checkout() -> bool:
    """Whether the package runs from the study's checkout (``PROJECT_ROOT`` holds ``notebooks/``)."""
    return (PROJECT_ROOT / "notebooks").is_dir()


def cache_dir() -> Path:
    """Folder for converted models, reply caches of the estimators and other re-creatable artefacts.

    ``ICC_CACHE_DIR`` if set; else ``<PROJECT_ROOT>/.cache`` in the study's checkout; else (an
    installed package) the user's cache folder: ``$XDG_CACHE_HOME/icc-study``, by default
    ``~/.cache/icc-study``. Never inside site-packages.
    """
    if os.environ.get("ICC_CACHE_DIR"):
        path = Path(os.environ["ICC_CACHE_DIR"])
    elif in_checkout():
        path = PROJECT_ROOT / ".cache"
    else:
        path = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "icc-study"
    return path.expanduser().resolve()


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


def __getattr__(name: str):
    """``from icc_utils import ICCClustering`` without importing scikit-learn at package import."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
