"""Finding and stopping every process of a local job.

torchrun starts each worker in a session of its own, so a job's processes do
not share one process group. Every process of a job inherits
``NBSCALE_JOB_ID`` from the supervisor, so that variable is how we find them
all, even after a parent died and its children were re-parented.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

import psutil

JOB_ENV = "NBSCALE_JOB_ID"


def alive(pid: int | None, create_time: float | None = None) -> bool:
    """Whether ``pid`` runs and is the same process (not a recycled pid)."""
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return create_time is None or abs(proc.create_time() - create_time) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def create_time(pid: int) -> float:
    return psutil.Process(pid).create_time()


def tagged_processes(var: str, value: str) -> list[psutil.Process]:
    """Every live process (but this one) whose environment has ``var=value``."""
    found = []
    me = os.getpid()
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == me:
            continue
        try:
            if proc.environ().get(var) == value and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
    return found


def job_processes(job_id: str) -> list[psutil.Process]:
    return tagged_processes(JOB_ENV, job_id)


def _signal_all(procs: list[psutil.Process], sig: int) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            proc.send_signal(sig)


def _living(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except psutil.NoSuchProcess:
            pass
    return out


def stop_tagged_processes(var: str, value: str, grace: float = 10.0) -> int:
    """SIGTERM every process tagged ``var=value``, then SIGKILL what is left after ``grace`` s.

    Returns how many processes had to be killed. New processes that appear
    while we wait (a torchrun agent restarting a worker) are caught by the
    rescan before the SIGKILL.
    """
    procs = tagged_processes(var, value)
    _signal_all(procs, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _living(procs):
        time.sleep(0.05)
    leftovers = _living(procs) + [p for p in tagged_processes(var, value) if p not in procs]
    _signal_all(leftovers, signal.SIGKILL)
    psutil.wait_procs(leftovers, timeout=5)
    # a last sweep for anything forked in between
    for proc in tagged_processes(var, value):
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    return len(leftovers)


def stop_job_processes(job_id: str, grace: float = 10.0) -> int:
    return stop_tagged_processes(JOB_ENV, job_id, grace)
