"""What a profile run records beside its notebooks: RUNINFO.json's environment, the generated
``results/<profile>/README.md``, and executed notebooks without this machine's folders.

Used by :mod:`icc_utils.runner`; every function takes its paths as arguments, so it can be tested on a
temporary folder.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Mapping

from . import MAX_FILE_BYTES, PROJECT_ROOT, cache_dir
from .io import atomic_write_text

__all__ = ["environment_info", "read_runinfo", "display_path", "machine_paths", "scrub_paths", "portable_notebook",
           "rerun_command", "readme_text", "write_readme", "publishable_files"]


# ---------------------------------------------------------------- environment

def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _memory_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _torch_info() -> dict:
    """torch's thread count as set in this process (OMP_NUM_THREADS or torch's default), the dtype ``auto``
    resolves to, and the GPU; None where torch is missing."""
    env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    try:
        import torch

        from .models import resolve_dtype
    except ImportError:  # pragma: no cover - torch is a dependency
        return {"threads": {"torch": None, **env}, "auto_dtype": None, "gpu": None}
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"threads": {"torch": torch.get_num_threads(), **env}, "auto_dtype": resolve_dtype("auto"), "gpu": gpu}


def environment_info() -> dict:
    """Commit, machine, threads and library versions for RUNINFO.json."""
    from .model_loading import cpu_native_bf16   # what ``dtype: auto`` keys on (no torch import)

    commit = _git("rev-parse", "HEAD")
    # dirty = code, notebooks or profiles differ from the commit; results/ and data/ are what the run writes
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!results", ":!data")
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    torch_info = _torch_info()
    return {
        "commit": commit,
        "dirty": (bool(status) if status is not None else None) if commit else None,
        "machine": {"platform": platform.platform(), "processor": platform.machine(),
                    "cpu_model": _cpu_model(), "cpu_native_bf16": cpu_native_bf16(),
                    "cpu_count": os.cpu_count(), "cpus_usable": usable, "memory_gb": _memory_gb(),
                    "gpu": torch_info["gpu"]},
        "threads": torch_info["threads"],
        "auto_dtype": torch_info["auto_dtype"],
        "python": platform.python_version(),
        "versions": {d: _version(d) for d in ("torch", "transformers", "papermill", "numpy", "scikit-learn")},
    }


def read_runinfo(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, OSError):
        return {}


# ---------------------------------------------------------------- no machine paths

def display_path(path: str | Path) -> str:
    """A path relative to the project root when inside it (RUNINFO.json stays machine-independent)."""
    try:
        return str(Path(path).resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


def machine_paths() -> list[tuple[str, str]]:
    """(folder of this machine, what replaces it), longest first: the repository becomes relative,
    the Python installation ``<python>``, the cache ``<cache>``, the home folder ``~``."""
    pairs = []
    for root in {str(PROJECT_ROOT), os.path.realpath(PROJECT_ROOT)}:
        pairs += [(root + os.sep, ""), (root, ".")]
    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.realpath(sys.prefix)}:
        if not prefix.startswith(str(PROJECT_ROOT)):
            pairs.append((prefix, "<python>"))
    cache = str(cache_dir())
    if not cache.startswith(str(PROJECT_ROOT)):
        pairs.append((cache, "<cache>"))
    home = os.path.expanduser("~")
    if home not in ("/", "~") and len(home) > 1:
        pairs.append((home, "~"))
    return sorted(set(pairs), key=lambda p: -len(p[0]))


def scrub_paths(text: str, pairs: list[tuple[str, str]] | None = None) -> str:
    """``text`` with this machine's folders replaced (:func:`machine_paths`)."""
    for old, new in pairs if pairs is not None else machine_paths():
        if old in text:
            text = text.replace(old, new)
    return text


def _scrub(obj, pairs, key: str = ""):
    if isinstance(obj, str):
        return obj if key.startswith("image/") and key != "image/svg+xml" else scrub_paths(obj, pairs)
    if isinstance(obj, list):
        return [_scrub(v, pairs, key) for v in obj]
    if isinstance(obj, dict):
        return {k: _scrub(v, pairs, k) for k, v in obj.items()}
    return obj


