"""`make lab`: JupyterLab from the study's environment serves the notebooks with the study's named kernel."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from icc_utils import NOTEBOOKS_DIR, PROJECT_ROOT

JUPYTER = Path(sys.executable).with_name("jupyter")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(not JUPYTER.exists(), reason="JupyterLab is installed by `make env` (the lab extra)")
def test_jupyterlab_serves_the_notebooks_with_the_study_kernel(tmp_path):
    port, token = _free_port(), "icc-test"
    cmd = [str(JUPYTER), "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1", f"--IdentityProvider.token={token}",
           f"--notebook-dir={NOTEBOOKS_DIR}", "--allow-root"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={"JUPYTER_RUNTIME_DIR": str(tmp_path), "HOME": str(tmp_path),
                                 "PATH": str(JUPYTER.parent)})
    try:
        base = f"http://127.0.0.1:{port}/api"
        for _ in range(120):
            try:
                specs = json.load(urllib.request.urlopen(f"{base}/kernelspecs?token={token}", timeout=2))
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("JupyterLab did not answer within 60 s")
        assert "icc-study" in specs["kernelspecs"], specs["kernelspecs"].keys()
        argv = specs["kernelspecs"]["icc-study"]["spec"]["argv"]
        assert Path(argv[0]).resolve() == Path(sys.executable).resolve()   # the study's own Python
        listing = json.load(urllib.request.urlopen(f"{base}/contents?token={token}", timeout=5))
        names = {c["name"] for c in listing["content"]}
        assert {p.name for p in NOTEBOOKS_DIR.glob("*.ipynb")} <= names
        nb = json.loads((NOTEBOOKS_DIR / "01_zero_shot_numeric.ipynb").read_text())
        assert nb["metadata"]["kernelspec"]["name"] == "icc-study"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert (PROJECT_ROOT / "Makefile").read_text().count("jupyter lab") == 1
