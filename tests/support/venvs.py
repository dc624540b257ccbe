"""Virtual environments for test-only SDKs that cannot share the main environment.

Some SDKs the interop tests drive pin what nbscale's own environment must not have (kserve
0.21 pins ``pandas<3`` and ``psutil<6``). Each gets a venv of its own, made with
``python -m venv`` and ``pip install REQUIREMENT`` (an exact pin), once: under
``~/.cache/nbscale-test-venvs/`` (``$NBSCALE_TEST_VENVS`` to move it), reused while its
marker file names the same requirement; in CI (``CI`` set) the caller passes a fresh folder.
Nothing is skipped: a venv that cannot be made, or a pip that cannot reach its index, fails
the test with pip's own words.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# kserve's SDK (KServeClient, the v1beta1 models). pip's resolution of it in its venv
# (2026-12-06): kubernetes 37.0.3, pandas 2.3.3, psutil 5.9.8, numpy 2.4.6, protobuf 6.33.6
KSERVE = "kserve==0.21.0"

INSTALL_TIMEOUT = 900


def cache_root() -> Path:
    return Path(
        os.environ.get("NBSCALE_TEST_VENVS") or Path.home() / ".cache" / "nbscale-test-venvs"
    )


def _folder_name(requirement: str) -> str:
    return requirement.replace("==", "-").replace("[", "_").replace("]", "").replace(",", "_")


def sdk_python(requirement: str, root: Path | None = None) -> Path:
    """The python of a venv under ``root`` with ``requirement`` installed; made on first use
    (several test processes at once: one makes it, the others wait on its lock)."""
    if "==" not in requirement:
        raise ValueError(f"{requirement!r}: pin the SDK exactly (name==version)")
    root = root or cache_root()
    root.mkdir(parents=True, exist_ok=True)
    venv = root / _folder_name(requirement)
    python = venv / "bin" / "python"
    marker = venv / "nbscale-test-venv.txt"
    with open(root / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with contextlib.suppress(OSError):
            if marker.read_text() == requirement and python.exists():
                return python
        shutil.rmtree(venv, ignore_errors=True)  # half-made or another pin: made anew
        _run(
            [sys.executable, "-m", "venv", str(venv)],
            f"could not make a venv at {venv} with {sys.executable} -m venv "
            "(on Debian/Ubuntu: apt-get install python3-venv)",
        )
        _run(
            [str(python), "-m", "pip", "install", "-q", requirement],
            f"pip could not install {requirement} into the test venv {venv}: the interop "
            "test needs PyPI (or an index that has it) reachable from this machine",
        )
        marker.write_text(requirement)
        return python


def _run(argv: list[str], what: str) -> None:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what}: no answer in {INSTALL_TIMEOUT}s", pytrace=False)
    if done.returncode != 0:
        said = done.stdout + done.stderr
        pytest.fail(
            f"{what}\n{' '.join(argv)} exited {done.returncode}:\n{said[-4000:]}", pytrace=False
        )
