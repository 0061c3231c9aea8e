"""The study's one validation system: checks that name the parameter and say what is allowed.

Each check raises :class:`ValueError` with ``<name>=<value> ... allowed ...`` and returns the
(normalised) value, so ``n = check_int("n_per_cell", n, 1)`` both checks and converts. Profiles,
notebooks, data generators, configs and estimators all use these.

The constraint classes at the end (:class:`Int`, :class:`Ints`, :class:`Models`, ...) wrap the checks
for declarative tables such as :data:`icc_utils.params.PARAMS`: ``Ints(2, 10)("dims", [2, 3])``.
"""
from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Sequence

__all__ = ["Constraint", "Int", "Num", "Bool", "Text", "Choice", "Ints", "Nums", "Strs", "Subset", "LengthRange", "Dtype",
           "Model", "Models", "Adapter", "Check",
           "check_choice", "check_subset", "check_int", "check_ints", "check_number", "check_numbers",
           "check_length_range", "check_dtype", "check_models", "check_model", "check_model_folder", "check_adapter",
           "check_bool", "check_str", "check_strs", "list_from_text"]


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


def _range_text(lo, hi, lo_open: bool = False) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo}, {hi}]"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f"<= {hi}"
    return "any value"


def list_from_text(name: str, value, example: str = "[1, 2]"):
    """``value`` unchanged unless it is text, which is read as YAML and must give a list.

    ``papermill -p fig2_dfs "[1, 2]"`` passes the text ``"[1, 2]"``: it is accepted as the list it spells;
    any other text is an error saying how to pass a list (``-y``).
    """
    if not isinstance(value, str):
        return value
    import yaml

    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        parsed = None
    if isinstance(parsed, list):
        return parsed
    raise ValueError(f"{name}={value!r} is text, not a list; pass a list with papermill -y \"{name}: {example}\" "
                     f"(or -p {name} \"{example}\", which is read as YAML)")


def check_ints(name: str, values, lo: int, hi: int | None = None, nonempty: bool = False) -> list[int]:
    """``values`` as a list of ints if it is a list (or tuple) of integers, each in ``[lo, hi]``."""
    what = f"a {'non-empty ' if nonempty else ''}list of integers {_range_text(lo, hi)}"
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)) or (nonempty and not values):
        raise ValueError(f"{name}={values!r} is not allowed; it must be {what}")
    bad = [v for v in values if not (isinstance(v, numbers.Integral) and not isinstance(v, bool)
                                     and v >= lo and (hi is None or v <= hi))]
    if bad:
        raise ValueError(f"{name}={list(values)!r} has values that are not allowed: {bad}; it must be {what}")
    return [int(v) for v in values]


def check_int(name: str, value, lo: int, hi: int | None = None) -> int:
    """``value`` as an int if it is an integer (not a bool) in ``[lo, hi]`` (``hi=None``: no upper bound)."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ok and (value < lo or (hi is not None and value > hi)):
        ok = False
    if not ok:
        raise ValueError(f"{name}={value!r} is out of range; it must be an integer {_range_text(lo, hi)}")
    return int(value)


def check_number(name: str, value, lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> float:
    """``value`` as a float if it is a real number (not a bool, not NaN) in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``).

    ``float('inf')`` is accepted when no upper bound forbids it (e.g. ``df=inf`` means Gaussian).
    """
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(float(value))
    if ok and ((lo is not None and (value <= lo if lo_open else value < lo)) or (hi is not None and value > hi)):
        ok = False
    if not ok:
        raise ValueError(f"{name}={value!r} is out of range; it must be a number {_range_text(lo, hi, lo_open)}")
    return float(value)


def check_numbers(name: str, values, lo: float | None = None, hi: float | None = None,
                  nonempty: bool = False) -> list[float]:
    """``values`` as a list of floats if it is a list (or tuple) of real numbers, each in ``[lo, hi]``."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)) or (nonempty and not values):
        raise ValueError(f"{name}={values!r} must be a {'non-empty ' if nonempty else ''}list of numbers "
                         f"{_range_text(lo, hi)}")
    return [check_number(f"{name}[{i}]", v, lo, hi) for i, v in enumerate(values)]


def check_strs(name: str, values, nonempty: bool = False) -> list[str]:
    """``values`` as a list if it is a list (or tuple) of non-empty strings (and not empty, with ``nonempty``)."""
    ok = (not isinstance(values, (str, bytes)) and isinstance(values, (list, tuple)) and (values or not nonempty)
          and all(isinstance(v, str) and v for v in values))
    if not ok:
        raise ValueError(f"{name}={values!r} is not allowed; it must be a {'non-empty ' if nonempty else ''}"
                         "list of non-empty strings")
    return list(values)