def portable_notebook(executed: str | Path, source: str | Path) -> None:
    """Rewrite an executed notebook so it names no folder of this machine: papermill's ``input_path`` and
    ``output_path`` relative to the repository, and the machine's folders in sources and text outputs
    replaced (:func:`machine_paths`; images untouched)."""
    executed = Path(executed)
    nb = json.loads(executed.read_text(encoding="utf-8"))
    nb = _scrub(nb, machine_paths())
    pm = nb.setdefault("metadata", {}).setdefault("papermill", {})
    pm["input_path"], pm["output_path"] = display_path(source), display_path(executed)
    atomic_write_text(executed, json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------- results/<profile>/README.md

def rerun_command(info: Mapping) -> str:
    """The command that repeats a run: profile, the notebooks selected, the overrides."""
    parts = ["python -m icc_utils.run", f"--profile {info.get('profile')}"]
    if info.get("only"):
        parts.append("--only " + " ".join(name[:2] for name in info.get("selected") or info["only"]))
    for key, value in (info.get("overrides") or {}).items():
        parts.append(f"-p {key} {_yaml_arg(value)}")
    return " ".join(parts)


def _yaml_arg(value) -> str:
    """A ``-p`` value that the runner reads back (as YAML) as ``value``, quoted for a POSIX shell."""
    import shlex

    import yaml

    text = value if isinstance(value, str) else json.dumps(value)
    try:
        same = yaml.safe_load(text) == value
    except yaml.YAMLError:
        same = False
    return shlex.quote(text if same else json.dumps(value))


def _dtypes(info: Mapping) -> str:
    found: dict[str, set] = {}
    for entry in (info.get("notebooks") or {}).values():
        for key in ("dtype", "vlm_dtype"):
            if key in (entry.get("parameters") or {}):
                found.setdefault(key, set()).add(str(entry["parameters"][key]))
    auto = info.get("auto_dtype")
    parts = [f"`{k}={'/'.join(sorted(v))}`" + (f" (auto = {auto} on this machine)" if "auto" in v and auto else "")
             for k, v in found.items()]
    return ", ".join(parts) or "n/a"


def readme_text(info: Mapping, folder: str) -> str:
    """A short README for a results folder, from its RUNINFO."""
    m, threads = info.get("machine") or {}, info.get("threads") or {}
    total = info.get("total_seconds")
    rows = ["| notebook | status | minutes | commit |", "|---|---|---|---|"]
    for name, e in (info.get("notebooks") or {}).items():
        minutes = f"{e['seconds'] / 60:.1f}" if e.get("seconds") is not None else "-"
        rows.append(f"| [{name}]({name}) | {e.get('status')} | {minutes} | {(e.get('commit') or '-')[:12]} |")
    omp = threads.get("OMP_NUM_THREADS")
    machine = (f"{m.get('cpu_model') or m.get('processor') or 'unknown CPU'}, {m.get('cpus_usable')} of "
               f"{m.get('cpu_count')} CPUs, {m.get('memory_gb')} GB" + (f", GPU {m['gpu']}" if m.get("gpu") else "")
               + f"; torch threads {threads.get('torch')}" + (f" (OMP_NUM_THREADS={omp})" if omp else ""))
    versions = ", ".join(f"{k} {v}" for k, v in (info.get("versions") or {}).items() if v)
    commit = info.get("commit")
    lines = [
        f"# {folder}", "",
        "Written by `python -m icc_utils.run` from `RUNINFO.json` at the end of every run; do not edit.", "",
        f"- **What ran**: profile `{info.get('profile')}` (`notebooks/profiles/{info.get('profile')}.yml`)"
        + (f" with overrides `{json.dumps(info.get('overrides'))}`" if info.get("overrides") else "")
        + f"; status **{info.get('status')}**",
        f"- **When**: {info.get('started')} to {info.get('finished') or '(running)'}"
        + (f", {total / 60:.1f} min in all" if total is not None else ""),
        f"- **Commit**: {commit[:12] if commit else 'unknown'}" + (" (uncommitted changes)" if info.get("dirty") else "")
        + ("; notebooks kept from earlier runs show their own commit below" if any(
            (e.get("commit") or commit) != commit for e in (info.get("notebooks") or {}).values()) else ""),
        f"- **Machine**: {machine}",
        f"- **dtype**: {_dtypes(info)}",
        f"- **Software**: Python {info.get('python')}; {versions}", "",
        *rows, "",
        "Rerun (add `--resume` to keep the notebooks a killed or failed run finished on the same commit):", "",
        f"    {rerun_command(info)}", "",
    ]
    return "\n".join(lines)


def write_readme(out_dir: str | Path, info: Mapping) -> Path:
    """Write ``<out_dir>/README.md`` from ``info``."""
    path = Path(out_dir) / "README.md"
    atomic_write_text(path, readme_text(info, display_path(out_dir)))
    return path


# ---------------------------------------------------------------- what `make publish` stages

#: Readable outputs a published run keeps; replies, checkpoints, adapters and model copies stay out.
PUBLISH_SUFFIXES = (".ipynb", ".png", ".csv", ".md", ".json", ".npz")
_NOT_PUBLISHED_DIRS = ("replies", "checkpoints", "models")
_NOT_PUBLISHED_NAMES = ("special_tokens_map.json", "vocab.json")
_RUN_FILES = ("RUNINFO.json", "README.md")   # rewritten at the end of every invocation


def _prefix(notebook: str) -> str:
    """``"04"`` for ``04_lora_finetune_numeric.ipynb``: the name of the notebook's output folder."""
    return notebook.split("_", 1)[0]


def _owner(rel: Path) -> str:
    """The notebook prefix (``"04"``) whose run wrote ``rel`` (relative to the run folder), '' for run files."""
    if len(rel.parts) > 1:
        return rel.parts[0]
    if rel.name == "REPORT.md":
        return "07"
    return _prefix(rel.name) if rel.suffix == ".ipynb" else ""


def _timestamp(iso: str | None) -> float:
    from datetime import datetime
    return datetime.fromisoformat(iso).timestamp() if iso else float("inf")


def publishable_files(out_dir: str | Path, info: Mapping | None = None,
                      max_bytes: int = MAX_FILE_BYTES) -> tuple[list[Path], list[Path]]:
    """(fresh, stale) readable outputs under a run folder. Fresh: written by a notebook that RUNINFO records as
    ``ok`` on the run's commit, after that notebook started. Stale: anything else (left by an earlier run, or
    by a notebook that this run did not finish), which a publish must not mix in."""
    out_dir = Path(out_dir)
    info = read_runinfo(out_dir / "RUNINFO.json") if info is None else info
    started = {_prefix(name): _timestamp(e.get("started")) for name, e in info.get("notebooks", {}).items()
               if e.get("status") == "ok" and e.get("commit") == info.get("commit")}
    fresh, stale = [], []
    for path in sorted(out_dir.rglob("*")):
        rel = path.relative_to(out_dir)
        if (not path.is_file() or path.suffix not in PUBLISH_SUFFIXES or path.stat().st_size >= max_bytes
                or any(d in _NOT_PUBLISHED_DIRS or d.startswith("adapter") for d in rel.parts[:-1])
                or path.name.startswith("tokenizer") or path.name in _NOT_PUBLISHED_NAMES):
            continue
        owner = _owner(rel)
        if owner:
            ok = path.stat().st_mtime >= started.get(owner, float("inf"))
        else:
            ok = rel.name in _RUN_FILES and bool(info)
        (fresh if ok else stale).append(path)
    return fresh, stale


def main(argv: list[str] | None = None) -> None:
    """``python -m icc_utils.runinfo publishable results/<profile>``: the run's fresh outputs, NUL-separated on
    stdout (for ``xargs -0 git add -f``); the stale ones are listed on stderr and left out."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "publishable":
        raise SystemExit("usage: python -m icc_utils.runinfo publishable results/<profile>")
    out_dir = Path(args[1])
    if not (out_dir / "RUNINFO.json").is_file():
        raise SystemExit(f"{out_dir / 'RUNINFO.json'} missing: run make reproduce first")
    fresh, stale = publishable_files(out_dir)
    for path in stale:
        print(f"left out (not written by this run): {path}", file=sys.stderr)
    sys.stdout.write("".join(f"{p}\0" for p in fresh))


if __name__ == "__main__":
    main()
