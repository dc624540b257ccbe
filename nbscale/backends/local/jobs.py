"""The local backend: real torchrun processes on this machine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ... import paths
from ...cpus import allowed_cpus
from ...errors import SpecError
from ...runtime import phases
from ...runtime.jobdir import JobDir
from ...specs import JobSpec
from ...store.jobs import (
    ACTIVE,
    CANCELLED,
    LOST,
    PENDING,
    JobRecord,
    add_event,
    get_job,
    update_job,
)
from ...words import count
from ..base import JobBackend, LogChunk
from . import gpus as gpu_alloc
from .exits import exit_file, read_exit
from .processes import JOB_ENV, alive, job_processes, stop_job_processes

LAUNCH_TIMEOUT = 60.0  # a supervisor that has not said hello by then never started
ADOPT_RETRY_S = 10.0  # a new supervisor that has not taken over by then is started again


class LocalBackend(JobBackend):
    type = "local"
    unsupported = {
        "image": "local jobs run in this Python environment, not in a container",
        "instance_type": "local jobs run on this machine",
        "requirements": "local jobs run in this Python environment: pip install the packages here",
    }

    def limits(self) -> dict[str, int]:
        # every rank is a process on this machine: a few per CPU core, no more
        return {"world_size": 4 * allowed_cpus()}

    def validate(self, spec: JobSpec) -> None:
        if spec.checkpoint_dir:
            folder = Path(spec.checkpoint_dir).expanduser()
            existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
            if existing is not None and not existing.is_dir():
                raise SpecError(
                    "checkpoint_dir",
                    f"{existing} is a file, so {folder} cannot be a folder",
                    "give --checkpoint-dir a folder path",
                )
        if spec.entry.kind == "bundle" and not Path(spec.entry.target).is_file():
            raise SpecError(
                "entry",
                f"cell bundle {spec.entry.target} does not exist",
                "run the %%train cell again to capture a new bundle",
            )
        if spec.gpus_per_proc:
            have = gpu_alloc.machine_gpus()
            need = spec.world_size * spec.gpus_per_proc
            if not have:
                raise SpecError(
                    "gpus_per_proc",
                    "this machine has no CUDA GPU",
                    "use --gpus-per-proc 0, or a GPU backend",
                )
            if need > len(have):
                raise SpecError(
                    "gpus_per_proc",
                    f"the job needs {count(need, 'GPU')} (nodes x procs x gpus) and this machine has "
                    f"{len(have)}",
                    "ask for fewer processes or GPUs per process",
                )

    def submit(self, record: JobRecord, secrets: dict[str, str] | None = None) -> JobRecord:
        jobdir = JobDir(record.info["job_dir"]).make()
        phases.mark(jobdir.path, "submit: job recorded", record.created)
        phases.mark(jobdir.path, "submit: backend called")
        if record.spec["entry"]["kind"] == "bundle":
            self._adopt_bundle(record, jobdir)
        jobdir.spec_file.write_text(json.dumps(record.spec))
        phases.mark(jobdir.path, "submit: supervisor starts")
        self._start_supervisor(record, secrets=secrets)
        phases.mark(jobdir.path, "submit: supervisor launched")
        return get_job(self.store, record.id)

    def _start_supervisor(
        self, record: JobRecord, adopt: bool = False, secrets: dict[str, str] | None = None
    ) -> None:
        jobdir = JobDir(record.info["job_dir"])
        command = [sys.executable, "-m", "nbscale.backends.local.supervisor", record.id]
        with open(jobdir.supervisor_log, "ab") as log:
            proc = subprocess.Popen(
                [*command, "--adopt"] if adopt else command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=record.info.get("cwd") or None,
                env={**os.environ, **(secrets or {}), JOB_ENV: record.id},
            )
        proc.wait()  # the supervisor forks and this first process returns at once

    def _adopt_bundle(self, record: JobRecord, jobdir: JobDir) -> None:
        """Keep a cell bundle with its job: it lives (and is removed) with the job directory,
        a re-run of the job finds it, and --async cells leave nothing behind in bundles/."""
        source = Path(record.spec["entry"]["target"])
        target = jobdir.path / "bundle" / source.name
        target.parent.mkdir(exist_ok=True)
        if source.parent == paths.home() / "bundles":
            os.replace(source, target)  # ours, written for this submission
        else:
            shutil.copy2(source, target)
        record.spec["entry"]["target"] = str(target)
        update_job(self.store, record.id, spec=record.spec)

    def status(self, record: JobRecord) -> JobRecord:
        if record.status not in ACTIVE:
            return record
        info = record.info
        pid = info.get("supervisor_pid")
        if pid is None:
            # a supervisor still starting (a loaded machine) carries the job's tag already
            if time.time() - record.created < LAUNCH_TIMEOUT or job_processes(record.id):
                return record
            reason = "the job's supervisor never started; see supervisor.log in the job directory"
        elif alive(pid, info.get("supervisor_started")):
            return self._with_live_fields(record)
        else:
            fresh = get_job(self.store, record.id)  # it may have finished, or been taken over
            if fresh.status not in ACTIVE or fresh.info.get("supervisor_pid") != pid:
                return self.status(fresh) if fresh.status in ACTIVE else fresh
            ended = self._outcome_without_supervisor(fresh)
            if ended is not None:
                return ended
            reason = f"the job's supervisor (pid {pid}) vanished without recording an end"
        stop_job_processes(record.id, grace=2.0, cgroup=record.info.get("cgroup"))
        update_job(
            self.store,
            record.id,
            status=LOST,
            ended=time.time(),
            error=reason,
            info_patch={"phase": "ended"},
        )
        return get_job(self.store, record.id)

    def _outcome_without_supervisor(self, record: JobRecord) -> JobRecord | None:
        """The supervisor is gone: a job whose agents still run gets a new supervisor that
        adopts them; one whose agents all recorded their exit gets that outcome. None when
        neither (the agents vanished too: the job is lost)."""
        started = record.info.get("agents") or []
        if not started:
            # still queued (waiting for GPUs): a new supervisor takes its place, unless the
            # job needs --secret-env values, which only the first one was given
            if record.status == PENDING and not record.spec.get("secret_env"):
                if self._claim_adoption(record):
                    self._start_supervisor(record)
                return self._with_live_fields(record)
            return None
        jobdir = JobDir(record.info["job_dir"])
        codes = [read_exit(exit_file(jobdir.path, node)) for node in range(len(started))]
        if any(c is None for c in codes):
            if any(alive(p, t) for p, t in started):
                if self._claim_adoption(record):
                    self._start_supervisor(record, adopt=True)
                return self._with_live_fields(record)
            return None
        # imported here: ``python -m ...supervisor`` warns when the package imported it first
        from .supervisor import agents_outcome, record_end

        status, exit_code = agents_outcome(codes)  # type: ignore[arg-type]
        stop_job_processes(
            record.id, grace=2.0, cgroup=record.info.get("cgroup")
        )  # a worker that outlived its agent
        record_end(self.store, record.id, record.spec, jobdir, status, exit_code, None)
        add_event(self.store, record.id, "recorded-without-supervisor", {"status": status})
        return get_job(self.store, record.id)

    def _claim_adoption(self, record: JobRecord) -> bool:
        """One looker at a time starts the adopting supervisor (others see a recent claim)."""
        now = time.time()
        with self.store.transaction() as conn:
            return (
                conn.execute(
                    "UPDATE jobs SET info = json_set(info, '$.adopt_requested', ?) WHERE id = ? "
                    "AND json_extract(info, '$.supervisor_pid') IS ? "
                    "AND coalesce(json_extract(info, '$.adopt_requested'), 0) < ?",
                    (now, record.id, record.info.get("supervisor_pid"), now - ADOPT_RETRY_S),
                ).rowcount
                > 0
            )

    def _with_live_fields(self, record: JobRecord) -> JobRecord:
        jobdir = JobDir(record.info["job_dir"])
        record.restarts = jobdir.restarts()
        if record.status == PENDING:
            record.info["phase"] = "queued"
        elif jobdir.log_ranks():
            record.info["phase"] = "running"
        else:
            record.info["phase"] = "rendezvous"
        return record

    def ranks(self, record: JobRecord) -> list[int]:
        return JobDir(record.info["job_dir"]).log_ranks()

    def logs(
        self, record: JobRecord, rank: int, offset: int = 0, max_bytes: int = 1 << 20
    ) -> LogChunk:
        return LogChunk.read(JobDir(record.info["job_dir"]).log(rank), rank, offset, max_bytes)

    def metrics(self, record: JobRecord) -> list[dict[str, Any]]:
        return JobDir(record.info["job_dir"]).metrics()

    def cancel(self, record: JobRecord) -> JobRecord:
        record = self.status(record)
        if record.status not in ACTIVE:
            return record
        add_event(self.store, record.id, "cancel-requested")
        grace = float(os.environ.get("NBSCALE_CANCEL_GRACE", "10"))
        pid = record.info.get("supervisor_pid")
        if pid and alive(pid, record.info.get("supervisor_started")):
            os.kill(pid, 15)  # the supervisor stops its agents and records CANCELLED
            deadline = time.monotonic() + grace + 5
            while time.monotonic() < deadline and (
                alive(pid) or job_processes(record.id, record.info.get("cgroup"))
            ):
                time.sleep(0.05)
        stop_job_processes(record.id, grace=grace, cgroup=record.info.get("cgroup"))
        update_job(
            self.store,
            record.id,
            status=CANCELLED,
            ended=time.time(),
            error="cancelled",
            info_patch={"phase": "ended"},
        )
        return get_job(self.store, record.id)
