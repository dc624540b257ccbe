"""Pipeline runs on this machine: papermill in kernels, run by ``nbscale.pipelines.runner``.

``run`` checks the flow, records the run, and runs it here (without ``detach``: Ctrl-C
cancels it and kills its kernels) or in a detached runner process
(``python -m nbscale.pipelines.background RUN_ID``). A run whose runner process died
reads LOST; ``cancel`` sends the runner SIGTERM, and it marks the run CANCELLED.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from ...errors import Conflict, SpecError
from ...pipelines.loader import load
from ...pipelines.manifest import refuse_nodes
from ...pipelines.parameters import resolve
from ...pipelines.runner import (
    execute_run,
    new_run,
    runner_alive,
    selected_steps,
    start_detached,
)
from ...pipelines.status import ACTIVE, FAILED, LOST, PENDING, RUNNING
from ...pipelines.step_sweep import SweepSteps
from ...pipelines.warm import settings as warm_settings
from ...store import pipelines as db
from ..base import DryRun
from ..pipeline_base import Announce, OnStep, PipelineBackend


class LocalPipelineBackend(PipelineBackend):
    type = "local"
    title = "this machine"
    interrupted = "the run was cancelled"
    #: runs steps with a ``sweep:`` block: handed in by the engine (``nbscale.pipeline_runs``),
    #: as their trials are jobs and a backend does not import the engine
    step_sweeps: SweepSteps | None = None

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
        pipeline = load(path)  # every check happens here, before anything is recorded
        refuse_nodes(
            pipeline,
            "this machine's runner",
            "drop resources.nodes, or run the pipeline on a SageMaker backend (a Training step "
            "on that many instances)",
        )
        values = resolve(pipeline.parameters, parameters)
        warm_settings()  # a bad NBSCALE_KERNEL_POOL* value is refused before anything is recorded
        chosen = selected_steps(pipeline, options.get("only"), options.get("from_step"))
        swept = [n for n in chosen if pipeline.steps[n].sweep is not None]
        if swept and self.step_sweeps is None:
            raise SpecError(
                f"step {swept[0]}",
                "has a sweep: block, and this backend was given no sweep engine to run its trials",
                "run the pipeline with nbscale pipeline run, %pipeline run or "
                "nbscale.pipelines.start_run",
            )
        record, steps = new_run(pipeline, self.config.name, PENDING, values, options)
        run_id = record["id"]
        db.insert_run(self.store, record, steps)
        if not detach:
            # this process runs it: if it dies, the run reads LOST; cancel leaves it alone
            import psutil

            db.update_run(
                self.store,
                run_id,
                pid=os.getpid(),
                pid_started=psutil.Process().create_time(),
                options={**options, "in_process": True},
            )
            execute_run(run_id, on_step, self.step_sweeps)
            return run_id
        # a run with a sweep step runs in the engine's runner, which can start its trials
        module = "nbscale.pipelines.background"
        if swept and self.step_sweeps is not None:
            module = self.step_sweeps.detached_module
        try:
            start_detached(run_id, module, "runner.log", pipeline.directory)
        except OSError as exc:
            db.update_run(
                self.store,
                run_id,
                status=FAILED,
                ended=time.time(),
                error=f"could not start the runner: {exc}",
            )
            raise
        return run_id

    def dry_run(
        self, path: str, parameters: dict[str, Any] | None, options: dict[str, Any]
    ) -> DryRun:
        """The steps that would run here, in order, with the parameters' values."""
        pipeline = load(path)
        values = resolve(pipeline.parameters, parameters)
        chosen = set(selected_steps(pipeline, options.get("only"), options.get("from_step")))
        summary = pipeline.summary()
        plan = {
            "name": summary["name"],
            "source": summary["source"],
            "parameters": values,
            "steps": [s for s in summary["steps"] if s["name"] in chosen],
        }
        notes = [
            "the local backend sends nothing anywhere: these steps would run on this machine, "
            "in this order"
        ]
        if options.get("no_cache"):
            notes.append("--no-cache: every step would run, none would come from the cache")
        for name in (n for n in pipeline.order() if n in chosen):
            sweep = pipeline.steps[name].sweep
            if sweep is not None:
                notes.append(
                    f"step {name} is a sweep: {sweep.trials} trials of its notebook as local "
                    f"jobs, {sweep.parallel} at once, over {sweep.space}, for {sweep.objective}; "
                    "the best trial's outputs go to the steps after it"
                )
        return DryRun([plan], "json", notes + list(summary["warnings"]))

    def status(self, record: dict[str, Any]) -> dict[str, Any]:
        """A run whose runner process is gone is LOST, never left RUNNING forever."""
        if record["status"] not in ACTIVE or not record.get("pid") or runner_alive(record):
            return record
        error = "the runner process died before the run ended"
        now = time.time()
        if db.update_run(
            self.store, record["id"], only_if=ACTIVE, status=LOST, ended=now, error=error
        ):
            for step in db.steps_of(self.store, [record["id"]])[record["id"]]:
                if step["status"] in ACTIVE:
                    db.update_step(
                        self.store,
                        record["id"],
                        step["name"],
                        status=LOST if step["status"] == RUNNING else FAILED,
                        ended=now,
                        error=error,
                    )
        return db.get_run(self.store, record["id"])

    def cancel(self, record: dict[str, Any], timeout: float) -> None:
        """SIGTERM to the detached runner; it kills its kernels and marks the run CANCELLED.
        Returns once the run has ended (``TimeoutError`` after ``timeout`` seconds)."""
        import psutil

        if not record.get("pid") or record["options"].get("in_process"):
            raise Conflict(
                f"pipeline run {record['id']} runs inside another process",
                "stop it there (Ctrl-C); only detached runs can be cancelled",
            )
        try:
            proc = psutil.Process(record["pid"])
            if abs(proc.create_time() - (record["pid_started"] or 0)) < 1:
                proc.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
        deadline = time.monotonic() + timeout
        while (now := self.status(db.get_run(self.store, record["id"])))["status"] in ACTIVE:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"pipeline run {record['id']} still {now['status']} after {timeout} s"
                )
            time.sleep(0.2)
