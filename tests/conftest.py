"""Shared fixtures: every test gets its own ``$NBSCALE_HOME`` and working directory."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def nbscale_home(tmp_path, monkeypatch):
    home = tmp_path / "nbscale-home"
    monkeypatch.setenv("NBSCALE_HOME", str(home))
    monkeypatch.setenv("NBSCALE_CANCEL_GRACE", "3")
    monkeypatch.chdir(tmp_path)
    from nbscale import store

    store._stores.clear()
    yield home
    for s in store._stores.values():
        s.close()
    store._stores.clear()


@pytest.fixture
def write_script(tmp_path):
    """Write a Python file into the test's directory and return its path."""

    def write(name: str, source: str) -> Path:
        path = tmp_path / name
        path.write_text(source)
        return path

    return write


@pytest.fixture
def nbscale_cli():
    """Run the real ``nbscale`` console entry in a subprocess."""
    import subprocess

    def run(*args: str, timeout: float = 180, check: bool = False, **kw):
        proc = subprocess.run(
            [sys.executable, "-m", "nbscale", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **kw.pop("env", {})},
            **kw,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"nbscale {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    return run
