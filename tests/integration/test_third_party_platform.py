"""A platform from another package: installed into a fresh venv, it registers one ``Platform``
in ``nbscale.platforms`` and is used from the CLI like the built-in ones, with no change to
nbscale. The same config is refused where the package is not installed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PYPROJECT = """
[build-system]
requires = ["setuptools>=69"]
build-backend = "setuptools.build_meta"

[project]
name = "nbscale-inline"
version = "0.1"
dependencies = ["nbscale"]

[project.entry-points."nbscale.platforms"]
inline = "nbscale_inline:PLATFORM"

[tool.setuptools]
packages = ["nbscale_inline"]
"""

INIT = """
from nbscale.backends.platform import Platform

PLATFORM = Platform(type="inline", title="Inline", jobs="nbscale_inline.jobs:InlineBackend")
"""

JOBS = '''
"""Runs a script job to its end in one child process; its output is rank 0's log."""

import os
import subprocess
import sys
import time
from pathlib import Path

from nbscale.backends.base import JobBackend, LogChunk
from nbscale.errors import SpecError
from nbscale.store.jobs import get_job, update_job


class InlineBackend(JobBackend):
    type = "inline"

    def limits(self):
        return {"nodes": 1, "procs_per_node": 1, "gpus_per_proc": 0}

    def validate(self, spec):
        if spec.entry.kind != "script":
            raise SpecError("entry", "the inline backend runs scripts only", "pass a .py file")

    def _log(self, record, rank=0):
        return Path(record.info["job_dir"]) / f"rank-{rank}.log"

    def submit(self, record, secrets=None):
        self._log(record).parent.mkdir(parents=True, exist_ok=True)
        update_job(self.store, record.id, status="RUNNING", started=time.time())
        with open(self._log(record), "wb") as log:
            proc = subprocess.run(
                [sys.executable, record.spec["entry"]["target"], *record.spec["args"]],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=record.info["cwd"],
                env={**os.environ, **record.spec["env"], **(secrets or {})},
            )
        update_job(
            self.store,
            record.id,
            status="SUCCEEDED" if proc.returncode == 0 else "FAILED",
            exit_code=proc.returncode,
            ended=time.time(),
        )
        return get_job(self.store, record.id)

    def status(self, record):
        return get_job(self.store, record.id)

    def ranks(self, record):
        return [0] if self._log(record).exists() else []

    def logs(self, record, rank, offset=0, max_bytes=1 << 20):
        return LogChunk.read(self._log(record, rank), rank, offset, max_bytes)

    def metrics(self, record):
        return []

    def cancel(self, record):
        update_job(self.store, record.id, status="CANCELLED", ended=time.time())
        return get_job(self.store, record.id)
'''


def _run(cmd, env, cwd, check=True):
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, (
            f"{cmd} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def test_a_platform_from_another_package_is_used_from_the_cli(tmp_path):
    package = tmp_path / "nbscale-inline"
    (package / "nbscale_inline").mkdir(parents=True)
    (package / "pyproject.toml").write_text(PYPROJECT)
    (package / "nbscale_inline" / "__init__.py").write_text(INIT)
    (package / "nbscale_inline" / "jobs.py").write_text(textwrap.dedent(JOBS))

    venv = tmp_path / "venv"
    # the venv sees this machine's nbscale (and torch); the plugin is its own
    _run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
        os.environ,
        tmp_path,
    )
    python = str(venv / "bin" / "python")
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "HOME": str(home),
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "NBSCALE_HOME": str(tmp_path / "nbscale-home"),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    _run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(package)],
        env,
        tmp_path,
    )

    work = tmp_path / "work"
    work.mkdir()
    (work / "nbscale.toml").write_text('[backends.box]\ntype = "inline"\n')
    (work / "hello.py").write_text("import sys\nprint('hello from', sys.argv[1])\n")

    backends = _run([python, "-m", "nbscale", "backends"], env, work).stdout
    assert any(line.split()[:2] == ["box", "inline"] for line in backends.splitlines()), backends

    ran = _run(
        [python, "-m", "nbscale", "run", "hello.py", "--backend", "box", "--", "inline"], env, work
    )
    assert "hello from inline" in ran.stdout

    listed = _run([python, "-m", "nbscale", "jobs", "--json"], env, work).stdout
    assert '"backend": "box"' in listed and '"status": "SUCCEEDED"' in listed

    # what the platform cannot do is refused by it, before anything is stored
    refused = _run(
        [python, "-m", "nbscale", "run", "hello.py", "--backend", "box", "--procs-per-node", "2"],
        env,
        work,
        check=False,
    )
    assert refused.returncode == 2 and "procs_per_node" in refused.stderr

    # a type no installed package provides: one message naming the installed ones
    (work / "nbscale.toml").write_text('[backends.box]\ntype = "inlin"\n')
    typo = _run([python, "-m", "nbscale", "backends"], env, work, check=False)
    assert typo.returncode == 2
    assert "must be one of inline, kubeflow, local, sagemaker" in typo.stderr

    # without the package (this interpreter), "inline" is no type at all
    (work / "nbscale.toml").write_text('[backends.box]\ntype = "inline"\n')
    outside = _run(
        [sys.executable, "-m", "nbscale", "backends"],
        {**os.environ, **env, "PATH": os.environ["PATH"]},
        work,
        check=False,
    )
    assert outside.returncode == 2
    assert "must be one of kubeflow, local, sagemaker" in outside.stderr
