"""Files generated from :data:`icc_utils.params.PARAMS` and the profiles, and the command that writes them.

* each notebook's ``parameters`` cell: the ``default`` profile's values of the parameters it declares, as
  plain literals (so a notebook run with no parameters, in Jupyter or by papermill, is the default run),
  and its check cell (``globals().update(P.validated("NN", globals()))``);
* ``notebooks/parameters/<profile>/<NN>.yml``: one file per profile and notebook holding exactly the
  notebook's parameters, for ``papermill notebooks/01_....ipynb out.ipynb -f notebooks/parameters/smoke/01.yml``
  (papermill warns about every passed key a notebook does not declare, so a whole profile will not do).

::

    python -m icc_utils.params_sync sync-notebooks [NN ...]   # rewrite the two cells (nbformat; no outputs)
    python -m icc_utils.params_sync sync-files                # rewrite notebooks/parameters/
    python -m icc_utils.params_sync check [NN ...]            # list what is out of sync (exit 1 if anything)
    python -m icc_utils.params_sync show NN [--profile P]     # print a notebook's parameter file
    python -m icc_utils.params_sync doc                       # the parameter table (markdown)
"""
from __future__ import annotations

import ast
import json
import math
from pathlib import Path
from typing import Any, Sequence

import yaml

from . import NOTEBOOKS_DIR
from .params import NOTEBOOKS, PARAMS, declared
from .profiles import available_profiles, load_profile

PARAMETERS_DIR = NOTEBOOKS_DIR / "parameters"
PARAMETERS_HEADER = ("# Notebook parameters: the default profile's values (notebooks/profiles/default.yml), written by\n"
                     "# python -m icc_utils.params_sync sync-notebooks; other profiles: python -m icc_utils.run --profile NAME")

__all__ = ["literal", "parameters_source", "check_source", "cell_values", "notebook_cells", "sync_notebook",
           "parameter_file_text", "sync_files", "out_of_sync", "main"]


# ---------------------------------------------------------------- notebook cells

