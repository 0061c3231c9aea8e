"""Parameter profiles (``notebooks/profiles/<name>.yml``) and the validators every notebook's
first code cell uses.

A profile is a flat YAML mapping of notebook parameters. A notebook receives only the keys
that its ``parameters`` cell declares (:func:`parameters_for`), so one profile file serves
every notebook. Each validator raises :class:`ValueError` naming the parameter and the allowed
values or range, and returns the (normalised) value so a notebook can write
``n_episodes = check_int("n_episodes", n_episodes, 1)``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from . import PROFILES_DIR
from .validation import (check_choice, check_dtype, check_int, check_length_range, check_models,  # noqa: F401
                         check_number, check_numbers, check_subset)

__all__ = [
    "available_profiles", "load_profile", "profile_path",
    "check_profile", "check_choice", "check_subset", "check_int", "check_number", "check_numbers", "check_models",
    "check_length_range", "notebook_parameters", "parameters_for", "load_yaml", "undeclared_keys",
]


# ---------------------------------------------------------------- profiles

class _Loader(yaml.SafeLoader):
    """YAML 1.1 safe loader that also reads ``5e-4`` and ``1E6`` as floats (plain YAML 1.1 keeps them as text)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def load_yaml(text: str):
    """Parse YAML like the profiles are parsed (safe; ``5e-4`` is a float)."""
    return yaml.load(text, Loader=_Loader)


def _dir(profiles_dir: str | Path | None) -> Path:
    return Path(profiles_dir) if profiles_dir is not None else PROFILES_DIR


def available_profiles(profiles_dir: str | Path | None = None) -> list[str]:
    """Names of the profiles (``<name>.yml`` files in ``notebooks/profiles/``), sorted."""
    d = _dir(profiles_dir)
    if not d.is_dir():
        return []
    return sorted(p.stem for p in d.glob("*.yml") if not p.name.startswith("."))


def check_profile(profile, profiles_dir: str | Path | None = None) -> str:
    """``profile`` if it names a profile file; otherwise a ValueError listing the profiles."""
    names = available_profiles(profiles_dir)
    if not isinstance(profile, str) or profile not in names:
        raise ValueError(f"profile={profile!r} is not a known profile; available: {names}")
    return profile


def profile_path(name: str, profiles_dir: str | Path | None = None) -> Path:
    """Path of a profile file (the name is checked first)."""
    check_profile(name, profiles_dir)
    return _dir(profiles_dir) / f"{name}.yml"


def load_profile(name: str, profiles_dir: str | Path | None = None) -> dict:
    """The parameters of a profile as a flat dict (``profile`` is always set to ``name``)."""
    path = profile_path(name, profiles_dir)
    data = load_yaml(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a flat mapping of parameter names to values, got {type(data).__name__}")
    bad = [k for k in data if not isinstance(k, str) or not k.isidentifier()]
    if bad:
        raise ValueError(f"{path}: keys must be Python identifiers (notebook parameter names), got {bad}")
    nested = [k for k, v in data.items() if isinstance(v, dict)]
    if nested:
        raise ValueError(f"{path}: profiles are flat; the values of {nested} are mappings")
    if data.get("profile", name) != name:
        raise ValueError(f"{path}: profile={data['profile']!r} does not match the file name {name!r}")
    data["profile"] = name
    return data


# ---------------------------------------------------------------- notebooks

def notebook_parameters(path: str | Path) -> dict[str, dict]:
    """The parameters a notebook declares in its ``parameters`` cell (papermill's inspection):
    ``{name: {"name", "inferred_type_name", "default", "help"}}``."""
    import papermill

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    return papermill.inspect_notebook(str(path))


def parameters_for(notebook_path: str | Path, profile_name: str, overrides: Mapping[str, Any] | None = None,
                   profiles_dir: str | Path | None = None) -> dict:
    """What papermill passes to one notebook: the profile's keys that the notebook declares,
    then ``overrides`` (also only declared keys). Keys the notebook does not declare are left out."""
    profile = load_profile(profile_name, profiles_dir)
    declared = notebook_parameters(notebook_path)
    params = {k: v for k, v in profile.items() if k in declared}
    for k, v in (overrides or {}).items():
        if k in declared:
            params[k] = v
    return params


def undeclared_keys(keys: Iterable[str], notebook_paths: Iterable[str | Path]) -> list[str]:
    """The keys that none of the notebooks declares (used to reject a mistyped ``-p`` override)."""
    declared: set[str] = set()
    for p in notebook_paths:
        declared |= set(notebook_parameters(p))
    return sorted(k for k in keys if k not in declared)
