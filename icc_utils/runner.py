"""Execute the numbered notebooks in order with papermill (what ``make reproduce`` calls).

Each notebook ``notebooks/NN_*.ipynb`` runs in the notebooks folder with the parameters of a
profile (:func:`icc_utils.profiles.parameters_for`) plus any overrides; the executed copy goes
to ``results/<profile>/<notebook>.ipynb``, rewritten to name no folder of this machine
(:func:`icc_utils.runinfo.portable_notebook`); ``results/<profile>/RUNINFO.json`` records the wall
time and status of every notebook (rewritten atomically after each one), and ``README.md`` says
what ran, where, and how to rerun it. The first failure stops the run with a message naming the
notebook and the cell.

All functions take the notebooks / results / profiles folders as arguments (package defaults
otherwise), so they can be tested on a temporary folder.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from . import NOTEBOOKS_DIR, RESULTS_DIR
from .io import write_json
from .profiles import ProfileError, check_profile, parameters_for, undeclared_keys
from .runinfo import display_path as _display_path
from .runinfo import environment_info, portable_notebook, read_runinfo, write_readme  # noqa: F401

NOTEBOOK_PATTERN = re.compile(r"^(\d{2})_.+\.ipynb$")
RUNINFO_NAME = "RUNINFO.json"


class NotebookFailed(RuntimeError):
    """A notebook raised: carries the notebook and, for an error in a cell, the cell's position."""

    def __init__(self, notebook: str, output: Path | None, cell_index: int | None = None,
                 exec_count: int | None = None, ename: str | None = None, evalue: str | None = None,
                 source: str | None = None, source_index: int | None = None):
        self.notebook = notebook
        self.source_index = source_index
        self.output = output
        self.cell_index = cell_index
        self.exec_count = exec_count
        self.ename = ename
        self.evalue = evalue
        self.source = source
        super().__init__(self.message())

    def message(self) -> str:
        where = f"notebook {self.notebook}"
        if self.cell_index is not None:
            where += f", cell index {self.cell_index} of the executed notebook (In [{self.exec_count}])"
            if self.source_index is not None and self.source_index != self.cell_index:
                where += f" = cell index {self.source_index} of the source notebook"
        lines = [f"FAILED: {where}", f"  {self.ename}: {self.evalue}"]
        if self.source:
            src = self.source.strip().splitlines()
            head = src[:6] + (["..."] if len(src) > 6 else [])
            lines.append("  cell source:")
            lines += [f"    | {line}" for line in head]
        if self.output is not None:
            lines.append(f"  executed notebook with the full traceback: {self.output}")
        return "\n".join(lines)


