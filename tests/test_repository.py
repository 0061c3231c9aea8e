"""No committed file names a folder of the machine it was made on (issue 37, item 4).

An absolute path into a checkout, a temporary clone or a user's home folder (the patterns below) in an executed
notebook, an adapter config or a script ties the repository to one machine: it fails elsewhere, or it
leaks who ran it where. Every file ``git ls-files`` lists is read as text (binary files are skipped; in
notebooks, embedded images are skipped, as their base64 text can spell anything).
"""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Built from pieces so that this file does not match itself.
_SEP = "/"
MACHINE_PATH = re.compile(
    r"(?<![\w.~$-])" + _SEP + r"(?:work|tmp|root|scratch|mnt)" + _SEP + r"[\w.~-]"   # work, tmp, root, ... folders
    + r"|(?<![\w.~$-])" + _SEP + r"(?:home|Users)" + _SEP + r"[A-Za-z_][\w.-]*"       # a user's home folder
    + r"|(?<![\w.~$-])" + _SEP + r"var" + _SEP + r"folders" + _SEP                    # macOS temporary folders
    + r"|\b[A-Za-z]:(?:\\\\|\\|/)Users(?:\\\\|\\|/)",                                   # C:\Users (raw or JSON-escaped)
    re.IGNORECASE)

#: Files that may name such a folder, each with the reason. Keep this short.
ALLOWED: dict[str, str] = {}


def tracked_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as err:   # an exported tree without git
        pytest.skip(f"git ls-files is not available here: {err}")
    return [p for p in out.decode().split("\0") if p]


def _strip_notebook_images(node):
    """The notebook's JSON without the base64 payloads of its image outputs."""
    if isinstance(node, dict):
        return {k: ("<image>" if k.startswith("image/") else _strip_notebook_images(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_strip_notebook_images(v) for v in node]
    return node


def readable_text(path: Path) -> str | None:
    """The file's text as the test scans it, or None for a binary file."""
    data = path.read_bytes()
    if b"\0" in data:
        return None
    text = data.decode("utf-8", errors="replace")
    if path.suffix == ".ipynb":
        try:
            return json.dumps(_strip_notebook_images(json.loads(text)), ensure_ascii=False, indent=1)
        except json.JSONDecodeError:
            return text
    return text


def machine_paths(text: str) -> list[str]:
    """Each match with its line, for the failure message."""
    hits = []
    for number, line in enumerate(text.splitlines(), 1):
        for m in MACHINE_PATH.finditer(line):
            hits.append(f"line {number}: ...{line[max(m.start() - 30, 0):m.end() + 50].strip()}...")
    return hits


def test_the_pattern_finds_machine_folders_and_leaves_ordinary_text_alone():
    found = ["/" + "work/main/results/x.csv", "PosixPath('/" + "tmp/repro_1c9725b/results')",
             "/" + "home/alice/icc", "/" + "root/.cache/huggingface", "C:" + "\\\\Users\\\\bob\\\\icc",
             "C:" + "\\Users\\bob", "/" + "Users/bob/icc", "\"input_path\": \"/" + "work/main/notebooks/00.ipynb\""]
    for text in found:
        assert MACHINE_PATH.search(text), text
    ordinary = ["results/default/04/adapter", "https://example.org/" + "tmp/file", "experiments/" + "tmp/run.sh",
                "a ratio 1/2 of the work/time", "~/" + "work/notes", "$HOME/" + "work/x", "HuggingFaceTB/SmolLM2-135M-Instruct",
                "see docs/protocol.md", "data/paper/reported_results.csv"]
    for text in ordinary:
        assert not MACHINE_PATH.search(text), text


def test_notebook_images_are_not_scanned_but_their_text_is(tmp_path):
    nb = {"cells": [{"outputs": [{"data": {"image/png": "iVBOR/" + "tmp/" + "xyz", "text/plain": "<Figure>"}},
                                 {"text": "saved to /" + "work/main/results/a.png"}]}]}
    path = tmp_path / "x.ipynb"
    path.write_text(json.dumps(nb))
    hits = machine_paths(readable_text(path))
    assert len(hits) == 1 and "work/main" in hits[0]


def test_no_committed_file_names_a_machine_folder():
    offenders = {}
    for rel in tracked_files():
        path = ROOT / rel
        if rel in ALLOWED or not path.is_file():
            continue
        text = readable_text(path)
        hits = machine_paths(text) if text is not None else []
        if hits:
            offenders[rel] = hits
    assert not offenders, (
        f"{len(offenders)} committed file(s) name a folder of the machine they were made on; write paths relative "
        "to the repository (or a model id) instead:\n"
        + "\n".join(f"  {rel}: {hits[0]}" + (f" (+{len(hits) - 1} more)" if len(hits) > 1 else "")
                    for rel, hits in sorted(offenders.items())))


def test_allowlist_entries_exist_and_give_a_reason():
    files = set(tracked_files())
    for rel, reason in ALLOWED.items():
        assert rel in files, f"{rel} is allowed to name machine folders but is not committed: drop it from ALLOWED"
        assert len(reason.split()) >= 3, f"{rel}: say why it must name a machine folder"
