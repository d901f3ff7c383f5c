"""The repository itself: no merge-conflict markers in any tracked text file, and no broken relative link in
the README (the docs site's links are checked by `mkdocs build --strict`, `make docs`)."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# A conflict's opening and closing lines; "=======" alone counts only beside one of them, since a lone row of
# equals signs can be a Markdown or reST heading underline.
OPENING_OR_CLOSING = re.compile(r"^(<<<<<<<|>>>>>>>) ", re.MULTILINE)
SEPARATOR = re.compile(r"^=======$", re.MULTILINE)
# Markdown links and images, [text](target) or ![alt](target), with an optional "title".
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def tracked_files() -> list[Path]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [ROOT / n for n in names.decode().split("\0") if n]


def text_of(path: Path) -> str | None:
    """The file's text, or None for a binary file (one with a NUL byte or not UTF-8) or one not checked out."""
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        return None
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def conflict_lines(text: str) -> list[int]:
    """1-based line numbers of merge-conflict markers in `text`."""
    markers = [m.start() for m in OPENING_OR_CLOSING.finditer(text)]
    if markers:
        markers += [m.start() for m in SEPARATOR.finditer(text)]
    return sorted(text.count("\n", 0, at) + 1 for at in markers)


def test_conflict_lines_finds_markers_and_spares_headings():
    assert conflict_lines("a\n<<<<<<< HEAD\nb\n=======\nc\n>>>>>>> slides\n") == [2, 4, 6]
    assert conflict_lines("intro\n>>>>>>> slides\n") == [2]
    assert conflict_lines("Title\n=======\n\ntext\n") == []  # a heading underline, no conflict
    assert conflict_lines("quoted >>>>>>> slides mid-line\n") == []


def test_no_conflict_markers_in_tracked_files():
    found = {}
    for path in tracked_files():
        text = text_of(path)
        if text is not None and (lines := conflict_lines(text)):
            found[str(path.relative_to(ROOT))] = lines
    assert not found, f"merge-conflict markers (file: lines): {found}"


def relative_links(markdown: str) -> list[str]:
    """Link targets that are paths in the repository: not URLs, mail links or in-page anchors."""
    targets = [m.group(1) for m in LINK.finditer(markdown)]
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.IGNORECASE) and not t.startswith("#")]


def test_readme_relative_links_point_to_files():
    readme = (ROOT / "README.md").read_text()
    links = relative_links(readme)
    assert links, "README.md links to no page of docs/"
    missing = [t for t in links if not (ROOT / t.split("#")[0]).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


def test_every_module_imports_first():
    """Each module imports on its own, whatever was imported before it: a package whose `__init__` imports a
    module that imports the package back (demo -> bench -> demo once did) fails only in some orders."""
    script = """
import importlib, pkgutil, sys
import spotter
names = [m.name for m in pkgutil.walk_packages(spotter.__path__, "spotter.") if m.name != "spotter.__main__"]
failed = []
for name in names:
    for loaded in [m for m in sys.modules if m == "spotter" or m.startswith("spotter.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as err:
        failed.append(f"{name}: {type(err).__name__}: {err}")
print(len(names), "modules")
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
