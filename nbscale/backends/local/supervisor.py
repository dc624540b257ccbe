"""One supervisor per local job: ``python -m nbscale.backends.local.supervisor JOB_ID``.

The submitter starts it in a new session and it forks once more, so it is
nobody's child: it outlives the CLI, kernel or server that submitted the job.
It waits for GPUs when the job needs them, starts one torchrun agent per
simulated node joined by one c10d rendezvous on a free loopback port, and
records how the job ended. Every process it starts carries NBSCALE_JOB_ID.

The job does not depend on the supervisor staying alive: each agent records
its own exit code (``agents/node-N.json``, see ``agent.py``) and the agents'
pids are in the job row. When the supervisor is killed, the next look at the
job starts a new one with ``--adopt``, which takes over the running agents
(one wins, by compare-and-set on the row), or, when they have all ended,
records the outcome they wrote.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from ... import paths
from ...kernel_transport import remove_noted
from ...logpump import redirect, wait_for_log_pumps
from ...runtime import phases
from ...runtime.jobdir import JobDir
from ...store import Store, get_store
from ...store.jobs import ACTIVE, CANCELLED, FAILED, RUNNING, SUCCEEDED, get_job, update_job
from . import gpus as gpu_alloc
from .exits import exit_file, read_exit
from .ports import pick_port
from .processes import (
    JOB_ENV,
    alive,
    become_subreaper,
    create_time,
    enter_cgroup,
    make_job_cgroup,
    stop_job_processes,
)

POLL = 0.05
AGENT_EXIT_WAIT = 15.0
DISK_FULL_BYTES = (
    256 * 1024
)  # less than this free next to the job: say so as the cause  # after one agent failed, how long the others get to notice


def claim_rendezvous_port(store: Store, job_id: str) -> int:
    """A port for the job's rendezvous store, written to its row in the same transaction that
    reads the ports the other running jobs hold, so no two jobs of this home get one port
    (and none is taken from the ephemeral range: see ``ports``)."""
    with store.transaction() as conn:
        taken = {
            int(row[0])
            for row in conn.execute(
                "SELECT json_extract(info, '$.port') FROM jobs WHERE status IN (?, ?) "
                "AND json_extract(info, '$.port') IS NOT NULL AND id != ?",
                (*ACTIVE, job_id),
            )
        }
        port = pick_port(taken)
        conn.execute(
            "UPDATE jobs SET info = json_patch(info, ?) WHERE id = ?",
            (json.dumps({"port": port}), job_id),
        )
    return port


def torchrun_command(spec: dict, job_id: str, port: int, node: int, jobdir_path: str) -> list[str]:
    nodes = spec["nodes"]
    return [
        sys.executable,
        "-m",
        "nbscale.backends.local.agent",
        str(exit_file(jobdir_path, node)),
        str(JobDir(jobdir_path).agent_log(node)),
        f"--nnodes={nodes}",
        f"--nproc-per-node={spec['procs_per_node']}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{port}",
        f"--rdzv-id={job_id}",
        f"--rdzv-conf=is_host={'true' if node == 0 else 'false'},join_timeout=120",
        f"--max-restarts={spec['max_restarts']}",
        "--monitor-interval=0.1",
        "--local-addr=127.0.0.1",
        "-m",
        "nbscale.runtime.worker",
    ]


def agent_env(spec: dict, job_id: str, jobdir: JobDir, node_gpus: list[int]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(spec.get("env") or {})
    env[JOB_ENV] = job_id
    env["NBSCALE_JOB_DIR"] = str(jobdir.path)
    env["PYTHONUNBUFFERED"] = "1"
    env["NBSCALE_DIST_BACKEND"] = "nccl" if node_gpus else "gloo"
    env["NBSCALE_GPUS_PER_PROC"] = str(spec.get("gpus_per_proc", 0))
    env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, node_gpus))
    env.update(gpu_alloc.ORDER)  # indices as nvidia-smi numbers them
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    env.setdefault("OMP_NUM_THREADS", "1")
    if spec.get("max_restarts"):
        # torchrun shares one TCP store across restarts without a per-attempt prefix, so a
        # restarted group reads the dead workers' gloo addresses ("Connection refused");
        # a store of its own per attempt avoids that
        env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    # nbscale.checkpoint reads this; relative paths are taken from the submitter's directory
    env["NBSCALE_CHECKPOINT_DIR"] = os.path.abspath(
        os.path.expanduser(spec.get("checkpoint_dir") or jobdir.path / "checkpoints")
    )
    return env


def failure_details(
    spec: dict, jobdir: JobDir, exit_code: int | None, reason: str | None
) -> dict[str, Any]:
    """The fields that say why a job failed: the earliest rank exception, else the agents' tails."""
    errors = jobdir.errors()
    if reason:
        return {"error": reason, "failed_rank": None, "info_patch": {"phase": "ended"}}
    if errors:
        root = errors[0]  # the earliest exception is the root cause, as torchrun reports
        return {
            "failed_rank": root["rank"],
            "error": f"rank {root['rank']}: {root['type']}: {root['message']}",
            "info_patch": {"traceback": root["traceback"], "phase": "ended"},
        }
    free = paths.free_bytes(jobdir.path)
    if free is not None and free < DISK_FULL_BYTES:
        return {
            "failed_rank": None,
            "error": f"disk full: the disk holding {jobdir.path} has {free // 1024} KiB free, "
            "so the job could not write its logs or files (free space there and run it again)",
            "info_patch": {"phase": "ended"},
        }
    tail = ""
    for node in range(spec["nodes"]):
        with contextlib.suppress(OSError):
            tail += jobdir.agent_log(node).read_text(errors="replace")[-2000:]
    return {
        "failed_rank": None,
        "error": f"torchrun exited with code {exit_code} without a Python exception "
        f"(killed by a signal or out of memory?)\n{tail}",
        "info_patch": {"phase": "ended"},
    }


