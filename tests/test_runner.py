"""The papermill runner on a tiny temporary notebooks folder (a few seconds of kernel start-up)."""
from __future__ import annotations

import json

import nbformat
import pytest

import sys

from icc_utils.runner import NotebookFailed, find_notebooks, main, run_notebooks, select_notebooks


def _write_notebook(path, params_src, body_src):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(params_src)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {path.stem}"), params, nbformat.v4.new_code_cell(body_src)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


WRITE_FILE = ('import os, sys\nfrom pathlib import Path\n'
              'Path(out_name).write_text(f"{profile} {n} {tag}")\n'
              'print("cwd:", os.getcwd(), "python:", sys.prefix, "file:", Path(out_name).resolve())')


@pytest.fixture
def project(tmp_path):
    nbs = tmp_path / "notebooks"
    profiles = nbs / "profiles"
    profiles.mkdir(parents=True)
    (profiles / "tiny.yml").write_text("profile: tiny\nn: 5\ntag: from-profile\nunused_elsewhere: 1\n")
    _write_notebook(nbs / "00_first.ipynb", 'profile = "smoke"\nn = 1\ntag = "default"\nout_name = "first.txt"',
                    WRITE_FILE)
    _write_notebook(nbs / "01_second.ipynb",
                    'profile = "smoke"\nn = 1\ntag = "default"\nout_name = "second.txt"\nunused_elsewhere = 0',
                    WRITE_FILE)
    (nbs / "notes.ipynb").write_text("not a numbered notebook")  # ignored by the runner
    return {"notebooks_dir": nbs, "results_root": tmp_path / "results", "profiles_dir": profiles}


def test_find_and_select_notebooks(project):
    nbs = find_notebooks(project["notebooks_dir"])
    assert [p.name for p in nbs] == ["00_first.ipynb", "01_second.ipynb"]
    assert [p.name for p in select_notebooks(nbs, ["01"])] == ["01_second.ipynb"]
    assert [p.name for p in select_notebooks(nbs, ["1", "0"])] == ["00_first.ipynb", "01_second.ipynb"]
    assert [p.name for p in select_notebooks(nbs, ["00_first.ipynb"])] == ["00_first.ipynb"]
    assert select_notebooks(nbs, None) == nbs
    with pytest.raises(ValueError, match=r"only='07'.*00_first.ipynb"):
        select_notebooks(nbs, ["07"])


def test_run_executes_in_order_with_parameters(project, capsys, monkeypatch):
    from icc_utils import runinfo

    root = project["notebooks_dir"].parent   # the project of this test: paths inside it become relative
    monkeypatch.setattr(runinfo, "PROJECT_ROOT", root)
    info = run_notebooks("tiny", overrides={"tag": "override"}, progress_bar=False, **project)
    nbs, out = project["notebooks_dir"], project["results_root"] / "tiny"
    # parameters: the profile's declared keys, then the override; cwd is the notebooks folder
    assert (nbs / "first.txt").read_text() == "tiny 5 override"
    assert (nbs / "second.txt").read_text() == "tiny 5 override"
    # executed notebooks, with papermill's injected-parameters cell
    for name in ("00_first.ipynb", "01_second.ipynb"):
        executed = nbformat.read(out / name, as_version=4)
        injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert len(injected) == 1 and 'tag = "override"' in injected[0].source
    first_injected = [c for c in nbformat.read(out / "00_first.ipynb", as_version=4).cells
                      if "injected-parameters" in c.metadata.get("tags", [])][0].source
    assert "unused_elsewhere" not in first_injected  # a key 00 does not declare is not passed to it
    for name in ("00_first.ipynb", "01_second.ipynb"):   # no folder of this machine in the executed notebooks
        text = (out / name).read_text()
        assert str(root) not in text and sys.prefix not in text
        assert "cwd: notebooks python: <python> file: notebooks/" in text
        meta = json.loads(text)["metadata"]["papermill"]
        assert (meta["input_path"], meta["output_path"]) == (f"notebooks/{name}", f"results/tiny/{name}")
    runinfo = json.loads((out / "RUNINFO.json").read_text())
    assert runinfo == info
    assert runinfo["status"] == "ok" and runinfo["profile"] == "tiny"
    assert runinfo["threads"]["torch"] >= 1 and "OMP_NUM_THREADS" in runinfo["threads"]
    readme = (out / "README.md").read_text()
    assert readme.startswith("# results/tiny\n") and "status **ok**" in readme and "torch threads" in readme
    assert "| [00_first.ipynb](00_first.ipynb) | ok |" in readme and "| [01_second.ipynb](01_second.ipynb) | ok |" in readme
    assert "    python -m icc_utils.run --profile tiny -p tag override\n" in readme
    assert list(runinfo["notebooks"]) == ["00_first.ipynb", "01_second.ipynb"]
    for entry in runinfo["notebooks"].values():
        assert entry["status"] == "ok" and entry["seconds"] > 0
    assert runinfo["notebooks"]["01_second.ipynb"]["parameters"]["unused_elsewhere"] == 1
    assert "unused_elsewhere" not in runinfo["notebooks"]["00_first.ipynb"]["parameters"]
    assert runinfo["machine"]["cpu_count"] >= 1 and runinfo["python"]
    assert "torch" in runinfo["versions"] and "commit" in runinfo
    log = capsys.readouterr().out
    assert "[1/2] 00_first.ipynb" in log and "[2/2] 01_second.ipynb done in" in log