def check_model_folder(name: str, value: str, path: str | Path | None = None) -> str:
    """``value`` if it is not an existing folder, or a folder holding a model (``config.json``).

    ``path`` is where the folder is (default: ``value`` itself, relative to the working directory,
    as :func:`icc_utils.models.model_kind` reads it)."""
    folder = Path(path if path is not None else value).expanduser()
    if folder.is_dir() and not (folder / "config.json").is_file():
        what = "is empty" if not any(folder.iterdir()) else "has no config.json"
        raise ValueError(f"{name}={value!r}: the folder {folder.resolve()} {what}, so it is not a model folder; "
                         "give a folder holding a transformers model (config.json and weights), a hub id, or 'embedded'")
    return value


def check_model(name: str, value, kinds: Sequence[str] | None = None, why: str = "") -> str:
    """``value`` if it is a model name known to :func:`icc_utils.models.model_kind` (of one of ``kinds``)
    and, given as a folder, a model folder (:func:`check_model_folder`)."""
    from .models import model_kind

    if not isinstance(value, str) or not value:
        raise ValueError(f"{name}={value!r} is not a model name (a non-empty string), e.g. 'embedded'")
    try:
        kind = model_kind(value)
    except ValueError as exc:
        where = Path(value).expanduser()
        missing = f" (there is no folder {where.resolve()})" if value.startswith(("/", ".", "~")) else ""
        raise ValueError(f"{name}: {exc}{missing}") from None
    if kinds is not None and kind not in kinds:
        raise ValueError(f"{name}={value!r} is a {kind} model, not allowed here{': ' + why if why else ''}")
    return check_model_folder(name, value)


