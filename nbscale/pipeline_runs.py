"""Pipeline runs as the faces see them: start one, list them, read one."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import NotFound, SpecError
from .pipelines.loader import load
from .pipelines.parameters import resolve as resolve_parameters
from .pipelines.runner import execute_run, selected_steps, start_detached
from .pipelines.status import ACTIVE, FAILED, LOST, PENDING, RUNNING
from .store import get_store
from .store import pipelines as db

OPTION_KEYS = {"max_parallel", "only", "from_step", "no_cache", "kernel_name"}


@dataclass
class PipelineRun:
    id: str
    name: str
    source: str
    backend: str
    status: str
    created: float
    started: float | None = None
    ended: float | None = None
    error: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"PipelineRun(id={self.id!r}, name={self.name!r}, status={self.status!r})"

    @property
    def terminal(self) -> bool:
        return self.status not in ACTIVE

    def step(self, name: str) -> dict[str, Any]:
        return next(s for s in self.steps if s["name"] == name)

    def refresh(self) -> PipelineRun:
        return get_run(self.id)

    def wait(self, timeout: float | None = None, interval: float = 0.2) -> PipelineRun:
        deadline = None if timeout is None else time.monotonic() + timeout
        run = self
        while not run.terminal:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"pipeline run {self.id} still {run.status} after {timeout} s")
            time.sleep(interval)
            run = run.refresh()
        return run

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "source": self.source,
            "backend": self.backend,
            "status": self.status,
            "created": self.created,
            "started": self.started,
            "ended": self.ended,
            "duration": (self.ended or time.time()) - self.started if self.started else None,
            "error": self.error,
            "parameters": self.parameters,
            "options": self.options,
            "steps": [
                {
                    "name": s["name"],
                    "status": s["status"],
                    "cached": bool(s["cached"]),
                    "cache_reason": s["cache_reason"],
                    "depends_on": s["depends_on"],
                    "started": s["started"],
                    "ended": s["ended"],
                    "notebook": s["notebook"],
                    "error": s["error"],
                    "attempts": s["attempts"],
                }
                for s in self.steps
            ],
        }

    def _repr_mimebundle_(
        self, include=None, exclude=None
    ):  # renders in Lab, papermill output, terminals
        from .pipelines.render import run_html, run_text

        return {"text/plain": run_text(self), "text/html": run_html(self)}


def _from_record(record: dict[str, Any], steps: list[dict[str, Any]]) -> PipelineRun:
    names = {f.name for f in fields(PipelineRun)} - {"steps"}
    return PipelineRun(**{k: record[k] for k in names}, steps=steps)


def _runner_alive(record: dict[str, Any]) -> bool:
    if not record.get("pid"):
        return False
    import psutil

    try:
        proc = psutil.Process(record["pid"])
        return (
            abs(proc.create_time() - (record["pid_started"] or 0)) < 1
            and proc.status() != psutil.STATUS_ZOMBIE
        )
    except psutil.Error:
        return False


def _remote(record: dict[str, Any]) -> dict[str, Any] | None:
    """Where a run on another platform (SageMaker, KFP) runs: ``{"type", "id", "label"}``."""
    return (record.get("options") or {}).get("remote")


def _check_alive(record: dict[str, Any]) -> dict[str, Any]:
    """A run whose runner process is gone is LOST, never left RUNNING forever; a run on
    another platform whose follower is gone is read from that platform instead."""
    if record["status"] not in ACTIVE:
        return record
    if _remote(record):
        if _runner_alive(record):
            return record
        from .backends.remote import pipelines as pipeline_cli

        return pipeline_cli.sync(record)
    if not record.get("pid") or _runner_alive(record):
        return record
    store = get_store()
    error = "the runner process died before the run ended"
    if db.update_run(
        store, record["id"], only_if=ACTIVE, status=LOST, ended=time.time(), error=error
    ):
        for step in db.steps_of(store, [record["id"]])[record["id"]]:
            if step["status"] in ACTIVE:
                db.update_step(
                    store,
                    record["id"],
                    step["name"],
                    status=LOST if step["status"] == RUNNING else FAILED,
                    ended=time.time(),
                    error=error,
                )
    return db.get_run(store, record["id"])


def get_run(run_id: str) -> PipelineRun:
    """A run by its id (or a unique prefix), or a remote run by its platform's id."""
    store = get_store()
    try:
        record = db.get_run(store, run_id)
    except NotFound:
        from .backends.remote import pipelines as pipeline_cli

        record = pipeline_cli.find(run_id)
        if record is None:
            raise
    record = _check_alive(record)
    return _from_record(record, db.steps_of(store, [record["id"]])[record["id"]])


