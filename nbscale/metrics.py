"""``nbscale.log_metric``: numbers from inside a job, readable while it runs.

Inside a job each rank appends JSON lines to its own file in the job
directory (one writer per file, so no locking). Outside a job the values are
kept in this process, so a script behaves the same when run by hand.

In a container job (SageMaker, Kubeflow: ``NBSCALE_METRIC_LINES``) and in a sweep's
trial, rank 0 also prints each value as a metric line (``nbscale.sweeps.lines``): the
platform's metric readers (SageMaker's ``MetricDefinitions``, Katib's collector) and the
log mirror that brings ``Job.metrics()`` home while the job runs read it.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from numbers import Real
from typing import Any

from .errors import SpecError

#: set in a container job by the remote backends: ``log_metric`` also prints a metric line
LINES_ENV = "NBSCALE_METRIC_LINES"

_local_history: list[dict[str, Any]] = []
_lock = threading.Lock()
_files: dict[str, Any] = {}


def _as_float(name: str, value: Any) -> float:
    if hasattr(value, "item"):  # torch / numpy scalars
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, Real):
        raise SpecError(
            "log_metric", f"value of {name!r} must be a number, got {type(value).__name__}"
        )
    return float(value)


def log_metric(name: str, value: Any, step: int | None = None) -> dict[str, Any]:
    if not isinstance(name, str) or not name:
        raise SpecError("log_metric", "name must be a non-empty string")
    val = _as_float(name, value)
    rank = int(os.environ.get("RANK", "0"))
    record = {
        "name": name,
        "value": val if math.isfinite(val) else str(val),
        "step": step,
        "time": time.time(),
        "rank": rank,
    }
    if rank == 0 and (os.environ.get(LINES_ENV) or os.environ.get("NBSCALE_SWEEP")):
        # in a container job or a sweep's trial the platform reads metrics from the log:
        # SageMaker's MetricDefinitions (CloudWatch), Katib's collector, and nbscale's own
        # log mirror (Job.metrics()); rank 0's only: one value per step, as SageMaker's early
        # stopping expects
        from .sweeps.lines import metric_line

        line = metric_line(name, val, step, record["time"])
        if line is not None:
            print(line, flush=True)
    job_dir = os.environ.get("NBSCALE_JOB_DIR")
    with _lock:
        if not job_dir:
            _local_history.append(record)
            return record
        fh = _files.get(job_dir)
        if fh is None:
            path = os.path.join(job_dir, "metrics", f"rank-{rank}.jsonl")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fh = _files[job_dir] = open(path, "a", buffering=1)  # noqa: SIM115 - kept open for the job
        fh.write(json.dumps(record) + "\n")
    return record


def local_history() -> list[dict[str, Any]]:
    """Metrics logged in this process while not inside a job."""
    with _lock:
        return list(_local_history)
