"""The documentation: docs/ builds with Sphinx with every warning an error, offline, and
README.md stays a short tour that starts with the two set-up commands."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCS = REPO / "docs"
SETUP_COMMANDS = [
    "bash scripts/install.sh && nbscale quickstart",
    "bash scripts/install.sh test && python -m pytest -q -p no:cacheprovider",
]
README_MAX_LINES = 320

pytestmark = pytest.mark.slow


def test_docs_build_without_warnings(tmp_path):
    out = tmp_path / "html"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-b",
            "html",
            "-d",
            str(tmp_path / "doctrees"),
            str(DOCS),
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, (
        f"sphinx failed (exit {proc.returncode}); pip install -e '.[docs]' if it is missing\n"
        f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    )
    assert (out / "index.html").is_file()
    # every page is reachable from the toctree, so every source became a page
    for source in DOCS.rglob("*.md"):
        if "_build" in source.parts or ".ipynb_checkpoints" in source.parts:
            continue
        page = out / source.relative_to(DOCS).with_suffix(".html")
        assert page.is_file(), f"{source} was not built"


def test_readme_is_short_and_starts_with_the_set_up_commands():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines; keep it under {README_MAX_LINES} and move "
        "reference material into docs/"
    )
    # the title, then the two commands as the first block of the file
    body = [line for line in lines[1:] if line.strip()]
    assert lines[0].startswith("# "), lines[0]
    assert body[:4] == ["```bash", *SETUP_COMMANDS, "```"], body[:4]


def test_readme_links_into_docs_resolve():
    text = README.read_text(encoding="utf-8")
    targets = re.findall(r"\]\(((?:docs/)[^)#\s]+)(?:#[^)]*)?\)", text)
    assert targets, "README.md links to no docs page"
    missing = sorted({t for t in targets if not (REPO / t).exists()})
    assert not missing, f"README.md links to missing files: {missing}"