def agents_outcome(codes: list[int | None]) -> tuple[str, int | None]:
    bad = [c for c in codes if c != 0]
    return (SUCCEEDED, 0) if not bad else (FAILED, bad[0])


def record_end(
    store: Store,
    job_id: str,
    spec: dict,
    jobdir: JobDir,
    status: str,
    exit_code: int | None,
    reason: str | None,
) -> bool:
    """Write how the job ended (compare-and-set: only if nobody else did first)."""
    fields: dict[str, Any] = {
        "status": status,
        "ended": time.time(),
        "exit_code": exit_code,
        "restarts": jobdir.restarts(),
    }
    if status == FAILED:
        fields.update(failure_details(spec, jobdir, exit_code, reason))
    else:
        fields["info_patch"] = {"phase": "ended"}
        if status == CANCELLED:
            fields["error"] = "cancelled"
    return update_job(store, job_id, **fields)


class _Started:
    """An agent this supervisor started: its exit code from its record or from wait()."""

    def __init__(self, proc: subprocess.Popen, record: Path):
        self.proc, self.record = proc, record
        # readable once the process has exited: the supervisor wakes then, not at its next poll
        try:
            self.pidfd: int | None = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):  # not Linux 5.3+: the poll alone
            self.pidfd = None

    def running_fd(self) -> int | None:
        """The pidfd to wait on while the agent is not known to have ended."""
        return self.pidfd if self.proc.returncode is None else None

    def close(self) -> None:
        if self.pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self.pidfd)
            self.pidfd = None

    def code(self) -> int | None | str:
        returned = self.proc.poll()
        if returned is None:
            return None
        recorded = read_exit(self.record)
        return recorded if recorded is not None else returned


class _Adopted:
    """An agent a previous supervisor started; only its own record tells how it ended."""

    def __init__(self, pid: int, started: float, record: Path):
        self.pid, self.started, self.record = pid, started, record

    def code(self) -> int | None | str:
        recorded = read_exit(self.record)
        if recorded is not None:
            return recorded
        if alive(self.pid, self.started):
            return None
        recorded = read_exit(self.record)  # it may have written it just before exiting
        return recorded if recorded is not None else VANISHED