def test_failure_stops_and_names_notebook_and_cell(project, capsys):
    nbs = project["notebooks_dir"]
    (nbs / "01_second.ipynb").rename(nbs / "02_second.ipynb")
    _write_notebook(nbs / "01_broken.ipynb", 'profile = "smoke"\nn = 1',
                    'x = 1\nraise ValueError(f"n={n} is out of range")')
    rc = main(["--profile", "tiny", "--no-progress"], **project)
    assert rc == 1
    err = capsys.readouterr().err
    assert "FAILED: notebook 01_broken.ipynb" in err
    # source: markdown 0, parameters 1, failing 2; executed: papermill injects its parameters cell after 1
    assert "cell index 3 of the executed notebook" in err and "cell index 2 of the source notebook" in err
    assert "ValueError: n=5 is out of range" in err
    out = project["results_root"] / "tiny"
    assert (out / "00_first.ipynb").exists() and (out / "01_broken.ipynb").exists()
    assert not (out / "02_second.ipynb").exists() and not (nbs / "second.txt").exists()  # later notebook not run
    runinfo = json.loads((out / "RUNINFO.json").read_text())
    assert runinfo["status"] == "failed"
    assert runinfo["notebooks"]["00_first.ipynb"]["status"] == "ok"
    broken = runinfo["notebooks"]["01_broken.ipynb"]
    assert broken["status"] == "failed" and broken["error"]["cell_index"] == 3
    assert broken["error"]["ename"] == "ValueError" and broken["error"]["source_cell_index"] == 2
    assert "02_second.ipynb" not in runinfo["notebooks"]
    with pytest.raises(NotebookFailed) as e:
        run_notebooks("tiny", only=["01"], progress_bar=False, log=lambda s: None, **project)
    assert e.value.notebook == "01_broken.ipynb" and e.value.cell_index == 3


