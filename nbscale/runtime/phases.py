"""Debug timing of a local job's fixed costs: when each process reached each phase.

With ``NBSCALE_PHASES=1`` in the environment of whoever submits (every process of the job
inherits it), the submitter, the supervisor, each torchrun agent and each rank append one
JSON line per phase to ``<job>/phases.jsonl``: ``{"phase": NAME, "t": UNIX_TIME, "pid":
PID}``. Without it, ``mark`` reads one environment variable and returns: nothing is written
and nothing is timed. ``benchmarks/bench_run_vs_torchrun.py`` and ``bench_train_magic.py``
turn these lines into the phase breakdown of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

ENV = "NBSCALE_PHASES"
FILE = "phases.jsonl"


def on() -> bool:
    return os.environ.get(ENV) == "1"


def mark(job_dir: str | Path | None, phase: str, when: float | None = None, **extra: Any) -> None:
    """Append ``phase`` (at ``when``, default now) to the job's phase file, if timing is on."""
    if job_dir is None or os.environ.get(ENV) != "1":
        return
    line = {"phase": phase, "t": time.time() if when is None else when, "pid": os.getpid()}
    line.update(extra)
    # one write() of one short line to a file opened with O_APPEND: lines from the job's
    # processes never interleave
    try:
        fd = os.open(Path(job_dir) / FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    except OSError:
        return
    try:
        os.write(fd, (json.dumps(line) + "\n").encode())
    finally:
        os.close(fd)


def read(job_dir: str | Path) -> list[dict[str, Any]]:
    """The phases recorded for a job, in time order (empty when timing was off)."""
    try:
        text = (Path(job_dir) / FILE).read_text()
    except OSError:
        return []
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return sorted(rows, key=lambda r: r["t"])
