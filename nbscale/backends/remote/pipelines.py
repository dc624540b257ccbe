"""Pipeline runs on an orchestrator elsewhere (KFP, SageMaker), recorded like local runs.

One hook for every remote pipeline backend. ``nbscale.pipeline_runs.start_run`` hands a
run on a non-local backend to :func:`start`, which starts it on the platform and records
a row in the store (``pipeline_runs`` / ``pipeline_steps``, the platform's id under
``options.remote``), so ``nbscale pipeline runs/status``, ``%pipeline`` and the panel's
``/nbscale/api/pipelines`` see it like any other run. A follower (this process with
``detach=False``, else ``python -m nbscale.backends.remote.pipelines RUN_ID`` in its own
session) writes each step's state as the platform reports it, then the run's outcome.
A run whose follower is gone is read from the platform when someone looks at it: it is
never LOST while the platform still runs it. Cancel (CLI, panel) asks the platform to
stop it (StopPipelineExecution, terminate_run); the follower records CANCELLED.

A backend module gives ``platform(backend_name) -> Platform``: its runner
(``start(path, parameters)``, ``refresh(handle, on_step)``, ``cancel(remote_id)``), how
to name and rebuild a handle, and its words.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...errors import BackendUnavailable, NbscaleError, SpecError

LOCAL_ONLY = ("only", "from_step", "no_cache", "max_parallel")
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")
FOLLOW_FAILURES = 5  # consecutive unanswered reads before a follower gives up (reads sync)
# the module that gives ``platform(name)`` for each backend type that runs pipelines
MODULES = {
    "sagemaker": "nbscale.backends.sagemaker.pipelines",
    "kubeflow": "nbscale.backends.kubeflow.pipelines",
}


@dataclass
class Platform:
    runner: Any  # start(path, parameters) -> handle; refresh(handle, on_step); cancel(id)
    name: str  # "SageMaker"
    cache_note: str  # why the local runner's cache options do not apply there
    label: str  # "pipeline execution"
    stopped: str  # what Ctrl-C did
    remote_id: Callable[[Any], str]  # handle -> the platform's id of the run
    resume: Callable[[str], Any]  # the platform's id -> a handle to refresh
    poll: float = 1.0


def platform_for(backend: str, backend_type: str) -> Platform:
    module = MODULES.get(backend_type)
    if module is None:
        raise BackendUnavailable(
            f"running pipelines on {backend_type} backend {backend!r} is not available",
            "run it locally (--backend local), or on a sagemaker or kubeflow backend",
        )
    import importlib

    return importlib.import_module(module).platform(backend)


def _remote(record: dict[str, Any]) -> dict[str, Any] | None:
    return (record.get("options") or {}).get("remote")


def _platform_of(record: dict[str, Any]) -> Platform:
    remote = _remote(record) or {}
    return platform_for(record["backend"], remote.get("type", ""))


# -- start ---------------------------------------------------------------------------------
def start(
    backend: str,
    backend_type: str,
    path: str,
    parameters: dict[str, Any] | None,
    *,
    detach: bool,
    on_step: Callable[[str, dict[str, Any]], None] | None,
    options: dict[str, Any],
    announce: Callable[[str, str], None] | None = None,
):
    """Start the run on the platform, record it, and follow it (here, or in a follower).

    Every check (options the platform cannot honour, the flow, its parameters) happens
    before anything is started or recorded; ``announce(label, remote_id)`` hears the
    platform's id as soon as there is one."""
    from ...pipeline_runs import get_run
    from ...pipelines.loader import load
    from ...pipelines.parameters import resolve
    from ...pipelines.status import PENDING, RUNNING
    from ...store import get_store
    from ...store import pipelines as db

    platform = platform_for(backend, backend_type)
    for option in LOCAL_ONLY:
        if options.get(option) not in (None, False, []):
            raise SpecError(
                f"--{option.replace('_', '-')}",
                f"is not available for a pipeline on {platform.name} ({platform.cache_note})",
                "leave it out, or run the pipeline locally",
            )
    if options.get("kernel_name"):
        raise SpecError(
            "kernel_name", f"is not available for a pipeline on {platform.name}", "leave it out"
        )
    pipeline = load(path)
    values = resolve(pipeline.parameters, parameters)
    sent = {k: values[k] for k in parameters or {}}  # the platform's defaults stay its own
    handle = platform.runner.start(path, sent)
    remote_id = platform.remote_id(handle)
    if announce:
        announce(platform.label, remote_id)
    run_id = f"p-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    now = time.time()
    record = {
        "id": run_id,
        "name": pipeline.name,
        "source": pipeline.source,
        "backend": backend,
        "status": RUNNING,
        "created": now,
        "started": now,
        "parameters": values,
        "options": {"remote": {"type": backend_type, "id": remote_id, "label": platform.label}},
    }
    steps = [
        {"name": n, "position": i, "status": PENDING, "depends_on": pipeline.steps[n].depends_on}
        for i, n in enumerate(pipeline.order())
    ]
    store = get_store()
    try:
        db.insert_run(store, record, steps)
    except BaseException:
        with contextlib.suppress(Exception):  # nothing left running that no one can see
            platform.runner.cancel(remote_id)
        raise
    if detach:
        _spawn_follower(run_id)
        return get_run(run_id)
    import psutil

    db.update_run(
        store,
        run_id,
        pid=os.getpid(),
        pid_started=psutil.Process().create_time(),
        options={**record["options"], "in_process": True},
    )
    try:
        follow(run_id, on_step, platform=platform)
    except KeyboardInterrupt:
        platform.runner.cancel(remote_id)
        with contextlib.suppress(NbscaleError):
            sync(db.get_run(store, run_id))
        raise
    return get_run(run_id)


