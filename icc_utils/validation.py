"""The study's one validation system: checks that name the parameter and say what is allowed.

Each check raises :class:`ValueError` with ``<name>=<value> ... allowed ...`` and returns the
(normalised) value, so ``n = check_int("n_per_cell", n, 1)`` both checks and converts. Profiles,
notebooks, data generators, configs and estimators all use these.
"""
from __future__ import annotations

import math
import numbers
from typing import Sequence

__all__ = ["check_choice", "check_subset", "check_int", "check_number", "check_numbers", "check_length_range",
           "check_dtype", "check_models", "check_bool", "check_str"]


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




def check_bool(name: str, value) -> bool:
    """``value`` if it is True or False."""
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} is not allowed; it must be True or False")
    return value


def check_str(name: str, value, allow_empty: bool = False) -> str:
    """``value`` if it is a string (non-empty unless ``allow_empty``)."""
    if not isinstance(value, str) or (not value and not allow_empty):
        raise ValueError(f"{name}={value!r} is not allowed; it must be a{'' if allow_empty else ' non-empty'} string")
    return value


def check_positive(name: str, value, hi: float | None = None) -> float:
    """``value`` as a float if it is a finite real number (not a bool) > 0, and <= ``hi`` when given."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
    if not ok or value <= 0 or (hi is not None and value > hi):
        where = f"in (0, {hi}]" if hi is not None else "> 0"
        raise ValueError(f"{name}={value!r} is out of range; it must be a finite number {where}")
    return float(value)