def literal(value: Any) -> str:
    """``value`` as a Python literal (strings in double quotes)."""
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float) and not math.isfinite(value):
        return f'float("{value}")'
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{literal(k)}: {literal(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no literal for {value!r} ({type(value).__name__})")


def parameters_source(notebook: str, values: dict | None = None) -> str:
    """The ``parameters`` cell of ``notebook``: each declared parameter's value (default profile) and doc."""
    values = values if values is not None else load_profile("default")
    lines = [PARAMETERS_HEADER]
    for name in declared(notebook):
        value = literal(values[name])
        if "=" in value or "#" in value or "=" in PARAMS[name].doc:  # papermill reads one "=" per line, no "#" in values
            raise ValueError(f"{name}: papermill cannot read a parameter line whose value ({value}) holds '=' or '#' "
                             f"or whose doc ({PARAMS[name].doc!r}) holds '='")
        lines.append(f"{name} = {value}  # {PARAMS[name].doc}")
    return "\n".join(lines)


def check_source(notebook: str) -> str:
    """The check cell of ``notebook`` (the code cell right after its parameters cell)."""
    return (f"{NOTEBOOKS[notebook].imports}\n\n"
            f'globals().update(P.validated("{notebook}", globals()))  # checks every parameter (icc_utils/params.py)')


def cell_values(source: str) -> dict:
    """The ``name = literal`` assignments of a parameters cell, evaluated (``ast.literal_eval``)."""
    out = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                out[node.targets[0].id] = ast.unparse(node.value)   # not a literal: kept as text, never equal
    return out


def notebook_path(notebook: str, notebooks_dir: str | Path | None = None) -> Path:
    return Path(notebooks_dir or NOTEBOOKS_DIR) / NOTEBOOKS[notebook].file


def notebook_cells(nb) -> tuple[int, int]:
    """Indices of a notebook's ``parameters`` cell and of its check cell (the next code cell)."""
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    if len(tagged) != 1:
        raise ValueError(f"a notebook needs exactly one cell tagged 'parameters', found {len(tagged)}")
    following = [i for i in range(tagged[0] + 1, len(nb.cells)) if nb.cells[i].cell_type == "code"]
    if not following:
        raise ValueError("no code cell after the parameters cell (the check cell)")
    return tagged[0], following[0]


def sync_notebook(notebook: str, notebooks_dir: str | Path | None = None, write: bool = True) -> list[str]:
    """Rewrite the parameters and check cells of ``notebook`` (``"01"``); returns the cells that changed."""
    import nbformat

    path = notebook_path(notebook, notebooks_dir)
    nb = nbformat.read(path, as_version=4)
    p, c = notebook_cells(nb)
    changed = []
    for i, source, what in ((p, parameters_source(notebook), "parameters"), (c, check_source(notebook), "check")):
        cell = nb.cells[i]
        if cell.source != source or cell.get("outputs") or cell.get("execution_count") is not None:
            cell.source, cell.outputs, cell.execution_count = source, [], None
            changed.append(f"{path.name}: {what} cell")
    if changed and write:
        nbformat.write(nb, path)
    return changed


# ---------------------------------------------------------------- parameter files for papermill -f

def parameter_file_text(profile: str, notebook: str) -> str:
    """``notebooks/parameters/<profile>/<NN>.yml``: the profile's values of the notebook's parameters."""
    values = load_profile(profile)
    params = {name: values[name] for name in declared(notebook)}
    header = (f"# {profile} profile, parameters of notebook {NOTEBOOKS[notebook].file}; written by "
              f"python -m icc_utils.params_sync sync-files\n# from notebooks/profiles/{profile}.yml (edit that file). Use: "
              f"papermill notebooks/{NOTEBOOKS[notebook].file} out.ipynb -f notebooks/parameters/{profile}/{notebook}.yml\n")
    body = "".join(yaml.safe_dump({k: v}, default_flow_style=False if not isinstance(v, (list, dict)) else None,
                                   width=120, allow_unicode=True) for k, v in params.items())
    return header + body


def expected_files(profiles: Sequence[str] | None = None) -> dict[str, str]:
    """Relative path (``<profile>/<NN>.yml``) -> text, for every profile and notebook."""
    profiles = profiles if profiles is not None else available_profiles()
    return {f"{p}/{nb}.yml": parameter_file_text(p, nb) for p in profiles for nb in NOTEBOOKS}


def sync_files(out_dir: str | Path | None = None, write: bool = True) -> list[str]:
    """Write every parameter file and remove stale ones; returns the files written or removed."""
    out_dir = Path(out_dir or PARAMETERS_DIR)
    expected = expected_files()
    changed = []
    for rel, text in expected.items():
        path = out_dir / rel
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            changed.append(f"notebooks/parameters/{rel}")
            if write:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
    for path in sorted(out_dir.glob("*/*.yml")) if out_dir.is_dir() else []:
        rel = f"{path.parent.name}/{path.name}"
        if rel not in expected:
            changed.append(f"notebooks/parameters/{rel} (stale)")
            if write:
                path.unlink()
    return changed


def out_of_sync(notebooks: Sequence[str] | None = None) -> list[str]:
    """What ``sync-notebooks`` (for ``notebooks``; default all) and ``sync-files`` would change."""
    notebooks = list(notebooks) if notebooks else list(NOTEBOOKS)
    problems = [c for nb in notebooks for c in sync_notebook(nb, write=False)]
    return problems + sync_files(write=False)


# ---------------------------------------------------------------- command line

def doc_table() -> str:
    """The parameter table as markdown: name, notebooks, what is allowed, default, meaning."""
    default = load_profile("default")
    rows = ["| parameter | notebooks | allowed | default | meaning |", "|---|---|---|---|---|"]
    for name, p in PARAMS.items():
        rows.append(f"| `{name}` | {' '.join(p.notebooks)} | {p.rule} | `{literal(default[name])}` | {p.doc} |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m icc_utils.params_sync", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    for name in ("sync-notebooks", "check"):
        s = sub.add_parser(name)
        s.add_argument("notebooks", nargs="*", metavar="NN", help=f"notebook numbers (default: all of {list(NOTEBOOKS)})")
    sub.add_parser("sync-files")
    show = sub.add_parser("show")
    show.add_argument("notebook", metavar="NN")
    show.add_argument("--profile", default="default")
    sub.add_parser("doc")
    args = ap.parse_args(argv)
    try:
        if args.command == "sync-notebooks":
            for nb in args.notebooks or list(NOTEBOOKS):
                for line in sync_notebook(nb) or [f"{NOTEBOOKS[nb].file}: unchanged"]:
                    print(line)
        elif args.command == "sync-files":
            print("\n".join(sync_files()) or "notebooks/parameters/: unchanged")
        elif args.command == "check":
            problems = out_of_sync(args.notebooks)
            print("\n".join(f"out of sync: {p}" for p in problems) or "in sync")
            return 1 if problems else 0
        elif args.command == "show":
            print(parameter_file_text(args.profile, args.notebook), end="")
        else:
            print(doc_table())
    except (ValueError, KeyError) as exc:
        print(f"error: {exc}")
        return 2
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