def _source_cell_index(source: Path, cell_index: int | None, injected: bool) -> int | None:
    """The failing cell's index in the source notebook.

    papermill's ``cell_index`` counts the cells it executed, which include the injected-parameters
    cell it inserts after the ``parameters`` cell (at the top if there is none; none if no parameters).
    """
    if cell_index is None or not injected:
        return cell_index
    try:
        import nbformat

        cells = nbformat.read(source, as_version=4).cells
    except Exception:  # pragma: no cover - the source notebook is unreadable
        return None
    tagged = [i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", [])]
    injected_at = tagged[0] + 1 if tagged else 0
    return cell_index - 1 if cell_index > injected_at else cell_index


# ---------------------------------------------------------------- finding notebooks

def find_notebooks(notebooks_dir: str | Path | None = None) -> list[Path]:
    """The numbered notebooks ``NN_*.ipynb`` of a folder, in order of their number (then name)."""
    d = Path(notebooks_dir) if notebooks_dir is not None else NOTEBOOKS_DIR
    found = [p for p in d.iterdir() if p.is_file() and NOTEBOOK_PATTERN.match(p.name)] if d.is_dir() else []
    return sorted(found, key=lambda p: (int(NOTEBOOK_PATTERN.match(p.name).group(1)), p.name))


def select_notebooks(notebooks: Sequence[Path], only: Sequence[str] | None) -> list[Path]:
    """Keep the notebooks named in ``only`` (a number such as ``01`` or ``1``, a name prefix, or a
    file name), in run order; an entry that matches nothing is an error listing the notebooks."""
    if not only:
        return list(notebooks)
    chosen: set[Path] = set()
    for sel in only:
        s = str(sel).strip()
        if s.endswith(".ipynb"):
            s = s[:-len(".ipynb")]
        if s.isdigit():
            s = f"{int(s):02d}"
            hits = [p for p in notebooks if NOTEBOOK_PATTERN.match(p.name).group(1) == s]
        else:
            hits = [p for p in notebooks if p.stem.startswith(s)]
        if not hits:
            raise ValueError(f"only={sel!r} matches no notebook; available: {[p.name for p in notebooks]}")
        chosen.update(hits)
    return [p for p in notebooks if p in chosen]


# ---------------------------------------------------------------- run information

def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _finished_prefix(plan, info: dict, env: dict, out_dir: Path) -> list[str]:
    """Names of the leading notebooks of ``plan`` that an earlier run finished exactly as they would run now.

    A notebook counts as finished when RUNINFO records it ``ok`` on this commit with a clean tree, the
    same parameters and the same notebook source, and its executed copy exists. The first notebook
    that is not finished ends the prefix: it and every later one run again (they may read its outputs).
    """
    if not env.get("commit") or env.get("dirty") is not False:
        return []
    done = []
    for nb, params in plan:
        entry = info.get("notebooks", {}).get(nb.name, {})
        if not (entry.get("commit") == env["commit"] and ran_as_now(entry, nb, params, out_dir)):
            break
        done.append(nb.name)
    return done


def ran_as_now(entry: Mapping, nb: Path, params: Mapping, out_dir: Path) -> bool:
    """Whether RUNINFO's ``entry`` records notebook ``nb`` finished ``ok`` from a clean tree with these
    ``params`` and its current source, its executed copy in ``out_dir`` (on whichever commit)."""
    return (entry.get("status") == "ok" and entry.get("dirty") is False and entry.get("parameters") == params
            and entry.get("source_sha256") == _sha256(nb) and (Path(out_dir) / nb.name).is_file())


# ---------------------------------------------------------------- running

def run_notebooks(profile: str, only: Sequence[str] | None = None, overrides: Mapping[str, Any] | None = None,
                  notebooks_dir: str | Path | None = None, results_root: str | Path | None = None,
                  profiles_dir: str | Path | None = None, kernel_name: str = "python3",
                  progress_bar: bool = True, log: Callable[[str], None] = print, resume: bool = False,
                  log_output: bool = False) -> dict:
    """Run the (selected) numbered notebooks in order; returns the RUNINFO dict.

    Everything is checked before the first notebook starts (profile, selection, override keys).
    On the first failure the run stops and :class:`NotebookFailed` is raised (RUNINFO.json
    already records the failure; later notebooks are not run).

    ``resume=True`` continues a run that was killed or failed: the leading notebooks that RUNINFO
    records as finished on this commit (clean tree, same parameters and notebook source) are kept,
    not rerun, and the run goes on from the first one that is not. RUNINFO then lists every
    invocation, and ``total_seconds`` is the time of the notebooks kept plus this invocation's
    (a notebook killed part-way and run again counts once, with its second run's time).

    ``log_output=True`` shows what the notebooks print (their progress bars included) as they run.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    notebooks_dir = Path(notebooks_dir) if notebooks_dir is not None else NOTEBOOKS_DIR
    results_root = Path(results_root) if results_root is not None else RESULTS_DIR
    check_profile(profile, profiles_dir)
    notebooks = find_notebooks(notebooks_dir)
    if not notebooks:
        raise ValueError(f"no numbered notebooks (NN_*.ipynb) in {notebooks_dir}")
    selected = select_notebooks(notebooks, only)
    overrides = dict(overrides or {})
    unknown = undeclared_keys(overrides, selected)
    if unknown:
        raise ValueError(f"override(s) {unknown} are not parameters of any selected notebook "
                         f"({[p.name for p in selected]})")
    plan = [(nb, parameters_for(nb, profile, overrides, profiles_dir)) for nb in selected]

    out_dir = results_root / profile
    out_dir.mkdir(parents=True, exist_ok=True)
    info_path = out_dir / RUNINFO_NAME
    info = read_runinfo(info_path)
    env = environment_info()
    kept = _finished_prefix(plan, info, env, out_dir) if resume else []
    kept_seconds = sum(info["notebooks"][name]["seconds"] for name in kept)
    invocations = info.get("invocations", []) if kept else []
    invocation = {"started": _now(), "finished": None, "seconds": None, "kept": kept}
    info.update(env)
    info.update({"profile": profile, "started": info.get("started") if kept else invocation["started"],
                 "finished": None, "status": "running", "selected": [nb.name for nb in selected],
                 "only": list(only) if only else None, "overrides": overrides, "invocations": invocations + [invocation]})
    info.setdefault("notebooks", {})
    write_json(info_path, info)
    if resume:
        log(f"resuming: keeping {len(kept)} finished notebook(s) {kept}" if kept else
            "resuming: no finished notebook on this commit (clean tree, same parameters) to keep; running all")

    total_start = time.perf_counter()

    def _close(status: str) -> None:
        finished = _now()
        invocation.update({"status": status, "finished": finished, "seconds": round(time.perf_counter() - total_start, 2)})
        info.update({"status": status, "finished": finished, "total_seconds": round(kept_seconds + invocation["seconds"], 2)})
        write_json(info_path, info)
        write_readme(out_dir, info)

    for i, (nb, params) in enumerate(plan, 1):
        if nb.name in kept:
            continue
        out_path = out_dir / nb.name
        log(f"[{i}/{len(plan)}] {nb.name} (profile={profile}) ...")
        entry = {"status": "running", "started": _now(), "seconds": None, "output": _display_path(out_path),
                 "parameters": params, "commit": env.get("commit"), "dirty": env.get("dirty"),
                 "source_sha256": _sha256(nb)}
        info["notebooks"][nb.name] = entry
        write_json(info_path, info)
        t0 = time.perf_counter()
        failure: NotebookFailed | None = None
        try:
            try:
                with _papermill_log(log_output):
                    papermill.execute_notebook(str(nb), str(out_path), parameters=params, kernel_name=kernel_name,
                                               cwd=str(notebooks_dir), progress_bar=progress_bar, log_output=log_output)
            finally:
                _make_portable(out_path, nb, log)
        except PapermillExecutionError as exc:
            failure = NotebookFailed(nb.name, out_path, exc.cell_index, exc.exec_count, exc.ename, exc.evalue,
                                     exc.source, _source_cell_index(nb, exc.cell_index, bool(params)))
        except KeyboardInterrupt:
            entry.update({"status": "interrupted", "seconds": round(time.perf_counter() - t0, 2), "finished": _now()})
            _close("interrupted")
            log(f"[{i}/{len(plan)}] {nb.name} interrupted; the partly executed notebook is at {out_path}")
            raise
        except Exception as exc:  # kernel died, bad notebook file, ...
            failure = NotebookFailed(nb.name, out_path if out_path.exists() else None,
                                     ename=type(exc).__name__, evalue=str(exc))
        seconds = round(time.perf_counter() - t0, 2)
        entry.update({"seconds": seconds, "finished": _now()})
        if failure is not None:
            entry.update({"status": "failed", "error": {"cell_index": failure.cell_index,
                                                        "source_cell_index": failure.source_index,
                                                        "exec_count": failure.exec_count,
                                                        "ename": failure.ename, "evalue": failure.evalue}})
            _close("failed")
            log(f"[{i}/{len(plan)}] {nb.name} FAILED after {seconds:.1f} s")
            raise failure
        entry["status"] = "ok"
        entry.pop("error", None)
        write_json(info_path, info)
        log(f"[{i}/{len(plan)}] {nb.name} done in {seconds:.1f} s -> {out_path}")
    _close("ok")
    log(f"all {len(plan)} notebook(s) ran in {info['total_seconds']:.1f} s"
        + (f" ({len(kept)} kept from an earlier invocation)" if kept else "") + f"; run information: {info_path}")
    return info


def _make_portable(executed: Path, source: Path, log: Callable[[str], None]) -> None:
    """:func:`~icc_utils.runinfo.portable_notebook`, never masking the run's own outcome."""
    if not executed.is_file():
        return
    try:
        portable_notebook(executed, source)
    except Exception as exc:  # noqa: BLE001 - a warning, not a failure of the run
        log(f"warning: could not remove this machine's folders from {executed}: {exc}")


class _Stderr(logging.Handler):
    """Writes to the current ``sys.stderr`` (which a notebook or a test may have replaced)."""

    def emit(self, record: logging.LogRecord) -> None:
        sys.stderr.write(self.format(record) + "\n")
        sys.stderr.flush()


@contextlib.contextmanager
def _papermill_log(enabled: bool):
    """While it lasts, papermill's log (with ``log_output``: what each cell prints) goes to stderr."""
    if not enabled:
        yield
        return
    logger, handler = logging.getLogger("papermill"), _Stderr()
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


# ---------------------------------------------------------------- command line

def _parse_value(text: str):
    """A ``-p`` value as YAML (``3`` -> int, ``0.5`` -> float, ``[a, b]`` -> list, ``true``), else the string."""
    from .profiles import load_yaml

    try:
        value = load_yaml(text)
    except ProfileError:
        return text
    return text if value is None and text.strip() not in ("null", "~", "None") else value


def build_parser():
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m icc_utils.run",
        description="Execute the numbered notebooks in order with papermill; executed notebooks and "
                    "RUNINFO.json go to results/<profile>/.")
    p.add_argument("--profile", default="default", help="parameter profile (notebooks/profiles/<name>.yml)")
    p.add_argument("--only", nargs="+", metavar="NN", help="run only these notebooks (number or name prefix)")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                   help="override one parameter (VALUE is read as YAML: 3, 0.5, [1, 2], true, text)")
    p.add_argument("--list", action="store_true", help="list the profiles and notebooks (with their parameters) and exit")
    p.add_argument("--no-progress", action="store_true", help="hide papermill's per-cell progress bar")
    p.add_argument("-v", "--log-output", action="store_true",
                   help="show what the notebooks print as they run (their own progress bars included)")
    p.add_argument("--resume", action="store_true",
                   help="continue a killed or failed run: keep the leading notebooks it finished on this commit "
                        "(clean tree, same parameters) and run the rest")
    return p


def main(argv: Sequence[str] | None = None, notebooks_dir: str | Path | None = None,
         results_root: str | Path | None = None, profiles_dir: str | Path | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 1 a notebook failed, 2 bad arguments or a
    broken profile, named with its file and line)."""
    from .profiles import available_profiles

    args = build_parser().parse_args(argv)
    overrides = {k: _parse_value(v) for k, v in args.parameter}
    try:
        check_profile(args.profile, profiles_dir)
        notebooks = find_notebooks(notebooks_dir)
        selected = select_notebooks(notebooks, args.only)
        if args.list:
            print(f"profiles: {available_profiles(profiles_dir)}")
            for nb in notebooks:
                mark = "*" if nb in selected else " "
                params = parameters_for(nb, args.profile, overrides, profiles_dir)
                print(f"{mark} {nb.name}  {params}")
            return 0
        run_notebooks(args.profile, args.only, overrides, notebooks_dir=notebooks_dir, results_root=results_root,
                      profiles_dir=profiles_dir, progress_bar=not args.no_progress, resume=args.resume,
                      log_output=args.log_output)
    except NotebookFailed as exc:
        print("\n" + exc.message(), file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr, flush=True)
        return 130
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0
