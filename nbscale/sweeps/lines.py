"""The metric line a sweep's trial prints for each ``log_metric``, and the patterns that read it.

Katib's StdOut metrics collector and SageMaker's ``MetricDefinitions`` find metrics in the
trial's log, not in nbscale's files. Inside a sweep's trial (``NBSCALE_SWEEP`` set)
``log_metric("val_loss", 0.25)`` therefore also prints::

    nbscale-metric val_loss=0.25

one metric per line, the value as Python writes a float (``1e-05``, ``-0.5``); a value that
is not finite is not printed, as neither platform can read it.
"""

from __future__ import annotations

import math
import re

MARK = "nbscale-metric"
_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[Ee][+-]?\d+)?"  # never empty
#: Katib's filter: group 1 the name, group 2 the value (Go's RE2 syntax, also Python's)
KATIB_FILTER = MARK + r" ([\w-]+)=(" + _NUMBER + r")"


def metric_line(name: str, value: float) -> str | None:
    if not math.isfinite(value):
        return None
    return f"{MARK} {name}={float(value)!r}"


def sagemaker_regex(name: str) -> str:
    """A ``MetricDefinitions`` regex for ``name``: its one group is the value."""
    return re.escape(f"{MARK} {name}=") + "(" + _NUMBER + ")"
