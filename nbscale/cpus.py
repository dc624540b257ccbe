"""How many CPUs nbscale's local work may use: this process's affinity, not the machine's.

``os.cpu_count()`` counts the machine's CPUs; a process narrowed by ``taskset``, a cgroup's
cpuset or a container's ``--cpuset-cpus`` may run on fewer, and every default that sizes work
by CPUs (steps at once, BLAS threads per step, trials at once, replicas) must agree on one
count, the one its children inherit."""

from __future__ import annotations

import os


def allowed_cpus() -> int:
    """The CPUs this process may run on (its affinity, which its children inherit)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # no affinity on this platform
        return os.cpu_count() or 1
