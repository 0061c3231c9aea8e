"""The package as a package: no import cycles, package data, where caches go without a checkout."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

import icc_utils

PACKAGE = Path(icc_utils.__file__).resolve().parent


def import_edges() -> dict[str, set[str]]:
    """Module -> the package modules it imports (``from .x import``, ``from . import x``, ``import icc_utils.x``,
    ``from icc_utils.x import``), at the top or inside functions alike."""
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    edges: dict[str, set[str]] = {}
    for path in PACKAGE.glob("*.py"):
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level == 1 or (node.level == 0 and (node.module or "").split(".")[0] == "icc_utils"):
                    parts = (node.module or "").split(".")
                    parts = parts[1:] if node.level == 0 else parts
                    if parts and parts[0]:
                        found.add(parts[0])
                    else:
                        found.update(a.name for a in node.names)
            elif isinstance(node, ast.Import):
                for a in node.names:
                    parts = a.name.split(".")
                    if parts[0] == "icc_utils" and len(parts) > 1:
                        found.add(parts[1])
        edges[path.stem] = {m for m in found if m in modules and m != path.stem}
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(edges.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                cycle = visit(n)
                if cycle:
                    return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state:
            cycle = visit(m)
            if cycle:
                return cycle
    return None


def test_the_import_check_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_package():
    edges = import_edges()
    assert "backends" in edges["api"] and "api" not in edges["backends"]
    assert find_cycle(edges) is None, f"import cycle: {' -> '.join(find_cycle(edges))}"


def test_the_papers_numbers_ship_inside_the_package():
    assert icc_utils.PAPER_RESULTS_CSV.parent == PACKAGE and icc_utils.PAPER_RESULTS_CSV.is_file()
    from icc_utils.paper import paper_results

    assert len(paper_results("T1")) > 0


def test_cache_dir_without_a_checkout_is_the_users_cache_folder(tmp_path, monkeypatch):
    site = tmp_path / "site-packages"           # an installed package: no notebooks/ beside it
    (site / "icc_utils").mkdir(parents=True)
    monkeypatch.setattr(icc_utils, "PROJECT_ROOT", site)
    monkeypatch.delenv("ICC_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert not icc_utils.in_checkout()
    assert icc_utils.cache_dir() == (tmp_path / "xdg" / "icc-study").resolve()
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert icc_utils.cache_dir() == (tmp_path / "home" / ".cache" / "icc-study").resolve()
    monkeypatch.setenv("ICC_CACHE_DIR", str(tmp_path / "mine"))   # still wins
    assert icc_utils.cache_dir() == (tmp_path / "mine").resolve()


def test_cache_dir_in_a_checkout(tmp_path, monkeypatch):
    (tmp_path / "notebooks").mkdir()
    monkeypatch.setattr(icc_utils, "PROJECT_ROOT", tmp_path)
    monkeypatch.delenv("ICC_CACHE_DIR", raising=False)
    assert icc_utils.in_checkout() and icc_utils.cache_dir() == (tmp_path / ".cache").resolve()


def test_lazy_export():
    from icc_utils import ICCClustering
    from icc_utils.estimators import ICCClustering as direct

    assert ICCClustering is direct and "ICCClustering" in dir(icc_utils)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        icc_utils.nope  # noqa: B018


@pytest.mark.slow
def test_a_plain_pip_install_ships_the_estimator_profiles_papers_numbers_and_adapter(tmp_path):
    """``pip install .`` (not editable) into a folder of its own: the package, imported from there and away from
    the checkout, finds its profiles, the paper's numbers and the published adapter as package data."""
    import subprocess
    import sys

    from icc_utils import PROJECT_ROOT

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(PROJECT_ROOT)], check=True, capture_output=True, text=True,
                   cwd=tmp_path)
    code = ("import icc_utils, json; from icc_utils import ICCClustering; "
            "from icc_utils.paper import paper_results; from icc_utils.profiles import load_profile; "
            "from icc_utils.estimators import resolve_adapter; "
            "print(json.dumps({'root': str(icc_utils.PACKAGE_DIR), 'checkout': icc_utils.in_checkout(), "
            "'t1': len(paper_results('T1')), 'seed': load_profile('default')['seed'], "
            "'adapter': str(resolve_adapter('default', 'embedded')), 'repr': repr(ICCClustering(n_clusters=4))}))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}).stdout
    got = json.loads(out.strip().splitlines()[-1])
    assert got["root"].startswith(str(target)) and not got["checkout"]
    assert got["t1"] > 0 and got["seed"] == 0 and "ICCClustering(n_clusters=4)" in got["repr"]
    assert got["adapter"].startswith(str(target)) and (Path(got["adapter"]) / "adapter_model.safetensors").is_file()