def test_resume_keeps_the_finished_prefix_and_sums_the_invocations(project, monkeypatch, capsys):
    from icc_utils import runner

    env = {**runner.environment_info(), "commit": "c" * 40, "dirty": False}
    monkeypatch.setattr(runner, "environment_info", lambda: dict(env))
    nbs, out = project["notebooks_dir"], project["results_root"] / "tiny"
    second = nbs / "01_second.ipynb"
    good = second.read_bytes()
    _write_notebook(second, 'profile = "smoke"\nn = 1', 'raise RuntimeError("killed")')  # the first invocation dies in 01
    assert main(["--profile", "tiny", "--no-progress"], **project) == 1
    second.write_bytes(good)
    (nbs / "first.txt").unlink()
    assert main(["--profile", "tiny", "--no-progress", "--resume"], **project) == 0
    assert "keeping 1 finished notebook(s) ['00_first.ipynb']" in capsys.readouterr().out
    assert not (nbs / "first.txt").exists() and (nbs / "second.txt").read_text() == "tiny 5 from-profile"
    info = json.loads((out / "RUNINFO.json").read_text())
    assert info["status"] == "ok" and [e["status"] for e in info["notebooks"].values()] == ["ok", "ok"]
    first, again = info["invocations"]
    assert first["status"] == "failed" and again["kept"] == ["00_first.ipynb"] and info["started"] == first["started"]
    assert info["total_seconds"] == pytest.approx(info["notebooks"]["00_first.ipynb"]["seconds"] + again["seconds"],
                                                  abs=0.02)

    def kept_by_resume(**kwargs):
        info = run_notebooks("tiny", progress_bar=False, log=lambda s: None, resume=True, **kwargs, **project)
        return info["invocations"][-1]["kept"], len(info["invocations"])

    assert kept_by_resume() == (["00_first.ipynb", "01_second.ipynb"], 3)  # everything finished: nothing reruns
    assert kept_by_resume(overrides={"n": 6}) == ([], 1)                    # other parameters: a new run
    assert kept_by_resume() == ([], 1)                                      # ... and back again
    assert kept_by_resume() == (["00_first.ipynb", "01_second.ipynb"], 2)
    env["dirty"] = True                                                      # edited code: nothing is kept
    assert kept_by_resume() == ([], 1)
    env["dirty"] = False
    assert kept_by_resume() == ([], 1)                                      # ... nor what a dirty tree ran
    assert kept_by_resume()[0] == ["00_first.ipynb", "01_second.ipynb"]
    _write_notebook(second, 'profile = "smoke"\nn = 1\nout_name = "x.txt"\ntag = ""', WRITE_FILE)  # edited notebook
    assert kept_by_resume() == (["00_first.ipynb"], 3)
    env["commit"] = "d" * 40                                                 # another commit: nothing is kept
    assert kept_by_resume() == ([], 1)


def test_bad_arguments_fail_before_running_anything(project, capsys):
    assert main(["--profile", "nope"], **project) == 2
    assert "profile='nope' is not a known profile; available: ['tiny']" in capsys.readouterr().err
    assert main(["--profile", "tiny", "--only", "09"], **project) == 2
    assert "only='09'" in capsys.readouterr().err
    assert main(["--profile", "tiny", "-p", "typo_key", "3"], **project) == 2
    assert "typo_key" in capsys.readouterr().err
    assert not (project["results_root"]).exists()
    assert main(["--profile", "tiny", "--list", "-p", "n", "[1, 2]"], **project) == 0
    listing = capsys.readouterr().out
    assert "00_first.ipynb" in listing and "'n': [1, 2]" in listing


def test_log_output_shows_what_the_notebooks_print(project, capsys):
    run_notebooks("tiny", only=["00"], progress_bar=False, **project)
    assert "cwd:" not in capsys.readouterr().err
    assert main(["--profile", "tiny", "--only", "00", "--no-progress", "-v"], **project) == 0
    assert "cwd:" in capsys.readouterr().err


@pytest.mark.parametrize("text, where", [
    ("profile: tiny\nn: [1, 2\ntag: x\n", "tiny.yml, line 3, column 4: YAML syntax error"),
    ("profile: tiny\nn: 5\ntag: a\nn: 6\n", "tiny.yml, line 4, column 1: duplicate key 'n' (first on line 2)"),
])
def test_a_broken_profile_exits_2_naming_file_and_line(project, capsys, text, where):
    (project["profiles_dir"] / "tiny.yml").write_text(text)
    for argv in (["--profile", "tiny"], ["--profile", "tiny", "--list"]):
        assert main(argv, **project) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and where in err and "Traceback" not in err
    assert not project["results_root"].exists()


