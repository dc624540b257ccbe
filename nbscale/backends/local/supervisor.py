"""One supervisor per local job: ``python -m nbscale.backends.local.supervisor JOB_ID``.

The submitter starts it in a new session and it forks once more, so it is
nobody's child: it outlives the CLI, kernel or server that submitted the job.
It waits for GPUs when the job needs them, starts one torchrun agent per
simulated node joined by one c10d rendezvous on a free loopback port, and
records how the job ended. Every process it starts carries NBSCALE_JOB_ID.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

from ...runtime.jobdir import JobDir
from ...store import get_store
from ...store.jobs import CANCELLED, FAILED, RUNNING, SUCCEEDED, get_job, update_job
from . import gpus as gpu_alloc
from .processes import JOB_ENV, create_time, stop_job_processes

POLL = 0.05
AGENT_EXIT_WAIT = 15.0  # after one agent failed, how long the others get to notice


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun_command(spec: dict, job_id: str, port: int, node: int) -> list[str]:
    nodes = spec["nodes"]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
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


class Supervisor:
    def __init__(self, job_id: str):
        self.job_id = job_id
        self.store = get_store()
        self.record = get_job(self.store, job_id)
        self.spec = self.record.spec
        self.jobdir = JobDir(self.record.info["job_dir"])
        self.stop_reason: str | None = None
        self.agents: list[subprocess.Popen] = []

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
        port = free_port()
        per_node = self.spec["procs_per_node"] * self.spec["gpus_per_proc"]
        update_job(
            self.store,
            self.job_id,
            status=RUNNING,
            started=time.time(),
            info_patch={"port": port, "phase": "starting"},
        )
        for node in range(self.spec["nodes"]):
            node_gpus = gpus[node * per_node : (node + 1) * per_node]
            log = open(self.jobdir.agent_log(node), "ab")  # noqa: SIM115 - owned by the child
            self.agents.append(
                subprocess.Popen(
                    torchrun_command(self.spec, self.job_id, port, node),
                    env=agent_env(self.spec, self.job_id, self.jobdir, node_gpus),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.record.info.get("cwd") or None,
                )
            )
            log.close()

    def _wait(self) -> tuple[str, int | None, str | None]:
        deadline = None
        if self.spec.get("max_runtime"):
            deadline = time.monotonic() + self.spec["max_runtime"]
        first_failure_at = None
        while True:
            if self.stop_reason:
                return CANCELLED, None, "cancelled"
            if self.spec.get("max_cost") is not None:  # the budget guard (nbscale.cost)
                from ...cost import budget_stop

                over = budget_stop(self.store, self.job_id, self.spec)
                if over:
                    return FAILED, None, over
            if deadline and time.monotonic() > deadline:
                return FAILED, None, f"exceeded the max runtime of {self.spec['max_runtime']} s"
            codes = [a.poll() for a in self.agents]
            if all(c is not None for c in codes):
                bad = [c for c in codes if c != 0]
                return (SUCCEEDED, 0, None) if not bad else (FAILED, bad[0], None)
            if any(c not in (None, 0) for c in codes):
                first_failure_at = first_failure_at or time.monotonic()
                if time.monotonic() - first_failure_at > AGENT_EXIT_WAIT:
                    return FAILED, next(c for c in codes if c not in (None, 0)), None
            time.sleep(POLL)

    def _failure_details(self, exit_code: int | None, reason: str | None) -> dict:
        errors = self.jobdir.errors()
        if reason:
            return {"error": reason, "failed_rank": None, "info_patch": {"phase": "ended"}}
        if errors:
            root = errors[0]  # the earliest exception is the root cause, as torchrun reports
            return {
                "failed_rank": root["rank"],
                "error": f"rank {root['rank']}: {root['type']}: {root['message']}",
                "info_patch": {"traceback": root["traceback"], "phase": "ended"},
            }
        tail = ""
        for node in range(self.spec["nodes"]):
            with contextlib.suppress(OSError):
                tail += self.jobdir.agent_log(node).read_text(errors="replace")[-2000:]
        return {
            "failed_rank": None,
            "error": f"torchrun exited with code {exit_code} without a Python exception "
            f"(killed by a signal or out of memory?)\n{tail}",
            "info_patch": {"phase": "ended"},
        }

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        me = os.getpid()
        update_job(
            self.store,
            self.job_id,
            info_patch={"supervisor_pid": me, "supervisor_started": create_time(me)},
        )
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
        if status in (CANCELLED, FAILED) and reason:
            stop_job_processes(
                self.job_id, grace=float(os.environ.get("NBSCALE_CANCEL_GRACE", "10"))
            )
        else:
            # agents have exited; make sure no worker outlived its agent
            stop_job_processes(self.job_id, grace=2.0)
        fields: dict = {
            "status": status,
            "ended": time.time(),
            "exit_code": exit_code,
            "restarts": self.jobdir.restarts(),
        }
        if status == FAILED:
            fields.update(self._failure_details(exit_code, reason))
        else:
            fields["info_patch"] = {"phase": "ended"}
            if status == CANCELLED:
                fields["error"] = "cancelled"
        update_job(self.store, self.job_id, **fields)
        return 0


def main() -> None:
    job_id = sys.argv[1]
    if os.fork() > 0:  # the submitter waits only for this first process
        os._exit(0)
    sys.exit(Supervisor(job_id).run())


if __name__ == "__main__":
    main()
