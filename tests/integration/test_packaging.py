"""The wheel as a user gets it: built with ``python -m build`` from a clean copy of the
checkout (the panel built by setup.py's hatch-jupyter-builder hook, nothing prebuilt),
installed into a fresh venv, and seen there by ``jupyter labextension list`` and
``jupyter server extension list`` as the venv's own copy, enabled and OK.

The venv has --system-site-packages (torch and Jupyter come from this machine) and the
wheel goes in with --no-deps; every path below proves that what Jupyter lists is the
wheel's files in the venv, not the developer's editable install.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.support import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

ANSI = re.compile(r"\x1b\[[0-9;]*m")
# the console scripts `jupyter labextension` and `jupyter server` resolve to, run with the
# venv's interpreter (the venv has no scripts of its own for packages it inherits)
RUN_SCRIPT = """
import sys
from importlib.metadata import entry_points
(ep,) = entry_points(group="console_scripts", name=sys.argv[1])
sys.argv = sys.argv[1:]
sys.exit(ep.load()())
"""


def _clean_copy(dest: Path) -> Path:
    """HEAD plus the working tree's changes: tracked and untracked files git does not ignore
    (no node_modules, no built panel, no extension/lib)."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        src = REPO / os.fsdecode(name)
        if src.is_file():  # a file deleted in the working tree is still in the index
            (dest / os.fsdecode(name)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / os.fsdecode(name))
    return dest


def _run(cmd: list[str], timeout: float, **kw) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    out = ANSI.sub("", proc.stdout + proc.stderr)
    assert proc.returncode == 0, (
        f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{out[-6000:]}"
    )
    return out


def _venv_env(home: Path, venv: Path) -> dict[str, str]:
    """A user's shell in the venv: no JUPYTER_* or NBSCALE_* settings, a home of its own."""
    keep = {k: v for k, v in os.environ.items() if k in ("LANG", "LC_ALL", "TMPDIR")}
    return {**keep, "HOME": str(home), "PATH": f"{venv / 'bin'}:/usr/bin:/bin"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    if not shutil.which("npm"):
        pytest.skip("npm is needed to build the panel (apt-get install nodejs npm)")
    root = tmp_path_factory.mktemp("packaging")
    src = _clean_copy(root / "src")
    assert not (src / "nbscale" / "labextension").exists()
    assert not (src / "extension" / "node_modules").exists()
    out = _run(
        [sys.executable, "-m", "build", "--outdir", str(root / "dist"), str(src)],
        timeout=1200,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    (wheel,) = (root / "dist").glob("nbscale-*.whl")
    (sdist,) = (root / "dist").glob("nbscale-*.tar.gz")
    return {"root": root, "wheel": wheel, "sdist": sdist, "log": out}


def test_the_wheel_carries_the_built_panel_and_the_server_config(built):
    log = built["log"]
    # the hook built the panel in the clean copy (npm), and the wheel (made from the sdist)
    # found it already built there
    assert "npm run build:prod" in log and "No build required" in log, log[-4000:]
    names = zipfile.ZipFile(built["wheel"]).namelist()
    data = "nbscale-0.1.0.data/data/"
    lab = data + "share/jupyter/labextensions/nbscale/"
    for name in (
        lab + "package.json",
        lab + "install.json",
        lab + "static/style.js",
        lab + "schemas/nbscale/plugin.json",
        data + "etc/jupyter/jupyter_server_config.d/nbscale.json",
        "nbscale/magics/__init__.py",
        "nbscale/server_ext/__init__.py",
        "nbscale/server_ext/openapi.json",
    ):
        assert name in names, f"{name} missing from the wheel"
    assert any(
        re.fullmatch(re.escape(lab) + r"static/remoteEntry\.[0-9a-f]+\.js", n) for n in names
    )
    # one copy of the panel: under share/jupyter, not again inside the package
    assert not [n for n in names if n.startswith("nbscale/labextension/")]
    with tarfile.open(built["sdist"]) as tar:
        members = tar.getnames()
    assert "nbscale-0.1.0/nbscale/labextension/package.json" in members
    assert "nbscale-0.1.0/extension/src/index.tsx" in members


def test_the_installed_wheel_is_what_jupyter_lists_enabled_and_ok(built):
    root = built["root"]
    venv, home = root / "venv", root / "home"
    home.mkdir()
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], timeout=300)
    py = str(venv / "bin" / "python")
    env = _venv_env(home, venv)
    _run(
        [py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(built["wheel"])],
        timeout=300,
        env={**env, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    # the venv imports its own copy, not the developer's editable checkout
    where = _run(
        [py, "-c", "import nbscale, nbscale.server_ext as s; print(nbscale.__file__, s.__file__)"],
        timeout=120,
        env=env,
        cwd=home,
    ).split()
    site = str(venv / "lib")
    assert all(p.startswith(site) for p in where), where
    assert not any(p.startswith(str(REPO)) for p in where), where

    labext = venv / "share" / "jupyter" / "labextensions" / "nbscale"
    assert labext.is_dir() and not labext.is_symlink()
    assert not any(p.is_symlink() for p in labext.rglob("*"))

    listed = _run([py, "-c", RUN_SCRIPT, "jupyter-labextension", "list"], 300, env=env, cwd=home)
    # the only labextensions folder holding nbscale is the venv's
    sections = re.split(r"^(/\S+/labextensions)$", listed, flags=re.M)
    folders = {sections[i]: sections[i + 1] for i in range(1, len(sections) - 1, 2)}
    holding = [f for f, body in folders.items() if re.search(r"^\s+nbscale v", body, re.M)]
    assert holding == [str(labext.parent)], listed
    assert re.search(r"^\s+nbscale v0\.1\.0 enabled OK \(python, nbscale\)$", listed, re.M), listed

    servers = _run(
        [py, "-c", RUN_SCRIPT, "jupyter-server", "extension", "list"], 300, env=env, cwd=home
    )
    blocks = re.split(r"^Config dir: (\S+)$", servers, flags=re.M)
    dirs = {blocks[i]: blocks[i + 1] for i in range(1, len(blocks) - 1, 2)}
    enabling = [d for d, body in dirs.items() if "nbscale.server_ext" in body]
    assert enabling == [str(venv / "etc" / "jupyter")], servers
    body = dirs[str(venv / "etc" / "jupyter")]
    assert re.search(r"^\s+nbscale\.server_ext enabled$", body, re.M), servers
    assert re.search(r"^\s+nbscale\.server_ext 0\.1\.0 OK$", body, re.M), servers
    assert (venv / "etc/jupyter/jupyter_server_config.d/nbscale.json").is_file()
