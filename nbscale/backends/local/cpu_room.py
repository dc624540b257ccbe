"""Whether another local replica would get a CPU of its own.

A local endpoint's replicas share this machine. Knative or a SageMaker variant adds a replica
on another node; here a replica added while the endpoint's processes already use every CPU
they may run on only shares those CPUs, and the router's proxy hop that two or more replicas
need takes more of them. On one CPU, scaling a batching replica from one (serving the socket
itself) to four (behind the router) cut the requests served at 64 connections from about
16,500/s to 4,100/s, and stretched the p99 from 7 ms to 270 ms (``bench_serving``,
2026-12-06 14:42).

``CpuRoom`` follows the CPU time the endpoint's own processes (router and replicas) used over
the last 0.2 s (two of the router's control ticks), as psutil reads it, against the CPUs the
router may run on (its affinity, which the replicas inherit). The router adds a replica for load only while at least
``ROOM_FOR_A_REPLICA`` of a CPU is left; ``min_replicas`` is always kept. Other users' work on
the machine is not counted: it would hold an endpoint back for load that is not its own.
"""

from __future__ import annotations

from collections import deque

import psutil

from ...cpus import allowed_cpus

# shorter than the 2 s over which the router averages requests in flight: a replica that
# fills its CPU shows it here before the average of a rising load asks for another one
WINDOW_S = 0.2
ROOM_FOR_A_REPLICA = 0.5  # of a CPU: less than that left, another replica only shares CPUs


class CpuRoom:
    """CPU used by a set of processes over ``WINDOW_S``, and the room left for one more."""

    def __init__(self, cpus: int | None = None):
        self.cpus = cpus or allowed_cpus()
        self._procs: dict[int, tuple[psutil.Process, float]] = {}  # pid -> (process, CPU s)
        self._total = 0.0  # CPU seconds the processes used since each was first seen
        self._samples: deque[tuple[float, float]] = deque()  # (time, _total)

    def sample(self, now: float, pids: list[int]) -> None:
        """Read the CPU time of ``pids`` (the router and its replicas) at ``now`` (monotonic).
        A process counts from its first sample on (an adopted replica's past is not this
        window's); one that exited keeps what it used."""
        seen = {}
        for pid in pids:
            proc, last = self._procs.get(pid, (None, None))
            try:
                proc = proc or psutil.Process(pid)
                times = proc.cpu_times()
            except psutil.Error:
                continue
            cpu = times.user + times.system
            if last is not None:
                self._total += max(0.0, cpu - last)
            seen[pid] = (proc, cpu)
        self._procs = seen
        self._samples.append((now, self._total))
        while len(self._samples) > 2 and self._samples[1][0] <= now - WINDOW_S:
            self._samples.popleft()

    def used(self) -> float | None:
        """CPUs in use (1.0: one CPU all the time) over the window; None until it spans 0.15 s."""
        if len(self._samples) < 2:
            return None
        (t0, c0), (t1, c1) = self._samples[0], self._samples[-1]
        if t1 - t0 < 0.15:
            return None
        return max(0.0, (c1 - c0) / (t1 - t0))

    def room(self) -> float | None:
        """CPUs left for another replica; None while nothing has been measured yet."""
        used = self.used()
        return None if used is None else self.cpus - used
