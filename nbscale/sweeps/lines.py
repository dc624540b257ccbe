"""The metric line ``log_metric`` prints in a remote job or a sweep's trial, and what reads it.

The platforms find metrics in a job's log, not in nbscale's files: Katib's StdOut metrics
collector (``KATIB_FILTER``), SageMaker's ``MetricDefinitions`` (``sagemaker_regex``), which
send them to CloudWatch, and nbscale itself, which reads the log it mirrors back into
``Job.metrics()`` records (``parse_line``). Inside a trial (``NBSCALE_SWEEP``) or a
container job (``NBSCALE_METRIC_LINES``, set by the remote backends) rank 0's
``log_metric("val_loss", 0.25, step=3)`` therefore also prints one line::

    nbscale-metric val_loss=0.25 step=3 time=1733450000.123

the name and value first (the value as Python writes a float: ``1e-05``, ``-0.5``), then
the step when one was given, then the time it was logged (seconds since the epoch). One
grammar serves every reader: Katib's filter and SageMaker's regexes stop at the value, so a
trial's objective line and a job's metric line are the same line. A value that is not
finite is not printed, as neither platform can read it.
"""

from __future__ import annotations

import contextlib
import math
import re
from typing import Any

MARK = "nbscale-metric"
_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[Ee][+-]?\d+)?"  # never empty
_NAME = r"[\w-]+"
#: Katib's filter: group 1 the name, group 2 the value (Go's RE2 syntax, also Python's)
KATIB_FILTER = MARK + r" (" + _NAME + r")=(" + _NUMBER + r")"
_LINE = re.compile(
    re.escape(MARK)
    + r" (?P<name>"
    + _NAME
    + r")=(?P<value>"
    + _NUMBER
    + r")(?: step=(?P<step>-?\d+))?(?: time=(?P<time>"
    + _NUMBER
    + r"))?\s*$"
)
#: a metric name every reader takes whole (SageMaker: a CloudWatch metric name)
NAME_RE = re.compile(r"^" + _NAME + r"$")


def metric_line(
    name: str, value: float, step: int | None = None, when: float | None = None
) -> str | None:
    """The line for one value; None for a value that is not finite, or a name that the
    readers would cut short (``log_metric`` still records it in the job's folder)."""
    if not math.isfinite(value) or not NAME_RE.match(name):
        return None
    line = f"{MARK} {name}={float(value)!r}"
    if step is not None:
        # a step that is no whole number is kept in the job's folder only
        with contextlib.suppress(TypeError, ValueError):
            line += f" step={int(step)}"
    if when is not None:
        line += f" time={when:.3f}"
    return line


def parse_line(text: str) -> dict[str, Any] | None:
    """``{"name", "value", "step", "time"}`` of a metric line (a log line that is one, with
    or without the launcher's ``[rank N] `` before it), else None."""
    if MARK not in text:
        return None
    found = _LINE.search(text)
    if found is None:
        return None
    step, when = found.group("step"), found.group("time")
    return {
        "name": found.group("name"),
        "value": float(found.group("value")),
        "step": int(step) if step is not None else None,
        "time": float(when) if when is not None else None,
    }


def sagemaker_regex(name: str) -> str:
    """A ``MetricDefinitions`` regex for ``name``: its one group is the value."""
    return re.escape(f"{MARK} {name}=") + "(" + _NUMBER + ")"


def metric_definitions(names: list[str] | tuple[str, ...] | set[str]) -> list[dict[str, str]]:
    """SageMaker ``MetricDefinitions`` for ``names`` (those a reader can take whole), sorted."""
    return [
        {"Name": n, "Regex": sagemaker_regex(n)} for n in sorted(set(names)) if NAME_RE.match(n)
    ]
