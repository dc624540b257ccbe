"""The panel build asks the Python that runs it for JupyterLab's staging folder (issue 24).

``build:labextension`` used to run plain ``python``: from a virtual environment that is not
activated (``venv/bin/pip install -e .``) that is another Python, and the builder failed
with ``Cannot read properties of undefined (reading 'forEach')``. Now setup.py's hook and
.ci/build-extension.sh name the interpreter in ``NBSCALE_BUILD_PYTHON`` and
extension/scripts/lab-staging.mjs asks it.

Each test runs the command string of package.json's scripts with ``sh -c``, as npm runs it,
in extension/, with a PATH whose first ``python``/``python3`` is the wrong one and whose
``build-labextension`` records its arguments instead of running webpack (npm would put
node_modules/.bin first; everything before the builder is the real thing).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import jupyterlab
import pytest

from tests.support import REPO

EXTENSION = REPO / "extension"
SCRIPTS = json.loads((EXTENSION / "package.json").read_text())["scripts"]
STAGING = str(Path(jupyterlab.__file__).parent / "staging")
BUILDS = {"build:labextension": [], "build:labextension:dev": ["--development"]}

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="needs node")


def _executable(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> Path:
    """A real Python without JupyterLab: a virtual environment of this one, without its
    site-packages."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    probe = subprocess.run([python, "-c", "import jupyterlab"], capture_output=True)
    assert probe.returncode != 0, "the bare venv must not see JupyterLab"
    return python


@pytest.fixture
def wrong_path(tmp_path):
    """A bin folder for the front of PATH: a ``python``/``python3`` that is not the build's
    (it exits 1 as a broken shim would) and a ``build-labextension`` that records its
    arguments in $RECORD."""
    fake = tmp_path / "fake-bin"
    fake.mkdir()
    for name in ("python", "python3"):
        _executable(fake / name, "echo 'the wrong python' >&2\nexit 1\n")
    _executable(fake / "build-labextension", 'printf "%s\\n" "$@" > "$RECORD"\n')
    return fake


def _run(script: str, fake: Path, tmp_path: Path, **env: str):
    record = tmp_path / "builder-args"
    record.unlink(missing_ok=True)
    base = {k: v for k, v in os.environ.items() if k != "NBSCALE_BUILD_PYTHON"}
    proc = subprocess.run(
        ["sh", "-c", SCRIPTS[script]],
        cwd=EXTENSION,
        env={
            **base,
            "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}",
            "RECORD": str(record),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    args = record.read_text().splitlines() if record.exists() else None
    return proc, args


@pytest.mark.parametrize("script", BUILDS)
def test_the_builder_gets_the_staging_folder_of_the_build_python(script, wrong_path, tmp_path):
    proc, args = _run(script, wrong_path, tmp_path, NBSCALE_BUILD_PYTHON=sys.executable)
    assert proc.returncode == 0, proc.stderr
    assert args == [*BUILDS[script], "--core-path", STAGING, "."]
    # and the build log says which Python that was
    assert f"JupyterLab {jupyterlab.__version__} of " in proc.stderr
    assert "from NBSCALE_BUILD_PYTHON" in proc.stderr


def test_a_relative_build_python_is_relative_to_where_npm_started(wrong_path, tmp_path):
    # npm runs the script in extension/ and says where it was started in INIT_CWD
    (tmp_path / "env").mkdir()
    _executable(tmp_path / "env" / "py", f'exec "{sys.executable}" "$@"\n')
    proc, args = _run(
        "build:labextension",
        wrong_path,
        tmp_path,
        NBSCALE_BUILD_PYTHON="env/py",
        INIT_CWD=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    assert args == ["--core-path", STAGING, "."]


@pytest.mark.parametrize("script", BUILDS)
def test_a_build_python_without_jupyterlab_is_one_line_and_no_build(
    script, wrong_path, tmp_path, bare_python
):
    proc, args = _run(script, wrong_path, tmp_path, NBSCALE_BUILD_PYTHON=str(bare_python))
    assert proc.returncode != 0
    assert args is None, "the builder must not start without a staging folder"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    (line,) = lines
    assert f"JupyterLab was not found in the Python interpreter {bare_python}" in line
    assert "from NBSCALE_BUILD_PYTHON" in line
    assert f'"{bare_python}" -m pip install "jupyterlab>=4.1,<5"' in line
    assert "forEach" not in proc.stdout + proc.stderr


def test_without_build_python_the_first_python_on_path_is_named(wrong_path, tmp_path, bare_python):
    # `npm run build` by hand: the first python on PATH, here a Python without JupyterLab
    _executable(wrong_path / "python", f'exec "{bare_python}" "$@"\n')
    proc, args = _run("build:labextension", wrong_path, tmp_path)
    assert args is None
    (line,) = proc.stderr.strip().splitlines()
    assert f"JupyterLab was not found in the Python interpreter {bare_python}" in line
    assert "first on PATH; NBSCALE_BUILD_PYTHON is not set" in line
    assert "NBSCALE_BUILD_PYTHON=" in line  # how to fix it


def test_a_python_that_cannot_run_is_one_line_and_no_build(wrong_path, tmp_path):
    proc, args = _run("build:labextension:dev", wrong_path, tmp_path)
    assert proc.returncode != 0 and args is None
    (line,) = proc.stderr.strip().splitlines()
    assert "the Python interpreter python (first on PATH" in line
    assert "exit status 1: the wrong python" in line
    proc, args = _run(
        "build:labextension", wrong_path, tmp_path, NBSCALE_BUILD_PYTHON="no-such-python"
    )
    assert proc.returncode != 0 and args is None
    (line,) = proc.stderr.strip().splitlines()
    assert 'no Python interpreter "no-such-python" could be started' in line
