"""Pipeline runs as the faces see them: start one, list them, read one."""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from .backends import DryRun, get_pipeline_backend, pipeline_backend_for
from .errors import NbscaleError, NotFound, SpecError
from .pipelines.loader import load
from .pipelines.model import checked_max_parallel
from .pipelines.status import ACTIVE
from .pipelines.step_sweep import SweepStepRequest, SweepStepResult, SweepSteps, read_record
from .store import get_store
from .store import pipelines as db
from .store.paging import Page

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
                    # a sweep step: its sweep, the trial that won and its objective
                    **({"sweep": found} if (found := read_record(s["outputs_dir"])) else {}),
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


def _current(record: dict[str, Any]) -> dict[str, Any]:
    """The record as its backend sees it now (a local run whose runner died is LOST; a remote
    run no follower keeps current is read from its platform)."""
    if record["status"] not in ACTIVE:
        return record
    return pipeline_backend_for(record).status(record)


def _find_remote(remote_id: str) -> dict[str, Any] | None:
    """The recorded run with this platform id (an execution ARN, a KFP run id), if any."""
    for record in db.list_runs(get_store(), limit=1000):
        if ((record.get("options") or {}).get("remote") or {}).get("id") == remote_id:
            return record
    return None


def get_run(run_id: str) -> PipelineRun:
    """A run by its id (or a unique prefix), or a remote run by its platform's id."""
    store = get_store()
    try:
        record = db.get_run(store, run_id)
    except NotFound:
        record = _find_remote(run_id)
        if record is None:
            raise
    record = _current(record)
    return _from_record(record, db.steps_of(store, [record["id"]])[record["id"]])


def runs(limit: int = 50, after: str | None = None) -> Page[PipelineRun]:
    """Newest first; ``after`` is a page's ``next`` cursor (keyset paging, nbscale.store.paging)."""
    store = get_store()
    page = db.list_runs(store, limit, after)
    records = [_current(r) for r in page]
    steps = db.steps_of(store, [r["id"] for r in records])
    return Page([_from_record(r, steps[r["id"]]) for r in records], page.next)


def _checked_options(options: dict[str, Any]) -> dict[str, Any]:
    unknown = set(options) - OPTION_KEYS
    if unknown:
        raise SpecError(
            f"option {sorted(unknown)[0]!r}",
            "is not known",
            f"use {', '.join(sorted(OPTION_KEYS))}",
        )
    options = dict(options)
    if isinstance(options.get("only"), str):
        options["only"] = [options["only"]]
    checked_max_parallel(options.get("max_parallel"))
    return options


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

    Without ``detach`` the run happens in (or is followed by) this process and
    ``on_step(name, fields)`` hears each step change status; Ctrl-C stops it. On a platform
    elsewhere (SageMaker, Kubeflow) the run starts there and is recorded here all the same;
    ``announce(label, id)`` hears the platform's id of it.
    """
    options = _checked_options(options)
    run_id = _backend(backend).run(
        path, parameters, detach=detach, on_step=on_step, announce=announce, options=options
    )
    return get_run(run_id)


def dry_run_pipeline(
    path: str,
    parameters: dict[str, Any] | None = None,
    backend: str = "local",
    **options: Any,
) -> DryRun:
    """What ``start_run`` would send (the compiled pipeline a platform would get) or run
    (the local steps, in order), after the same checks; nothing is recorded or started."""
    options = _checked_options(options)
    return _backend(backend).dry_run(path, parameters, options)


class _Stopped(Exception):
    """The pipeline run stopped while a sweep step ran."""


def run_step_sweep(request: SweepStepRequest) -> SweepStepResult:
    """Run a sweep step's trials on this machine: each a local job of the step's notebook with
    the trial's values as its parameters, through the local sweep engine (Optuna), at most
    ``parallel`` at once. Returns the best trial, or why the sweep failed."""
    from . import sweep_runs
    from .config import load as load_config
    from .specs import Entry, JobSpec

    config = load_config()
    local = next((n for n, b in config.backends.items() if b.type == "local"), None)
    if local is None:
        return SweepStepResult(
            ok=False,
            error=f"step {request.step}: its trials run as local jobs, and no backend of type "
            "local is configured",
        )
    sweep = request.sweep
    try:
        job = JobSpec(
            entry=Entry("notebook", request.notebook, dict(request.parameters)),
            name=request.name,
            backend=local,
            workdir=request.folder,
            gpus_per_proc=request.gpus,
            max_runtime=math.ceil(request.timeout) if request.timeout else None,
            tags={"nbscale-pipeline-run": request.run_id, "nbscale-step": request.step},
        )
        spec, notes = sweep_runs.prepare(
            job,
            sweep.space,
            sweep.objective,
            cell_source=request.code,
            config=config,
            name=request.name,
            **sweep.search(),
        )
        handle = sweep_runs.start(spec, config, notes=notes)
    except NbscaleError as exc:
        return SweepStepResult(
            ok=False, error=f"step {request.step}: its sweep cannot start: {exc}"
        )

    def watch(view: Any) -> None:
        if request.stop.is_set():
            raise _Stopped

    try:
        view = handle.run(on_update=watch)
    except _Stopped:
        with contextlib.suppress(Exception):  # the run's own stop is what is reported
            handle.cancel()
        return SweepStepResult(
            ok=False,
            error=f"step {request.step}: the run stopped; its sweep {handle.id} was cancelled",
            sweep_id=handle.id,
        )
    best = view.best
    if view.status != "SUCCEEDED" or best is None:
        why = view.error or "no trial succeeded with a value of the objective"
        # the driver says "failed: N trials failed, more than --max-failed M" in the CLI's words
        why = why.removeprefix("failed: ").replace("--max-failed", "sweep.max_failed")
        return SweepStepResult(
            ok=False,
            error=f"step {request.step}: its sweep {view.id} {view.status.lower()}: {why}",
            sweep_id=view.id,
            counts=view.counts(),
        )
    trial_job = handle.best_job
    return SweepStepResult(
        ok=True,
        sweep_id=view.id,
        best=best.to_dict(),
        job_dir=(trial_job.record.info or {}).get("job_dir") if trial_job else None,
        counts=view.counts(),
    )


#: how runs here run their sweep steps (a pipeline backend does not import the engine)
STEP_SWEEPS = SweepSteps(run=run_step_sweep, detached_module="nbscale.pipeline_runs")


def _backend(name: str | None) -> Any:
    """The pipeline backend, handed the engine's runner of sweep steps where it runs them."""
    target = get_pipeline_backend(name or "local")
    if hasattr(type(target), "step_sweeps"):
        target.step_sweeps = STEP_SWEEPS
    return target


