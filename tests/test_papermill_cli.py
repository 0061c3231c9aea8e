"""Notebook 01's first cells run with the papermill command line, as a user would run them (no runner):
no parameters gives the default profile, ``-f notebooks/parameters/<profile>/01.yml`` gives a profile without
unknown-parameter warnings, and a list passed with ``-p`` as text is read or refused with a message saying how."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import nbformat
import pytest

from icc_utils import NOTEBOOKS_DIR, PROJECT_ROOT
from icc_utils import params as P
from icc_utils.params_sync import PARAMETERS_DIR, notebook_cells
from icc_utils.profiles import load_profile

REPORT = ('import json\nfrom pathlib import Path\n'
          'Path("seen.json").write_text(json.dumps({k: globals()[k] for k in ["profile", "fig2_dfs", "n_per_cell", "dtype"]}))')


@pytest.fixture(scope="module")
def head_of_01(tmp_path_factory):
    """Notebook 01 up to its check cell, then a cell writing what the check cell left in the namespace."""
    folder = tmp_path_factory.mktemp("nb01")
    nb = nbformat.read(NOTEBOOKS_DIR / P.NOTEBOOKS["01"].file, as_version=4)
    _, check = notebook_cells(nb)
    nb.cells = nb.cells[:check + 1] + [nbformat.v4.new_code_cell(REPORT)]
    path = folder / "01_head.ipynb"
    nbformat.write(nb, path)
    return path


def _papermill(notebook, *args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])),
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    out = notebook.with_name("out.ipynb")
    proc = subprocess.run([sys.executable, "-m", "papermill", str(notebook), str(out), "--cwd", str(notebook.parent),
                           "--no-progress-bar", *args], capture_output=True, text=True, env=env, timeout=600)
    seen = notebook.with_name("seen.json")
    result = json.loads(seen.read_text()) if proc.returncode == 0 else None
    seen.unlink(missing_ok=True)
    return proc, result


def test_no_parameters_is_the_default_profile_and_a_list_as_text_is_read(head_of_01):
    proc, seen = _papermill(head_of_01, "-p", "fig2_dfs", "[1, 2]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    default = load_profile("default")
    assert seen["profile"] == "default" and seen["n_per_cell"] == default["n_per_cell"]
    assert seen["fig2_dfs"] == [1, 2]                        # -p passed the text "[1, 2]"; the check cell read it
    assert seen["dtype"] in ("float32", "bfloat16")          # "auto" resolved


def test_profile_parameter_file_gives_no_unknown_parameter_warning(head_of_01):
    proc, seen = _papermill(head_of_01, "-f", str(PARAMETERS_DIR / "smoke" / "01.yml"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "unknown parameter" not in proc.stderr.lower()
    smoke = load_profile("smoke")
    assert seen == {"profile": "smoke", "fig2_dfs": smoke["fig2_dfs"], "n_per_cell": smoke["n_per_cell"],
                    "dtype": smoke["dtype"]}


def test_a_list_as_text_that_is_not_a_list_says_to_use_y(head_of_01):
    proc, _ = _papermill(head_of_01, "-f", str(PARAMETERS_DIR / "smoke" / "01.yml"), "-p", "fig2_dfs", "1, 100")
    assert proc.returncode != 0
    assert "fig2_dfs='1, 100' is text, not a list; pass a list with papermill -y" in proc.stderr + proc.stdout
