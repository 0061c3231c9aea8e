"""The README stays short and everything it names exists; the documentation's links stay inside the repository.

Issue 37, item 1: the README is at most 12 KB, every repository file or folder it names (in a link, an image, or
a path in backticks) exists, and the rest of the documentation lives in ``docs/`` and ``CHANGELOG.md``, whose links
resolve too. No document cites a file outside the repository.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_README_BYTES = 12 * 1024
#: Top-level entries a path in backticks can start with (what the README's layout names, and the root files).
TOP_LEVEL = ("icc_utils", "notebooks", "results", "experiments", "models", "data", "docs", "benchmarks", "tests",
             "Makefile", "README.md", "CHANGELOG.md", "pyproject.toml", "environment.yml")
#: Characters that mark a path as a pattern or a placeholder (``results/<profile>/``, ``02/figure*.png``).
PLACEHOLDER = re.compile(r"[<>{}*$=]")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
CODE = re.compile(r"`([^`\n]+)`")


def documents() -> list[Path]:
    return [README, ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[`*_\\]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", path.read_text(encoding="utf-8"), re.M)}


def local_links(path: Path) -> list[str]:
    """Links and images of a Markdown file that are not web addresses or mail."""
    return [t for t in LINK.findall(path.read_text(encoding="utf-8"))
            if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I)]


def broken_links(path: Path) -> list[str]:
    """Each local link of ``path`` that leaves the repository, points nowhere, or names a missing heading."""
    bad = []
    for target in local_links(path):
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if file_part and (file_part.startswith("/") or ROOT not in (resolved, *resolved.parents)):
            bad.append(f"{target} (outside the repository)")
        elif not resolved.exists():
            bad.append(f"{target} (missing)")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            bad.append(f"{target} (no heading '#{anchor}' in {resolved.name})")
    return bad


def named_paths(text: str) -> list[str]:
    """Repository paths written in backticks (also inside a command), placeholders and patterns left out."""
    paths = []
    for span in CODE.findall(text):
        for word in span.split():
            word = word.strip(".,;:()'\"")
            top = word.split("/", 1)[0]
            if top in TOP_LEVEL and (word == top or word.startswith(top + "/")) and not PLACEHOLDER.search(word):
                paths.append(word)
    return paths


def test_readme_is_at_most_12_kb():
    size = len(README.read_bytes())
    assert size <= MAX_README_BYTES, (f"README.md is {size:,} bytes, over {MAX_README_BYTES:,}: move detail to docs/ "
                                      "(dated entries to CHANGELOG.md)")


def test_readme_names_the_two_commands_and_the_docs():
    text = README.read_text(encoding="utf-8")
    for must in ("make reproduce", "make test", "make lab", "docs/protocol.md", "docs/limitations.md",
                 "docs/finetuning-findings.md", "CHANGELOG.md"):
        assert must in text, f"README.md should name {must}"


def test_every_link_and_image_in_the_readme_exists():
    assert local_links(README), "README.md links nothing in the repository"
    assert not broken_links(README), broken_links(README)


def test_every_path_the_readme_names_exists():
    paths = named_paths(README.read_text(encoding="utf-8"))
    assert "notebooks/profiles/" in paths or "notebooks/" in paths, paths
    missing = sorted({p for p in paths if not (ROOT / p).exists()})
    assert not missing, f"README.md names files or folders that are not in the repository: {missing}"


@pytest.mark.parametrize("doc", [p.relative_to(ROOT).as_posix() for p in documents()[1:]])
def test_documentation_links_resolve_inside_the_repository(doc):
    path = ROOT / doc
    assert not broken_links(path), broken_links(path)


def test_documents_cite_the_repositorys_own_protocol():
    for path in documents():
        text = path.read_text(encoding="utf-8")
        assert "PROTOCOL.md" not in text and "shared/" not in text, \
            f"{path.relative_to(ROOT)} cites a file outside the repository; cite docs/protocol.md"
    assert (ROOT / "docs" / "protocol.md").is_file()


def test_the_checks_catch_what_they_should(tmp_path):
    """The helpers themselves: a missing file, a missing heading, a link out of the repository, a placeholder."""
    doc = ROOT / "docs" / "protocol.md"
    assert "5-verdicts-on-the-papers-claims" in anchors(doc)
    assert slug("## 5. Verdicts on the paper's claims".lstrip("# ")) == "5-verdicts-on-the-papers-claims"
    assert named_paths("`icc_utils/` and `results/<profile>/` and `python benchmarks/x.py --out results/y`") == [
        "icc_utils/", "benchmarks/x.py", "results/y"]
    assert named_paths("`data/paper/reported_results.csv`, `06/figure5_{color,shape}.png`") == [
        "data/paper/reported_results.csv"]
