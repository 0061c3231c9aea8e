"""Parameter profiles: ``notebooks/profiles/<name>.yml``, read, checked and merged.

``default.yml`` holds every notebook parameter with its default value (the one source); every other
profile starts with ``extends: default`` and holds only what it changes. :func:`load_profile` returns
the merged, flat mapping. A profile that does not parse, repeats a key, or sets a key its base does not
have is a :class:`ProfileError` naming the file, the line and the key. The parameters themselves
(type, range, notebooks) are declared in :mod:`icc_utils.params`.

The ``check_*`` validators are re-exported from :mod:`icc_utils.validation` for older callers.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from . import PROFILES_DIR, PROJECT_ROOT
from .validation import (check_choice, check_dtype, check_int, check_length_range, check_models,  # noqa: F401
                         check_number, check_numbers, check_subset)

__all__ = [
    "ProfileError", "available_profiles", "load_profile", "profile_path", "read_profile_file", "profile_differences",
    "check_profile",
    "check_choice", "check_subset", "check_int", "check_number", "check_numbers", "check_models",
    "check_length_range", "notebook_parameters", "parameters_for", "load_yaml", "undeclared_keys",
]

#: The key naming the profile a profile starts from.
EXTENDS = "extends"


class ProfileError(ValueError):
    """A profile file that cannot be used: the message names the file, the line and what is wrong."""


# ---------------------------------------------------------------- YAML

class _Loader(yaml.SafeLoader):
    """YAML 1.1 safe loader that reads ``5e-4`` and ``1E6`` as floats (plain YAML 1.1 keeps them as text)
    and rejects a key repeated in one mapping (plain YAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {seen[key] + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def _display(path: str | Path) -> str:
    """``path`` relative to the project when inside it (messages name the file a user edits)."""
    try:
        return str(Path(path).resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


def load_yaml(text: str, source: str | Path | None = None):
    """Parse YAML like the profiles are parsed (safe; ``5e-4`` is a float; a repeated key is an error).

    A syntax error or a repeated key raises :class:`ProfileError` naming ``source`` (a file), line and column.
    """
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = _display(source) if source is not None else "<text>"
        if mark is not None:
            where += f", line {mark.line + 1}, column {mark.column + 1}"
        what = exc.problem if str(exc.problem).startswith("duplicate key") else f"YAML syntax error: {exc.problem}"
        if exc.context and not str(exc.problem).startswith("duplicate key"):
            what += f" ({exc.context})"
        raise ProfileError(f"{where}: {what}") from None
    except yaml.YAMLError as exc:  # pragma: no cover - errors without a position
        raise ProfileError(f"{_display(source) if source is not None else '<text>'}: {exc}") from None


def _key_lines(text: str) -> dict[str, int]:
    """Line number (1-based) of each top-level key of a mapping document."""
    node = yaml.compose(text, Loader=_Loader)
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {k.value: k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)}


# ---------------------------------------------------------------- profile files

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


def read_profile_file(name: str, profiles_dir: str | Path | None = None) -> tuple[dict, dict[str, int]]:
    """One profile file as written (its own keys, ``extends`` included) and the line of each key."""
    path = profile_path(name, profiles_dir)
    text = path.read_text(encoding="utf-8")
    data = load_yaml(text, source=path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ProfileError(f"{_display(path)} must hold a flat mapping of parameter names to values, "
                           f"got {type(data).__name__}")
    lines = _key_lines(text)
    for k, v in data.items():
        if not isinstance(k, str) or not k.isidentifier():
            raise ProfileError(f"{_display(path)}, line {lines.get(str(k), '?')}: key {k!r} is not a Python "
                               "identifier (keys are notebook parameter names)")
        if isinstance(v, dict):
            raise ProfileError(f"{_display(path)}, line {lines.get(k, '?')}: profiles are flat; the value of {k!r} "
                               "is a mapping")
    if data.get("profile", name) != name:
        raise ProfileError(f"{_display(path)}, line {lines.get('profile', '?')}: profile={data['profile']!r} does "
                           f"not match the file name {name!r}")
    return data, lines


def load_profile(name: str, profiles_dir: str | Path | None = None, _seen: tuple = ()) -> dict:
    """The parameters of a profile as a flat dict: its base's (``extends``), updated with its own.

    ``profile`` is always set to ``name``. A key the base does not have is an error (a typo would
    otherwise be ignored by every notebook)."""
    data, lines = read_profile_file(name, profiles_dir)
    base_name = data.pop(EXTENDS, None)
    if base_name is None:
        merged = data
    else:
        path = _display(profile_path(name, profiles_dir))
        if base_name not in available_profiles(profiles_dir):
            raise ProfileError(f"{path}, line {lines.get(EXTENDS, '?')}: {EXTENDS}={base_name!r} is not a known "
                               f"profile; available: {available_profiles(profiles_dir)}")
        if base_name in (*_seen, name):
            raise ProfileError(f"{path}: {EXTENDS} makes a cycle: {' -> '.join((*_seen, name, base_name))}")
        merged = load_profile(base_name, profiles_dir, (*_seen, name))
        unknown = [k for k in data if k not in merged]
        if unknown:
            raise ProfileError(f"{path}, line {lines.get(unknown[0], '?')}: {unknown[0]!r} is not a parameter of "
                               f"the base profile {base_name!r} (default.yml lists every parameter); "
                               f"unknown keys: {unknown}")
        merged.update(data)
    merged["profile"] = name
    return merged


def profile_differences(name: str, profiles_dir: str | Path | None = None) -> dict:
    """The keys a profile file sets itself (without ``extends`` and ``profile``)."""
    data, _ = read_profile_file(name, profiles_dir)
    return {k: v for k, v in data.items() if k not in (EXTENDS, "profile")}


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