def test_the_command_exits_2_on_a_broken_profile_without_a_traceback(tmp_path):
    """``python -m icc_utils.run`` itself (a subprocess): exit status 2, one line naming the file."""
    import os
    import subprocess

    from icc_utils import PROJECT_ROOT

    script = f"import sys; from icc_utils.runner import main; sys.exit(main(sys.argv[1:], profiles_dir={str(tmp_path)!r}))"
    (tmp_path / "bad.yml").write_text("profile: bad\nn: 1\nn: 2\n")
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    proc = subprocess.run([sys.executable, "-c", script, "--profile", "bad", "--list"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().startswith("error: ") and "bad.yml, line 3, column 1: duplicate key 'n'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_portable_notebook_makes_paths_relative_and_leaves_images(tmp_path):
    from icc_utils import NOTEBOOKS_DIR, PROJECT_ROOT
    from icc_utils.runinfo import portable_notebook

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("print(1)")
    png = "iVBORw0KGgo" + str(PROJECT_ROOT)  # image data is never rewritten
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"saved {PROJECT_ROOT}/results/default/x.png\n"),
                    nbformat.v4.new_output("display_data", data={"image/png": png, "text/plain": f"{PROJECT_ROOT}"})]
    nb.cells = [cell]
    nb.metadata["papermill"] = {"input_path": "/elsewhere/in.ipynb", "output_path": "/elsewhere/out.ipynb"}
    executed = tmp_path / "01_zero_shot_numeric.ipynb"
    nbformat.write(nb, executed)
    portable_notebook(executed, NOTEBOOKS_DIR / "01_zero_shot_numeric.ipynb")
    out = nbformat.read(executed, as_version=4)
    assert out.metadata["papermill"]["input_path"] == "notebooks/01_zero_shot_numeric.ipynb"
    assert out.cells[0].outputs[0].text == "saved results/default/x.png\n"
    assert out.cells[0].outputs[1].data == {"image/png": png, "text/plain": "."}


def test_parameter_values_are_read_as_yaml():
    from icc_utils.runner import _parse_value

    assert _parse_value("3") == 3 and _parse_value("5e-4") == 5e-4 and _parse_value("[1, 2]") == [1, 2]
    assert _parse_value("true") is True and _parse_value("float32") == "float32"
    assert _parse_value("[embedded, kmeans]") == ["embedded", "kmeans"]
    assert _parse_value("null") is None and _parse_value("") == "" and _parse_value("a: [") == "a: ["


def test_publish_stages_only_what_this_run_wrote(tmp_path, capsys):
    """A file left by an earlier run (older than its notebook's start), or by a notebook that RUNINFO records on
    another commit or as failed, is stale: `make publish` must not mix it into the published run."""
    import os

    from icc_utils.runinfo import main as runinfo_main, publishable_files

    out = tmp_path / "default"
    for rel in ("04/old_table.csv", "04/table1.csv", "04/replies/x.jsonl", "04/adapter/adapter_config.json",
                "04_lora.ipynb", "01/fig2.csv", "05/table2.csv", "README.md"):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text("{}")
    info = {"commit": "abc", "notebooks": {
        "04_lora.ipynb": {"status": "ok", "commit": "abc", "started": "2026-12-05T10:00:00+00:00"},
        "01_zero.ipynb": {"status": "ok", "commit": "old", "started": "2026-12-05T09:00:00+00:00"},
        "05_img.ipynb": {"status": "failed", "commit": "abc", "started": "2026-12-05T10:30:00+00:00"}}}
    (out / "RUNINFO.json").write_text(json.dumps(info))
    from datetime import datetime
    start = datetime.fromisoformat(info["notebooks"]["04_lora.ipynb"]["started"]).timestamp()
    before, after = start - 3600, start + 600   # an hour before / ten minutes after 04 started
    for rel in ("04/old_table.csv",):
        os.utime(out / rel, (before, before))
    for rel in ("04/table1.csv", "04_lora.ipynb", "01/fig2.csv"):
        os.utime(out / rel, (after, after))
    os.utime(out / "05/table2.csv", (start + 7200, start + 7200))   # after 05 started, but 05 failed
    fresh, stale = publishable_files(out)
    names = lambda ps: sorted(str(p.relative_to(out)) for p in ps)
    assert names(fresh) == ["04/table1.csv", "04_lora.ipynb", "README.md", "RUNINFO.json"]
    assert names(stale) == ["01/fig2.csv", "04/old_table.csv", "05/table2.csv"]
    runinfo_main(["publishable", str(out)])
    captured = capsys.readouterr()
    assert captured.out.split("\0")[:-1] == [str(p) for p in fresh]
    assert "04/old_table.csv" in captured.err
    with pytest.raises(SystemExit, match="RUNINFO.json missing"):
        runinfo_main(["publishable", str(tmp_path / "nothing")])
