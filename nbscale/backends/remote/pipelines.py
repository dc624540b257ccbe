"""Pipeline runs on an orchestrator elsewhere (KFP, SageMaker), recorded like local runs.

``RemotePipelines`` is the base of every pipeline backend whose runs execute on another
platform. ``run`` starts the run there and records a row in the store (``pipeline_runs`` /
``pipeline_steps``, the platform's id under ``options.remote``), so ``nbscale pipeline
runs/status``, ``%pipeline`` and the panel's ``/nbscale/api/pipelines`` see it like any
other run. A follower (this process without ``detach``, else ``python -m
nbscale.backends.remote.pipelines RUN_ID`` in its own session) writes each step's state as
the platform reports it, then the run's outcome. A run whose follower is gone is read from
the platform when someone looks at it (``status``): it is never LOST while the platform
still runs it. ``cancel`` asks the platform to stop it (StopPipelineExecution,
terminate_run); the follower records CANCELLED.

A platform's subclass gives only what differs: its ``runner`` (``start(path,
parameters)``, ``refresh(handle, on_step)``, ``cancel(remote_id)``), how to name and
rebuild a handle (``remote_id``, ``resume``), and its words.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from abc import abstractmethod
from typing import Any, ClassVar

from ...errors import NbscaleError, SpecError
from ...pipelines.loader import load
from ...pipelines.parameters import resolve
from ...pipelines.runner import new_run, runner_alive, start_detached
from ...pipelines.status import ACTIVE, RUNNING
from ...store import pipelines as db
from ..base import DryRun
from ..pipeline_base import Announce, OnStep, PipelineBackend

LOCAL_ONLY = ("only", "from_step", "no_cache", "max_parallel")
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")
FOLLOW_FAILURES = 5  # consecutive unanswered reads before a follower gives up (reads sync)


def remote_of(record: dict[str, Any]) -> dict[str, Any] | None:
    """Where a run on another platform runs: ``{"type", "id", "label"}`` (None for local)."""
    return (record.get("options") or {}).get("remote")


class RemotePipelines(PipelineBackend):
    """Runs that execute on another platform, recorded and followed here."""

    #: why the local runner's cache options do not apply there
    cache_note: ClassVar[str]
    #: what the platform calls a run ("pipeline execution")
    label: ClassVar[str]

    @property
    def interrupted(self) -> str:
        return f"the {self.label} was stopped"

    # -- what each platform gives ---------------------------------------------------------
    @property
    @abstractmethod
    def runner(self) -> Any:
        """``start(path, parameters) -> handle``, ``plan(path, parameters) -> DryRun`` (what
        ``start`` would send), ``refresh(handle, on_step)``, ``cancel(remote_id)``;
        ``handle.status`` / ``handle.error`` after a refresh."""

    @abstractmethod
    def remote_id(self, handle: Any) -> str:
        """The platform's id of the run a handle stands for."""

    @abstractmethod
    def resume(self, remote_id: str) -> Any:
        """A handle to refresh for the platform's id of a run."""

    @property
    def poll(self) -> float:
        return 1.0

    # -- run -------------------------------------------------------------------------------
    def _check(
        self, path: str, parameters: dict[str, Any] | None, options: dict[str, Any]
    ) -> tuple[Any, dict[str, Any], dict[str, Any]]:
        """The flow, every parameter's value, and the values to send (those given: the
        platform's defaults stay its own); options only the local runner has are refused."""
        for option in LOCAL_ONLY:
            if options.get(option) not in (None, False, []):
                raise SpecError(
                    f"--{option.replace('_', '-')}",
                    f"is not available for a pipeline on {self.title} ({self.cache_note})",
                    "leave it out, or run the pipeline locally",
                )
        if options.get("kernel_name"):
            raise SpecError(
                "kernel_name", f"is not available for a pipeline on {self.title}", "leave it out"
            )
        pipeline = load(path)
        values = resolve(pipeline.parameters, parameters)
        return pipeline, values, {k: values[k] for k in parameters or {}}

    def dry_run(
        self, path: str, parameters: dict[str, Any] | None, options: dict[str, Any]
    ) -> DryRun:
        """The compiled pipeline the platform would get (``runner.plan``), nothing sent."""
        _, _, sent = self._check(path, parameters, options)
        return self.runner.plan(path, sent)

    def run(
        self,
        path: str,
        parameters: dict[str, Any] | None,
        *,
        detach: bool,
        on_step: OnStep | None,
        announce: Announce | None,
        options: dict[str, Any],
    ) -> str:
        pipeline, values, sent = self._check(path, parameters, options)
        runner = self.runner
        handle = runner.start(path, sent)
        remote_id = self.remote_id(handle)
        if announce:
            announce(self.label, remote_id)
        remote = {"remote": {"type": self.type, "id": remote_id, "label": self.label}}
        record, steps = new_run(pipeline, self.config.name, RUNNING, values, remote)
        record["started"] = record["created"]
        run_id = record["id"]
        try:
            db.insert_run(self.store, record, steps)
        except BaseException:
            with contextlib.suppress(Exception):  # nothing left running that no one can see
                runner.cancel(remote_id)
            raise
        if detach:
            self._spawn_follower(run_id)
            return run_id
        import psutil

        db.update_run(
            self.store,
            run_id,
            pid=os.getpid(),
            pid_started=psutil.Process().create_time(),
            options={**record["options"], "in_process": True},
        )
        try:
            self.follow(run_id, on_step)
        except KeyboardInterrupt:
            runner.cancel(remote_id)
            with contextlib.suppress(NbscaleError):
                self.sync(db.get_run(self.store, run_id))
            raise
        return run_id

    @staticmethod
    def _spawn_follower(run_id: str) -> None:
        """A follower in its own session; without one the run is read from the platform when
        looked at, so a follower that cannot start costs freshness, not the run. It starts in
        this process's folder, so it reads the same ``nbscale.toml``."""
        try:
            start_detached(run_id, __name__, "follower.log", os.getcwd())
        except OSError as exc:
            print(f"nbscale: no follower for run {run_id}: {exc}", file=sys.stderr)

    # -- follow ----------------------------------------------------------------------------
    def _apply(self, record: dict[str, Any], handle: Any, on_step: OnStep | None = None) -> Any:
        """Read the run on the platform once and write what changed into the store."""
        heard: list[tuple[str, dict[str, Any]]] = []
        self.runner.refresh(handle, lambda name, fields: heard.append((name, dict(fields))))
        rows = {s["name"]: s for s in db.steps_of(self.store, [record["id"]])[record["id"]]}
        now = time.time()
        for name, fields in heard:
            row = rows.get(name)
            if row is None:  # a platform's own task, not a step of the flow
                continue
            status = fields["status"]
            changes: dict[str, Any] = {"status": status, "error": fields.get("error")}
            if fields.get("attempts") is not None:
                changes["attempts"] = int(fields["attempts"])
            elif status != "PENDING" and not row["attempts"]:
                changes["attempts"] = 1
            if all(row.get(k) == v for k, v in changes.items()):
                continue  # a fresh handle hears every step once: only changes are written
            if status != "PENDING" and row["started"] is None:
                changes["started"] = now
            if status in TERMINAL or status == "SKIPPED":
                changes["ended"] = row["ended"] or now
            db.update_step(self.store, record["id"], name, **changes)
            if on_step:
                on_step(name, fields)
        if handle.status in TERMINAL:
            db.update_run(
                self.store,
                record["id"],
                only_if=ACTIVE,
                status=handle.status,
                error=handle.error,
                ended=now,
            )
            # steps the platform never reported ran no further than the run did
            for name, row in rows.items():
                if row["status"] in ACTIVE and name not in dict(heard):
                    db.update_step(
                        self.store,
                        record["id"],
                        name,
                        status="CANCELLED" if handle.status == "CANCELLED" else "SKIPPED",
                        ended=now,
                    )
        elif handle.status != record["status"]:
            db.update_run(self.store, record["id"], only_if=ACTIVE, status=handle.status)
        return handle

    def follow(self, run_id: str, on_step: OnStep | None = None, poll: float | None = None) -> str:
        """Keep the run's row current until the platform says it ended; return its status."""
        record = db.get_run(self.store, run_id)
        handle = self.resume(remote_of(record)["id"])
        interval = self.poll if poll is None else poll
        failures = 0
        while True:
            try:
                self._apply(db.get_run(self.store, run_id), handle, on_step)
                failures = 0
            except NbscaleError:
                failures += 1  # a blip of the platform's API is not the end of following
                if failures >= FOLLOW_FAILURES:
                    raise
            if handle.status in TERMINAL:
                return handle.status
            time.sleep(max(interval, 0.05) * (1 + failures))

    def sync(self, record: dict[str, Any]) -> dict[str, Any]:
        """A run no follower keeps current: read it from the platform now (unchanged when the
        platform cannot be reached: the run goes on there, it is not lost)."""
        try:
            self._apply(record, self.resume(remote_of(record)["id"]))
        except NbscaleError:
            return record
        return db.get_run(self.store, record["id"])

    def status(self, record: dict[str, Any]) -> dict[str, Any]:
        if record["status"] not in ACTIVE or runner_alive(record):
            return record
        return self.sync(record)

    def cancel(self, record: dict[str, Any], timeout: float) -> None:
        """Ask the platform to stop the run; its follower (or the next read) records
        CANCELLED."""
        remote_id = remote_of(record)["id"]
        self.runner.cancel(remote_id)
        db.add_event(self.store, record["id"], "cancel", {"remote_id": remote_id})
        self.sync(record)

    def cancel_unrecorded(self, remote_id: str) -> str:
        self.runner.cancel(remote_id)
        return f"{self.label} {remote_id}: stopping"


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """``python -m nbscale.backends.remote.pipelines RUN_ID``: a detached run's follower."""
    from ...store import get_store
    from .. import pipeline_backend_for

    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGTERM, _terminate)
    try:
        record = db.get_run(get_store(), argv[0])
        status = pipeline_backend_for(record).follow(argv[0])
    except SystemExit as exc:
        return int(exc.code or 1)
    return 0 if status == "SUCCEEDED" else 1


if __name__ == "__main__":
    sys.exit(main())