def runs(limit: int = 50, offset: int = 0) -> list[PipelineRun]:
    store = get_store()
    records = [_check_alive(r) for r in db.list_runs(store, limit, offset)]
    steps = db.steps_of(store, [r["id"] for r in records])
    return [_from_record(r, steps[r["id"]]) for r in records]


def _backend(name: str | None) -> tuple[str, str]:
    from .config import load as load_config

    backend = load_config().backend(name or "local")
    return backend.name, backend.type


def start_run(
    path: str,
    parameters: dict[str, Any] | None = None,
    backend: str = "local",
    detach: bool = True,
    on_step: Callable[[str, dict[str, Any]], None] | None = None,
    announce: Callable[[str, str], None] | None = None,
    **options: Any,
) -> PipelineRun:
    """Check the pipeline, record the run, and run it (in a detached process when ``detach``).

    Without ``detach`` the run happens in this process and ``on_step(name, fields)`` hears each
    step change status; Ctrl-C cancels it. On a SageMaker or Kubeflow backend the run starts
    there and is recorded here all the same (``nbscale.backends.remote.pipelines``);
    ``announce(label, id)`` hears the platform's id of it.
    """
    unknown = set(options) - OPTION_KEYS
    if unknown:
        raise SpecError(
            f"option {sorted(unknown)[0]!r}",
            "is not known",
            f"use {', '.join(sorted(OPTION_KEYS))}",
        )
    if isinstance(options.get("only"), str):
        options["only"] = [options["only"]]
    if options.get("max_parallel") is not None and int(options["max_parallel"]) < 1:
        raise SpecError("--max-parallel", "must be at least 1")
    backend_name, backend_type = _backend(backend)
    if backend_type != "local":
        from .backends.remote import pipelines as pipeline_cli

        return pipeline_cli.start(
            backend_name,
            backend_type,
            path,
            parameters,
            detach=detach,
            on_step=on_step,
            options=options,
            announce=announce,
        )
    pipeline = load(path)  # every check happens here, before anything is recorded
    values = resolve_parameters(pipeline.parameters, parameters)
    selected_steps(pipeline, options.get("only"), options.get("from_step"))
    run_id = f"p-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    record = {
        "id": run_id,
        "name": pipeline.name,
        "source": pipeline.source,
        "backend": backend_name,
        "status": PENDING,
        "created": time.time(),
        "parameters": values,
        "options": options,
    }
    order = pipeline.order()
    steps = [
        {"name": n, "position": i, "status": PENDING, "depends_on": pipeline.steps[n].depends_on}
        for i, n in enumerate(order)
    ]
    store = get_store()
    db.insert_run(store, record, steps)
    if not detach:
        # this process runs it: if it dies, the run reads LOST; cancel_run leaves it alone
        import psutil

        db.update_run(
            store,
            run_id,
            pid=os.getpid(),
            pid_started=psutil.Process().create_time(),
            options={**options, "in_process": True},
        )
        execute_run(run_id, on_step)
        return get_run(run_id)
    try:
        start_detached(run_id, "nbscale.pipelines.background", "runner.log", pipeline.directory)
    except OSError as exc:
        db.update_run(
            store,
            run_id,
            status=FAILED,
            ended=time.time(),
            error=f"could not start the runner: {exc}",
        )
        raise
    return get_run(run_id)


def cancel_run(run_id: str, timeout: float = 60.0) -> PipelineRun:
    """Stop a detached run: its runner gets SIGTERM, kills its kernels and marks the run CANCELLED.

    A run on SageMaker or Kubeflow is stopped there (StopPipelineExecution, terminate_run),
    detached or not; it reads CANCELLED once the platform says it stopped."""
    import signal

    import psutil

    from .errors import Conflict

    run = get_run(run_id)
    if run.terminal:
        raise Conflict(f"pipeline run {run.id} already ended ({run.status})")
    record = db.get_run(get_store(), run.id)
    if _remote(record):  # the platform stops it, whoever follows it
        from .backends.remote import pipelines as pipeline_cli

        return pipeline_cli.cancel(record)
    if not record.get("pid") or record["options"].get("in_process"):
        raise Conflict(
            f"pipeline run {run.id} runs inside another process",
            "stop it there (Ctrl-C); only detached runs can be cancelled",
        )
    try:
        proc = psutil.Process(record["pid"])
        if abs(proc.create_time() - (record["pid_started"] or 0)) < 1:
            proc.send_signal(signal.SIGTERM)
    except psutil.Error:
        pass
    return run.wait(timeout)


def describe(path: str) -> dict[str, Any]:
    """What a pipeline contains, after every compile-time check."""
    return load(path).summary()


def dumps(run: PipelineRun) -> str:
    return json.dumps(run.to_dict(), indent=2, default=str)
