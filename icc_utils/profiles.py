"""Parameter profiles (``notebooks/profiles/<name>.yml``) and the validators every notebook's
first code cell uses.

A profile is a flat YAML mapping of notebook parameters. A notebook receives only the keys
that its ``parameters`` cell declares (:func:`parameters_for`), so one profile file serves
every notebook. Each validator raises :class:`ValueError` naming the parameter and the allowed
values or range, and returns the (normalised) value so a notebook can write
``n_episodes = check_int("n_episodes", n_episodes, 1)``.
"""
from __future__ import annotations

import math
import numbers
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from . import PROFILES_DIR

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


# ---------------------------------------------------------------- validators

def _is_allowed(value, allowed: list) -> bool:
    """``value in allowed``, but ``True`` is not ``1`` and ``2.0`` is not the integer ``2``."""
    for a in allowed:
        try:
            equal = bool(value == a)
        except Exception:  # noqa: BLE001 - odd types: not equal
            equal = False
        if not equal or isinstance(value, bool) != isinstance(a, bool):
            continue
        if isinstance(a, numbers.Integral) and not isinstance(value, numbers.Integral):
            continue
        return True
    return False


def check_dtype(name: str, value) -> str:
    """The weights dtype ``value`` resolved (``auto``: bfloat16 where this machine runs it natively,
    else float32; :func:`icc_utils.models.resolve_dtype`); a ValueError naming ``name`` otherwise."""
    from .models import DTYPE_CHOICES, resolve_dtype

    check_choice(name, value, DTYPE_CHOICES)
    resolved = resolve_dtype(value)
    if value == "auto":
        print(f"{name}=auto -> {resolved} on this machine")
    return resolved


def check_choice(name: str, value, allowed: Sequence):
    """``value`` if it is one of ``allowed``."""
    allowed = list(allowed)
    if not _is_allowed(value, allowed):
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {allowed}")
    return value


def check_subset(name: str, values, allowed: Sequence) -> list:
    """``values`` as a list if it is a list (or tuple) whose every element is in ``allowed``."""
    allowed = list(allowed)
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        raise ValueError(f"{name}={values!r} must be a list of values from {allowed}")
    bad = [v for v in values if not _is_allowed(v, allowed)]
    if bad:
        raise ValueError(f"{name}={list(values)!r} has values that are not allowed: {bad}; "
                         f"each element must be one of {allowed}")
    return list(values)


def _range_text(lo, hi) -> str:
    if lo is not None and hi is not None:
        return f"in [{lo}, {hi}]"
    if lo is not None:
        return f">= {lo}"
    if hi is not None:
        return f"<= {hi}"
    return "any value"


def check_int(name: str, value, lo: int, hi: int | None = None) -> int:
    """``value`` as an int if it is an integer (not a bool) in ``[lo, hi]`` (``hi=None``: no upper bound)."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ok and (value < lo or (hi is not None and value > hi)):
        ok = False
    if not ok:
        raise ValueError(f"{name}={value!r} is out of range; it must be an integer {_range_text(lo, hi)}")
    return int(value)


def check_number(name: str, value, lo: float | None = None, hi: float | None = None) -> float:
    """``value`` as a float if it is a real number (not a bool, not NaN) in ``[lo, hi]``.

    ``float('inf')`` is accepted when no upper bound forbids it (e.g. ``df=inf`` means Gaussian).
    """
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(float(value))
    if ok and ((lo is not None and value < lo) or (hi is not None and value > hi)):
        ok = False
    if not ok:
        raise ValueError(f"{name}={value!r} is out of range; it must be a number {_range_text(lo, hi)}")
    return float(value)


def check_numbers(name: str, values, lo: float | None = None, hi: float | None = None) -> list[float]:
    """``values`` as a list of floats if it is a list (or tuple) of real numbers, each in ``[lo, hi]``."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        raise ValueError(f"{name}={values!r} must be a list of numbers {_range_text(lo, hi)}")
    return [check_number(f"{name}[{i}]", v, lo, hi) for i, v in enumerate(values)]


def check_models(name: str, values) -> list[str]:
    """``values`` as a list of model names, each known to :func:`icc_utils.models.model_kind`."""
    from .models import model_kind

    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        raise ValueError(f"{name}={values!r} must be a list of model names, e.g. ['embedded', 'kmeans']")
    out = []
    for v in values:
        if not isinstance(v, str):
            raise ValueError(f"{name}: {v!r} is not a model name (a string)")
        try:
            model_kind(v)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
        out.append(v)
    return out


def check_length_range(name: str, value) -> tuple[int, int]:
    """``value`` as ``(lo, hi)`` if it is a pair of integers with ``1 <= lo <= hi``."""
    ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value)
    if ok:
        lo, hi = int(value[0]), int(value[1])
        ok = 1 <= lo <= hi
    if not ok:
        raise ValueError(f"{name}={value!r} is out of range; it must be [lo, hi], two integers with 1 <= lo <= hi")
    return lo, hi


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
