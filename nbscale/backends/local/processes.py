"""Finding and stopping every process of a local job.

torchrun starts each worker in a session of its own, so a job's processes do
not share one process group. Three nets catch them, widest first:

- a **cgroup v2 folder per job** (``<cgroup2 mount><own cgroup>/nbscale/<job>``)
  where the machine lets us create one: every agent is put in it before it
  runs torchrun, so every process it ever starts is in it, whatever it does to
  its environment or parentage; cancel kills the folder (``cgroup.kill``);
  ``NBSCALE_CGROUPS=0`` turns this off;
- the ``NBSCALE_JOB_ID`` variable every process inherits from the supervisor,
  found even after a parent died and its children were re-parented;
- the process tree: descendants of those processes and of the supervisor,
  which is a child subreaper, so a child that clears its environment and
  detaches (double fork) is re-parented to the supervisor and still found.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import time
from pathlib import Path

import psutil

JOB_ENV = "NBSCALE_JOB_ID"
CGROUPS_ENV = "NBSCALE_CGROUPS"
_PR_SET_CHILD_SUBREAPER = 36


# -- cgroup v2 ------------------------------------------------------------------------


def _cgroup2_mount() -> Path | None:
    try:
        with open("/proc/self/mounts") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) > 2 and parts[2] == "cgroup2":
                    return Path(parts[1])
    except OSError:
        pass
    return None


def _own_cgroup() -> str | None:
    try:
        with open("/proc/self/cgroup") as fh:
            for line in fh:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        pass
    return None


def job_cgroup_parent() -> Path | None:
    """The folder job cgroups go in, when cgroup v2 is mounted and writable here."""
    if os.environ.get(CGROUPS_ENV, "1") == "0":
        return None
    mount, own = _cgroup2_mount(), _own_cgroup()
    if mount is None or own is None:
        return None
    return mount / own.lstrip("/") / "nbscale"


def make_job_cgroup(job_id: str) -> Path | None:
    """Create the job's cgroup folder; None where the machine does not allow it."""
    parent = job_cgroup_parent()
    if parent is None:
        return None
    folder = parent / job_id
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder / "cgroup.procs", os.W_OK):
            folder.rmdir()
            return None
    except OSError:
        return None
    return folder


def enter_cgroup(folder: str | Path) -> None:
    """Move the calling process into ``folder`` (for ``preexec_fn``: before exec)."""
    with open(Path(folder) / "cgroup.procs", "w") as fh:
        fh.write(str(os.getpid()))


def cgroup_pids(folder: str | Path | None) -> list[int]:
    if not folder:
        return []
    try:
        text = (Path(folder) / "cgroup.procs").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def kill_cgroup(folder: str | Path | None, timeout: float = 5.0) -> None:
    """SIGKILL everything in the job's cgroup and remove the folder once it is empty."""
    if not folder:
        return
    folder = Path(folder)
    try:
        (folder / "cgroup.kill").write_text("1")
    except OSError:
        for pid in cgroup_pids(folder):  # kernels before 5.14 have no cgroup.kill
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            folder.rmdir()
            return
        time.sleep(0.02)


def become_subreaper() -> bool:
    """Orphaned descendants are re-parented to this process instead of init (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _is_log_pump(proc: psutil.Process) -> bool:
    try:
        cmd = proc.cmdline()
    except psutil.Error:
        return False
    return len(cmd) > 3 and cmd[3].endswith(os.path.join("nbscale", "logpump.py"))


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


def job_processes(job_id: str, cgroup: str | Path | None = None) -> list[psutil.Process]:
    """The job's processes: tagged, in its cgroup, or below either (log pumps aside: they
    end by themselves when the processes writing into them end)."""
    found = {p.pid: p for p in tagged_processes(JOB_ENV, job_id)}
    me = os.getpid()
    for pid in cgroup_pids(cgroup):
        if pid != me and pid not in found:
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if not _is_log_pump(proc):
                    found[pid] = proc
    roots = list(found.values())
    if os.environ.get(JOB_ENV) == job_id:  # the supervisor: its re-parented orphans too
        with contextlib.suppress(psutil.Error):
            roots.append(psutil.Process(me))
    for root in roots:
        with contextlib.suppress(psutil.Error):
            for child in root.children(recursive=True):
                if child.pid != me and child.pid not in found and not _is_log_pump(child):
                    found[child.pid] = child
    return [p for p in _living(list(found.values())) if p.pid != me]


def stop_job_processes(job_id: str, grace: float = 10.0, cgroup: str | Path | None = None) -> int:
    """SIGTERM the job's processes, SIGKILL what is left after ``grace`` s, then kill and
    remove its cgroup. Returns how many had to be killed.

    When the first scan finds none of the job's processes alive (every rank and agent ended,
    as after a clean finish), nothing of the job is left that could fork another, so the
    rescans are skipped: each reads every process's environment."""
    procs = job_processes(job_id, cgroup)
    leftovers: list[psutil.Process] = []
    if procs:
        _signal_all(procs, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _living(procs):
            time.sleep(0.05)
        known = {p.pid for p in procs}
        leftovers = _living(procs) + [
            p for p in job_processes(job_id, cgroup) if p.pid not in known
        ]
        _signal_all(leftovers, signal.SIGKILL)
        psutil.wait_procs(leftovers, timeout=5)
        for proc in job_processes(job_id, cgroup):  # a last sweep for anything forked in between
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
    # the log pumps left in the cgroup drain what the ended processes wrote, then end
    deadline = time.monotonic() + 5.0
    while cgroup and cgroup_pids(cgroup) and time.monotonic() < deadline:
        time.sleep(0.02)
    kill_cgroup(cgroup)
    return len(leftovers)