VANISHED = "vanished"


class Supervisor:
    def __init__(self, job_id: str):
        self.job_id = job_id
        self.store = get_store()
        self.record = get_job(self.store, job_id)
        self.spec = self.record.spec
        self.jobdir = JobDir(self.record.info["job_dir"])
        self.stop_reason: str | None = None
        self.agents: list[_Started | _Adopted] = []
        self.cgroup: str | None = self.record.info.get("cgroup")
        self._last_reap = 0.0

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.stop_reason = "cancel"

    def _claim_gpus(self) -> list[int] | None:
        needed = self.spec["nodes"] * self.spec["procs_per_node"] * self.spec["gpus_per_proc"]
        if not needed:
            return []
        while self.stop_reason is None:
            chosen = gpu_alloc.claim(self.store, self.job_id, needed)
            if chosen is not None:
                return chosen
            time.sleep(0.5)  # queued behind other local jobs
        return None

    def _start_agents(self, gpus: list[int]) -> None:
        port = claim_rendezvous_port(self.store, self.job_id)
        per_node = self.spec["procs_per_node"] * self.spec["gpus_per_proc"]
        update_job(
            self.store,
            self.job_id,
            status=RUNNING,
            started=time.time(),
            info_patch={"phase": "starting"},
        )
        folder = make_job_cgroup(self.job_id)
        self.cgroup = str(folder) if folder else None
        if self.cgroup:
            update_job(self.store, self.job_id, info_patch={"cgroup": self.cgroup})
        cgroup = self.cgroup
        phases.mark(self.jobdir.path, "supervisor: spawning agents")
        for node in range(self.spec["nodes"]):
            node_gpus = gpus[node * per_node : (node + 1) * per_node]
            record = exit_file(self.jobdir.path, node)
            record.unlink(missing_ok=True)
            log = open(self.jobdir.agent_log(node), "ab")  # noqa: SIM115 - owned by the child
            proc = subprocess.Popen(
                torchrun_command(self.spec, self.job_id, port, node, str(self.jobdir.path)),
                env=agent_env(self.spec, self.job_id, self.jobdir, node_gpus),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.record.info.get("cwd") or None,
                # in the job's cgroup before torchrun runs: all it starts is in there too
                preexec_fn=(lambda: enter_cgroup(cgroup)) if cgroup else None,
            )
            log.close()
            self.agents.append(_Started(proc, record))
        phases.mark(self.jobdir.path, "supervisor: agents spawned")
        update_job(
            self.store,
            self.job_id,
            info_patch={
                "agents": [[a.proc.pid, create_time(a.proc.pid)] for a in self.agents]  # type: ignore[union-attr]
            },
        )

    def _adopt_agents(self) -> None:
        for node, (pid, started) in enumerate(self.record.info.get("agents") or []):
            self.agents.append(_Adopted(pid, started, exit_file(self.jobdir.path, node)))

    def _wait(self) -> tuple[str, int | None, str | None]:
        deadline = None
        if self.spec.get("max_runtime"):
            begun = self.record.started or time.time()
            deadline = begun + self.spec["max_runtime"]
        first_failure_at = None
        while True:
            if self.stop_reason:
                return CANCELLED, None, "cancelled"
            if self.spec.get("max_cost") is not None:  # the budget guard (nbscale.cost)
                from ...cost import budget_stop

                over = budget_stop(self.store, self.job_id, self.spec)
                if over:
                    return FAILED, None, over
            if deadline and time.time() > deadline:
                return FAILED, None, f"exceeded the max runtime of {self.spec['max_runtime']} s"
            codes = [a.code() for a in self.agents]
            if VANISHED in codes:
                node = codes.index(VANISHED)
                return (
                    FAILED,
                    None,
                    f"the torchrun agent of node {node} vanished without recording an exit "
                    "(killed with SIGKILL?)",
                )
            if all(c is not None for c in codes):
                status, code = agents_outcome(codes)  # type: ignore[arg-type]
                return status, code, None
            if any(c not in (None, 0) for c in codes):
                first_failure_at = first_failure_at or time.monotonic()
                if time.monotonic() - first_failure_at > AGENT_EXIT_WAIT:
                    return FAILED, next(c for c in codes if c not in (None, 0)), None  # type: ignore[return-value]
            self._reap_orphans()
            self._pause(POLL)

    def _pause(self, seconds: float) -> None:
        """Sleep up to ``seconds``; wake as soon as an agent this supervisor started exits."""
        fds = [
            fd
            for a in self.agents
            if isinstance(a, _Started) and (fd := a.running_fd()) is not None
        ]
        if fds:
            select.select(fds, [], [], seconds)
        else:
            time.sleep(seconds)

    def _reap_orphans(self) -> None:
        """As a subreaper we inherit the job's detached processes: collect the ended ones."""
        if time.monotonic() - self._last_reap < 1.0:
            return
        self._last_reap = time.monotonic()
        ours = {a.proc.pid for a in self.agents if isinstance(a, _Started)}
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process().children():
                if child.pid not in ours and child.status() == psutil.STATUS_ZOMBIE:
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(child.pid, os.WNOHANG)

    def _take_over(self) -> bool:
        """Become this job's supervisor in the row; False when another one already did."""
        me = os.getpid()
        previous = self.record.info.get("supervisor_pid")
        with self.store.transaction() as conn:
            changed = conn.execute(
                "UPDATE jobs SET info = json_patch(info, ?) WHERE id = ? AND status IN (?, ?) "
                "AND json_extract(info, '$.supervisor_pid') IS ?",
                (
                    json.dumps({"supervisor_pid": me, "supervisor_started": create_time(me)}),
                    self.job_id,
                    *ACTIVE,
                    previous,
                ),
            ).rowcount
        return changed > 0

    def run(self, adopt: bool = False) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        phases.mark(self.jobdir.path, "supervisor: running")
        redirect(self.jobdir.supervisor_log)
        become_subreaper()  # a job's process that detaches itself is re-parented to us
        if not self._take_over():
            return 0  # ended meanwhile, or another supervisor took over first
        if adopt:
            self._adopt_agents()
        else:
            gpus = self._claim_gpus()
            if gpus is None:
                update_job(
                    self.store,
                    self.job_id,
                    status=CANCELLED,
                    ended=time.time(),
                    error="cancelled while queued",
                )
                return 0
            self._start_agents(gpus)
        status, exit_code, reason = self._wait()
        phases.mark(self.jobdir.path, "supervisor: agents ended")
        for agent in self.agents:
            if isinstance(agent, _Started):
                agent.close()
        if status in (CANCELLED, FAILED) and reason:
            stop_job_processes(
                self.job_id,
                grace=float(os.environ.get("NBSCALE_CANCEL_GRACE", "10")),
                cgroup=self.cgroup,
            )
        else:
            # agents have exited; make sure no worker outlived its agent
            stop_job_processes(self.job_id, grace=2.0, cgroup=self.cgroup)
        # a rank killed before it could remove its kernel's socket folder (SIGKILL after the
        # grace time) leaves it: the folders the ranks noted go now that no process uses them
        remove_noted(str(self.jobdir.path / "kernels"))
        # the last lines are in the logs before the end (the supervisor's own log is written
        # by this process: its pump drains when this process exits)
        phases.mark(self.jobdir.path, "supervisor: processes stopped")
        wait_for_log_pumps(self.jobdir.path, exclude=(self.jobdir.supervisor_log,))
        phases.mark(self.jobdir.path, "supervisor: logs drained")
        record_end(self.store, self.job_id, self.spec, self.jobdir, status, exit_code, reason)
        phases.mark(self.jobdir.path, "supervisor: end recorded")
        return 0


def main() -> None:
    job_id = sys.argv[1]
    adopt = "--adopt" in sys.argv[2:]
    if phases.on():
        phases.mark(paths.job_dir(job_id), "supervisor: imported")
    if os.fork() > 0:  # the submitter waits only for this first process
        os._exit(0)
    sys.exit(Supervisor(job_id).run(adopt=adopt))


if __name__ == "__main__":
    main()