def interrupted_note(backend: str | None) -> str:
    """What Ctrl-C during a run in the foreground did, in the backend's words."""
    return get_pipeline_backend(backend or "local").interrupted


def cancel_run(run_id: str, timeout: float = 60.0) -> PipelineRun:
    """Stop a run: a detached local run's runner gets SIGTERM, kills its kernels and marks the
    run CANCELLED; a run on SageMaker or Kubeflow is stopped there (StopPipelineExecution,
    terminate_run), detached or not, and reads CANCELLED once the platform says it stopped."""
    from .errors import Conflict

    run = get_run(run_id)
    if run.terminal:
        raise Conflict(f"pipeline run {run.id} already ended ({run.status})")
    record = db.get_run(get_store(), run.id)
    pipeline_backend_for(record).cancel(record, timeout)
    return get_run(run.id)


def cancel_any(ref: str, backend: str | None = None) -> str:
    """``nbscale pipeline cancel REF [--backend NAME]``: a recorded run (by its id or its
    platform's id), else a run the platform runs that was never recorded here (the backend
    named, or the configured one whose platform claims the id). Returns what was done."""
    from .config import load as load_config

    try:
        run = get_run(ref)
    except NotFound:
        config = load_config()
        names = [backend] if backend else list(config.backends)
        for name in names:
            target = get_pipeline_backend(name, config)
            if backend or target.claims(ref):
                return target.cancel_unrecorded(ref)
        raise
    if not run.id.startswith(ref):  # named by its platform's id
        run = cancel_run(run.id)
        return f"pipeline run {run.id} ({ref}): {run.status.lower()}, stopping"
    run = cancel_run(run.id)
    return f"pipeline run {run.id}: {run.status}" + ("" if run.terminal else " (stopping)")


def compile_targets() -> dict[str, Any]:
    """The pipeline formats installed platforms compile to, by target name (``kfp``), each
    with its platform's pipeline backend class."""
    from .backends import platforms
    from .backends.registry import role_class

    return {
        p.compile_target: role_class("pipelines", p.type) for p in platforms() if p.compile_target
    }


def compile_pipeline(path: str, target: str, output: str, **options: Any) -> str:
    """Write the pipeline for ``target`` (a platform's ``compile_target``: "kfp",
    "sagemaker") to ``output``; returns the path. An option the target does not take is
    refused, never ignored."""
    from pathlib import Path

    targets = compile_targets()
    if target not in targets:
        raise SpecError(
            "--target", f"unknown target {target!r}", f"use one of {', '.join(sorted(targets))}"
        )
    backend = targets[target]
    options = {k: v for k, v in options.items() if v is not None}
    for name in options:
        if name not in backend.compile_options:
            raise SpecError(
                f"--{name.replace('_', '-')}",
                f"is not an option of the {target} target",
                f"its options: {', '.join('--' + o.replace('_', '-') for o in backend.compile_options)}",
            )
    pipeline = load(path)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    backend.compile(pipeline, out, **options)
    return str(out)


def describe(path: str) -> dict[str, Any]:
    """What a pipeline contains, after every compile-time check."""
    return load(path).summary()


def dumps(run: PipelineRun) -> str:
    return json.dumps(run.to_dict(), indent=2, default=str)


def _detached(argv: list[str]) -> int:
    """``python -m nbscale.pipeline_runs RUN_ID``: a detached local run whose pipeline has a
    sweep step (``nbscale.pipelines.background`` with the engine's ``STEP_SWEEPS``)."""
    import faulthandler
    import signal

    from .pipelines.runner import execute_run
    from .pipelines.status import SUCCEEDED

    def terminate(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        status = execute_run(argv[0], sweeps=STEP_SWEEPS)
    except SystemExit as exc:
        return int(exc.code or 1)
    return 0 if status == SUCCEEDED else 1


if __name__ == "__main__":
    sys.exit(_detached(sys.argv[1:]))