def check_models(name: str, values) -> list[str]:
    """``values`` as a list of model names, each known to :func:`icc_utils.models.model_kind` (folders: model folders)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        raise ValueError(f"{name}={values!r} must be a list of model names, e.g. ['embedded', 'kmeans']")
    out = []
    for v in values:
        if not isinstance(v, str):
            raise ValueError(f"{name}: {v!r} is not a model name (a string)")
        out.append(check_model(name, v))
    return out


def check_adapter(name: str, value, root: str | Path) -> str | None:
    """The folder of a PEFT adapter (``adapter_config.json`` inside): a published adapter's name
    (``root/models/<name>``) or a folder relative to ``root``; None for ``''`` (the pretrained model)."""
    if not isinstance(value, str):
        raise ValueError(f"{name}={value!r} must be a string: a published adapter's name (models/<name>), a PEFT "
                         "adapter folder, or '' for the pretrained model")
    if not value:
        return None
    published = Path(root) / "models" / value
    folder = published if "/" not in value and published.is_dir() else (Path(root) / Path(value).expanduser()).resolve()
    if not (folder / "adapter_config.json").is_file():
        names = sorted(p.parent.name for p in (Path(root) / "models").glob("*/adapter_config.json"))
        raise ValueError(f"{name}={value!r} is neither a published adapter (models/<name>; published: {names or 'none'}) "
                         f"nor a PEFT adapter folder (no adapter_config.json in {folder}); use '' for the pretrained model")
    return str(folder)


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


# ---------------------------------------------------------------- declarative constraints
# A constraint is called as ``c(name, value)``: it raises a ValueError naming ``name`` and what is allowed,
# or returns the value (unchanged, except where a class says it normalises). ``str(c)`` says what it allows.
# List constraints also take text that reads (as YAML) as a list: ``papermill -p dims "[1, 2]"`` passes text.

class Constraint:
    """Base class: subclasses implement ``check(name, value)`` and ``__str__``."""

    def __call__(self, name: str, value):
        return self.check(name, value)

    def check(self, name: str, value):  # pragma: no cover - abstract
        raise NotImplementedError


class Int(Constraint):
    """An integer in ``[lo, hi]`` (``hi=None``: no upper bound); ``optional``: ``None`` allowed too."""

    def __init__(self, lo: int = 0, hi: int | None = None, optional: bool = False):
        self.lo, self.hi, self.optional = lo, hi, optional

    def check(self, name, value):
        if value is None and self.optional:
            return None
        check_int(name, value, self.lo, self.hi)
        return value

    def __str__(self):
        return f"{'null or ' if self.optional else ''}an integer {_range_text(self.lo, self.hi)}"


class Num(Constraint):
    """A real number in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``); ``to_float``: returned as a float."""

    def __init__(self, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
                 to_float: bool = False):
        self.lo, self.hi, self.lo_open, self.to_float = lo, hi, lo_open, to_float

    def check(self, name, value):
        number = check_number(name, value, self.lo, self.hi, self.lo_open)
        return number if self.to_float else value

    def __str__(self):
        return f"a number {_range_text(self.lo, self.hi, self.lo_open)}"


class Bool(Constraint):
    def check(self, name, value):
        return check_bool(name, value)

    def __str__(self):
        return "true or false"


class Text(Constraint):
    """A string (``''`` allowed with ``allow_empty``)."""

    def __init__(self, allow_empty: bool = True):
        self.allow_empty = allow_empty

    def check(self, name, value):
        return check_str(name, value, self.allow_empty)

    def __str__(self):
        return "a string" + (" ('' allowed)" if self.allow_empty else "")


class Choice(Constraint):
    """One of ``values``; or of the constant ``attr`` of ``module``, imported when checked."""

    def __init__(self, values: Sequence = (), module: str | None = None, attr: str | None = None):
        self._values, self.module, self.attr = tuple(values), module, attr

    @property
    def values(self) -> list:
        if self.module:
            import importlib

            return list(getattr(importlib.import_module(self.module), self.attr))
        return list(self._values)

    def check(self, name, value):
        return check_choice(name, value, self.values)

    def __str__(self):
        return f"one of {self.values}"


class _List(Constraint):
    example = "[1, 2]"

    def check(self, name, value):
        value = list_from_text(name, value, self.example)
        self.check_list(name, value)
        return value


class Ints(_List):
    """A list of integers, each in ``[lo, hi]``; ``nonempty``: at least one."""

    def __init__(self, lo: int, hi: int | None = None, nonempty: bool = False):
        self.lo, self.hi, self.nonempty = lo, hi, nonempty

    def check_list(self, name, value):
        check_ints(name, value, self.lo, self.hi, self.nonempty)

    def __str__(self):
        return f"a {'non-empty ' if self.nonempty else ''}list of integers {_range_text(self.lo, self.hi)}"


class Nums(_List):
    """A list of real numbers, each ``>= lo``; ``nonempty``: at least one."""

    def __init__(self, lo: float | None = None, nonempty: bool = False):
        self.lo, self.nonempty = lo, nonempty

    def check_list(self, name, value):
        check_numbers(name, value, lo=self.lo, nonempty=self.nonempty)

    def __str__(self):
        return f"a {'non-empty ' if self.nonempty else ''}list of numbers {_range_text(self.lo, None)}"


class Strs(_List):
    """A list of non-empty strings; ``nonempty``: at least one."""
    example = "[a, b]"

    def __init__(self, nonempty: bool = False):
        self.nonempty = nonempty

    def check_list(self, name, value):
        check_strs(name, value, self.nonempty)

    def __str__(self):
        return f"a {'non-empty ' if self.nonempty else ''}list of strings"


class Subset(_List):
    """A list whose every element is one of ``allowed``."""

    def __init__(self, allowed: Sequence, example: str = "[1, 2]"):
        self.allowed, self.example = list(allowed), example

    def check_list(self, name, value):
        check_subset(name, value, self.allowed)

    def __str__(self):
        return f"a list of values from {self.allowed}"


class LengthRange(_List):
    example = "[10, 50]"

    def check_list(self, name, value):
        check_length_range(name, value)

    def __str__(self):
        return "[lo, hi]: two integers with 1 <= lo <= hi"


class Dtype(Constraint):
    """A weights dtype; normalises ``auto`` to what this machine runs natively (:func:`check_dtype`)."""

    def check(self, name, value):
        return check_dtype(name, value)

    def __str__(self):
        from .models import DTYPE_CHOICES

        return f"one of {list(DTYPE_CHOICES)} (auto: bfloat16 where the machine runs it natively, else float32)"


class Model(Constraint):
    """A model name (:func:`check_model`), of one of ``kinds`` if given."""

    def __init__(self, kinds: Sequence[str] | None = None, why: str = ""):
        self.kinds, self.why = (tuple(kinds) if kinds else None), why

    def check(self, name, value):
        return check_model(name, value, self.kinds, self.why)

    def __str__(self):
        kinds = f"a {'/'.join(self.kinds)} model" if self.kinds else "a model"
        return f"{kinds}: a name known to icc_utils.models, a hub id or a model folder (config.json)"


class Models(_List):
    example = "[embedded, kmeans]"

    def check_list(self, name, value):
        check_models(name, value)

    def __str__(self):
        return "a list of model names (local, OpenAI-compatible or classical), e.g. [embedded, kmeans]"


class Adapter(Constraint):
    """``''`` or a PEFT adapter folder, relative to ``root`` (:func:`check_adapter`); the value is kept as given."""

    def __init__(self, root: str | Path):
        self.root = root

    def check(self, name, value):
        check_adapter(name, value, self.root)
        return value

    def __str__(self):
        return ("'' (the pretrained model), a published adapter's name (models/<name>) or a PEFT adapter folder "
                "(adapter_config.json), relative to the repository")


class Check(Constraint):
    """Any other rule: ``fn(name, value)`` raises a ValueError, or returns None (the value is kept) or a new value."""

    def __init__(self, fn, text: str, example: str | None = None):
        self.fn, self.text, self.example = fn, text, example

    def check(self, name, value):
        if self.example is not None:
            value = list_from_text(name, value, self.example)
        out = self.fn(name, value)
        return value if out is None else out

    def __str__(self):
        return self.text
