"""The process torchrun starts for each rank: ``python -m nbscale.runtime.worker``.

It sends its own stdout/stderr to the rank's log file, runs the job's entry
(script, module, notebook or captured cell) and, when that raises, writes the
exception where both nbscale and torchrun look for it, then exits non-zero.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
from pathlib import Path
from typing import Any

from . import phases
from .failure import format_exception, write_error
from .jobdir import JobDir


def _redirect_output(path: Path, restart: int, error_file: Path, rank: int) -> None:
    # a size-capped, rotated log; a full disk stops this rank with a DiskFull error record
    from ..logpump import redirect

    redirect(path, kill_on_full=True, error_file=error_file, rank=rank)
    if restart:
        os.write(1, f"--- restart {restart} ---\n".encode())


def run_entry(spec: dict[str, Any], jobdir: JobDir, rank: int) -> None:
    entry = spec["entry"]
    kind, target, args = entry["kind"], entry["target"], list(spec.get("args") or [])
    if kind == "script":
        sys.argv = [target, *args]
        sys.path.insert(0, os.path.dirname(os.path.abspath(target)))
        runpy.run_path(target, run_name="__main__")
    elif kind == "module":
        sys.argv = [target, *args]
        sys.path.insert(0, os.getcwd())
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    elif kind == "notebook":
        from .notebook import run_notebook

        run_notebook(target, entry.get("parameters") or {}, jobdir, rank)
    elif kind == "bundle":
        from .cell import run_bundle

        run_bundle(target, spec, jobdir, rank)
    else:  # JobSpec validation makes this unreachable for specs nbscale wrote
        raise SystemExit(f"nbscale worker: unknown entry kind {kind!r}")


def main() -> None:
    jobdir = JobDir(os.environ["NBSCALE_JOB_DIR"])
    rank = int(os.environ.get("RANK", "0"))
    phases.mark(jobdir.path, "worker: running", rank=rank)
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    _redirect_output(jobdir.log(rank), restart, jobdir.error(rank), rank)
    phases.mark(jobdir.path, "worker: log pump started", rank=rank)
    jobdir.restart_file(rank).write_text(str(restart))
    spec = json.loads(jobdir.spec_file.read_text())
    phases.mark(jobdir.path, "worker: entry starts", rank=rank)
    try:
        run_entry(spec, jobdir, rank)
        phases.mark(jobdir.path, "worker: entry returned", rank=rank)
    except SystemExit as exc:
        if exc.code not in (0, None):
            write_error(jobdir, rank, exc, restart, {"message": f"exited with code {exc.code}"})
        raise
    except BaseException as exc:
        write_error(jobdir, rank, exc, restart)
        sys.stderr.write(format_exception(exc))
        sys.stderr.flush()
        os._exit(1)


if __name__ == "__main__":
    main()