def _spawn_follower(run_id: str) -> None:
    """A follower in its own session; without one the run is read from the platform when
    looked at, so a follower that cannot start costs freshness, not the run. It starts in
    this process's folder, so it reads the same ``nbscale.toml``."""
    from ...pipelines.runner import start_detached

    try:
        start_detached(run_id, "nbscale.backends.remote.pipelines", "follower.log", os.getcwd())
    except OSError as exc:
        print(f"nbscale: no follower for run {run_id}: {exc}", file=sys.stderr)


# -- follow --------------------------------------------------------------------------------
def _apply(
    record: dict[str, Any],
    platform: Platform,
    handle: Any,
    on_step: Callable[[str, dict[str, Any]], None] | None = None,
) -> Any:
    """Read the run on the platform once and write what changed into the store."""
    from ...pipelines.status import ACTIVE
    from ...store import get_store
    from ...store import pipelines as db

    heard: list[tuple[str, dict[str, Any]]] = []
    platform.runner.refresh(handle, lambda name, fields: heard.append((name, dict(fields))))
    store = get_store()
    rows = {s["name"]: s for s in db.steps_of(store, [record["id"]])[record["id"]]}
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
        db.update_step(store, record["id"], name, **changes)
        if on_step:
            on_step(name, fields)
    if handle.status in TERMINAL:
        db.update_run(
            store,
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
                    store,
                    record["id"],
                    name,
                    status="CANCELLED" if handle.status == "CANCELLED" else "SKIPPED",
                    ended=now,
                )
    elif handle.status != record["status"]:
        db.update_run(store, record["id"], only_if=ACTIVE, status=handle.status)
    return handle


def follow(
    run_id: str,
    on_step: Callable[[str, dict[str, Any]], None] | None = None,
    platform: Platform | None = None,
    poll: float | None = None,
) -> str:
    """Keep the run's row current until the platform says it ended; return its status."""
    from ...store import get_store
    from ...store import pipelines as db

    store = get_store()
    record = db.get_run(store, run_id)
    platform = platform or _platform_of(record)
    handle = platform.resume(_remote(record)["id"])
    interval = platform.poll if poll is None else poll
    failures = 0
    while True:
        try:
            _apply(db.get_run(store, run_id), platform, handle, on_step)
            failures = 0
        except NbscaleError:
            failures += 1  # a blip of the platform's API is not the end of following
            if failures >= FOLLOW_FAILURES:
                raise
        if handle.status in TERMINAL:
            return handle.status
        time.sleep(max(interval, 0.05) * (1 + failures))


def sync(record: dict[str, Any]) -> dict[str, Any]:
    """A run no follower keeps current: read it from the platform now (unchanged when the
    platform cannot be reached: the run goes on there, it is not lost)."""
    from ...store import get_store
    from ...store import pipelines as db

    try:
        platform = _platform_of(record)
        _apply(record, platform, platform.resume(_remote(record)["id"]))
    except NbscaleError:
        return record
    return db.get_run(get_store(), record["id"])


def cancel(record: dict[str, Any]):
    """Ask the platform to stop the run; its follower (or the next read) records CANCELLED."""
    from ...pipeline_runs import get_run
    from ...store import get_store
    from ...store import pipelines as db

    platform = _platform_of(record)
    platform.runner.cancel(_remote(record)["id"])
    db.add_event(get_store(), record["id"], "cancel", {"remote_id": _remote(record)["id"]})
    sync(record)
    return get_run(record["id"])


def find(remote_id: str) -> dict[str, Any] | None:
    """The recorded run with this platform id (an execution ARN, a KFP run id), if any."""
    from ...store import get_store
    from ...store import pipelines as db

    for record in db.list_runs(get_store(), limit=1000):
        if (_remote(record) or {}).get("id") == remote_id:
            return record
    return None


# -- the CLI and the magic ---------------------------------------------------------------------
def run_remote(args: Any, parameters: dict[str, Any], on_step: Callable[[str, dict], None]) -> int:
    """``nbscale pipeline run FLOW --backend NAME`` (and ``%pipeline run``) on a remote backend:
    print the platform's id, then follow (Ctrl-C stops the run there) or, with ``--detach``,
    print the run's id and return at once."""
    from ...pipeline_runs import start_run

    options = {k: getattr(args, k, None) for k in LOCAL_ONLY}
    options = {k: v for k, v in options.items() if v not in (None, False, [])}
    stopped = {"text": "the run was stopped"}

    def announce(label: str, remote_id: str) -> None:
        stopped["label"] = label
        print(f"{label} {remote_id}", file=sys.stderr, flush=True)

    try:
        run = start_run(
            args.path,
            parameters,
            backend=args.backend,
            detach=bool(args.detach),
            on_step=on_step,
            announce=announce,
            **options,
        )
    except KeyboardInterrupt:
        print(
            f"nbscale: interrupted; the {stopped.get('label', 'run')} was stopped", file=sys.stderr
        )
        return 130
    if args.detach:
        print(run.id)
        return 0
    if getattr(args, "json", False):
        print(json.dumps(run.to_dict(), indent=2, default=str))
    else:
        print(run._repr_mimebundle_()["text/plain"])
    return 0 if run.status == "SUCCEEDED" else 1


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """``python -m nbscale.backends.remote.pipelines RUN_ID``: a detached run's follower."""
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGTERM, _terminate)
    try:
        status = follow(argv[0])
    except SystemExit as exc:
        return int(exc.code or 1)
    return 0 if status == "SUCCEEDED" else 1


if __name__ == "__main__":
    sys.exit(main())
