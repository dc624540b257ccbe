"""Narrowing this process to one CPU for a test, as ``taskset -c N`` would start it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def one_cpu() -> Iterator[None]:
    """This thread on one CPU for the block (what it starts inherits it); restored after."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)
