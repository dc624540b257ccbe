"""The local runner: steps in dependency order, independent ones in parallel, cached ones skipped.

Run in-process (``detach=False``) or as ``python -m nbscale.pipelines.background
RUN_ID`` in its own session, so a JupyterLab server or kernel that starts a
run never blocks on it and the run outlives them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from .. import paths
from ..store import get_store
from ..store import pipelines as db
from . import artifacts, fingerprint, first_kernel, step_sweep, stepbook
from .execute import Attempt, run_step
from .kernels import STARTUP_TIMEOUT, KernelPool, PooledKernel
from .loader import load
from .model import Pipeline, steps_at_once
from .parameters import resolve as resolve_parameters
from .status import CACHED, CANCELLED, FAILED, PENDING, REUSED, RUNNING, SKIPPED, SUCCEEDED
from .threads import thread_env
from .warm import WarmKernels

log = logging.getLogger(__name__)

DONE = (SUCCEEDED, CACHED, REUSED)


def outputs_problem(directory: str) -> str | None:
    """Why a step's saved outputs cannot be reused, or None when they verify.

    The manifest must carry this pipeline's signature and every file must still
    hash to what the manifest says: a cache hit hands these files to later steps.
    """
    try:
        manifest = artifacts.read_manifest(directory, verify=True)
    except artifacts.ArtifactError as exc:
        return f"the manifest failed verification ({exc})"
    if manifest is None:
        return "the cached outputs were deleted"
    for name, entry in manifest.items():
        try:
            with open(Path(directory) / entry["file"], "rb") as fh:
                digest = hashlib.file_digest(fh, "sha256").hexdigest()
        except (OSError, KeyError, TypeError):
            return f"output {name!r} is missing"
        if digest != entry.get("sha256"):
            return f"output {name!r} changed after it was written"
    return None


def run_dir(run_id: str) -> Path:
    return paths.home() / "pipelines" / "runs" / run_id


def start_detached(run_id: str, module: str, log_name: str, cwd: str | Path) -> int:
    """``python -m MODULE RUN_ID`` in its own session (it outlives the caller), its output in
    the run's folder, its pid and start time in the run's row. Raises ``OSError`` when it
    cannot start; nothing is recorded then."""
    import subprocess
    import sys

    import psutil

    directory = run_dir(run_id)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / log_name, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, run_id],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=os.environ.copy(),
            cwd=cwd,
        )
    try:
        started = psutil.Process(proc.pid).create_time()
    except psutil.Error:
        started = None
    db.update_run(get_store(), run_id, pid=proc.pid, pid_started=started)
    return proc.pid


def new_run(
    pipeline: Pipeline, backend: str, status: str, values: dict, options: dict
) -> tuple[dict, list[dict]]:
    """The rows of a new run of ``pipeline`` (a fresh id, every step PENDING), for
    ``nbscale.store.pipelines.insert_run``."""
    import time
    import uuid

    now = time.time()
    record = {
        "id": f"p-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}",
        "name": pipeline.name,
        "source": pipeline.source,
        "backend": backend,
        "status": status,
        "created": now,
        "parameters": values,
        "options": options,
    }
    steps = [
        {"name": n, "position": i, "status": "PENDING", "depends_on": pipeline.steps[n].depends_on}
        for i, n in enumerate(pipeline.order())
    ]
    return record, steps


def runner_alive(record: dict) -> bool:
    """Whether the process recorded as the run's runner (or follower) still runs."""
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


def selected_steps(pipeline: Pipeline, only: list[str] | None, from_step: str | None) -> list[str]:
    from ..errors import SpecError

    order = pipeline.order()
    for name in [*(only or []), *([from_step] if from_step else [])]:
        if name not in pipeline.steps:
            raise SpecError(
                f"step {name!r}", "is not in this pipeline", f"steps: {', '.join(order)}"
            )
    if only and from_step:
        raise SpecError("--only", "cannot be combined with --from", "use one of them")
    if only:
        return [s for s in order if s in only]
    if from_step:
        keep = {from_step} | pipeline.descendants(from_step)
        return [s for s in order if s in keep]
    return order


class Runner:
    def __init__(
        self,
        run_id: str,
        pipeline: Pipeline,
        values: dict[str, Any],
        options: dict[str, Any],
        on_step: Callable[[str, dict[str, Any]], None] | None = None,
        sweeps: step_sweep.SweepSteps | None = None,
    ):
        self.run_id = run_id
        self.sweeps = sweeps  # the engine's runner of sweep steps (trials are jobs)
        self.stop = threading.Event()  # set when the run ends early: running sweeps cancel
        self.on_step = on_step
        self.pipeline = pipeline
        self.values = values
        self.store = get_store()
        self.max_parallel = steps_at_once(options.get("max_parallel"))
        self.no_cache = bool(options.get("no_cache"))
        self.kernel_name = options.get("kernel_name") or "python3"
        self.selected = selected_steps(pipeline, options.get("only"), options.get("from_step"))
        self.partial = bool(options.get("only") or options.get("from_step"))
        self.dir = run_dir(run_id)
        self.outputs: dict[str, str] = {}  # step -> directory holding its outputs
        self.status: dict[str, str] = {}
        self.pool: KernelPool | None = None
        self.warm: WarmKernels | None = None  # kernels kept warm between runs (``warm``)

    # -- bookkeeping -------------------------------------------------------------------------
    def _set(self, step: str, **fields: Any) -> None:
        if "status" in fields:
            self.status[step] = fields["status"]
        db.update_step(self.store, self.run_id, step, **fields)
        if self.on_step is not None and "status" in fields:
            self.on_step(step, fields)

    def _step_values(self, name: str) -> dict[str, Any]:
        step = self.pipeline.steps[name]
        return {**{p: self.values[p] for p in step.uses_parameters}, **step.fixed_parameters}

    def _inputs(self, name: str) -> dict[str, str]:
        step = self.pipeline.steps[name]
        return {var: self.outputs[producer] for var, producer in step.inputs.items()}

    def _parts(self, name: str) -> dict[str, Any]:
        step = self.pipeline.steps[name]
        return fingerprint.components(
            self.pipeline,
            step,
            self._step_values(name),
            artifacts.digest(self._inputs(name)),
            self.kernel_name,
        )

    # -- cache -------------------------------------------------------------------------------
    def _lookup(self, name: str, parts: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
        key = fingerprint.key(parts)
        step = self.pipeline.steps[name]
        if self.no_cache:
            return None, "miss: --no-cache"
        if not step.cache:
            return None, "miss: cache is off for this step"
        if self.partial:  # asking for a step by name means running it
            return None, "miss: selected with --only/--from"
        entry = db.cache_get(self.store, key)
        if entry:
            problem = outputs_problem(entry["outputs_dir"])
            if problem is None and Path(entry["notebook"]).exists():
                return entry, f"hit: unchanged since run {entry['run_id']}"
            db.cache_drop(self.store, key)
            if problem == "the cached outputs were deleted" or problem is None:
                return None, "miss: the cached outputs were deleted"
            return (
                None,
                f"miss: the cached outputs did not verify, so the step runs again: {problem}",
            )
        return None, fingerprint.explain(
            (db.cache_latest(self.store, self.pipeline.source, name) or {}).get("components"), parts
        )

    def _reuse(self, name: str) -> None:
        """A step outside --only/--from: take its outputs from the cache or its latest success."""
        from ..errors import SpecError

        entry = db.cache_get(self.store, fingerprint.key(self._parts(name)))
        if entry is None or outputs_problem(entry["outputs_dir"]) is not None:
            entry = db.cache_latest(self.store, self.pipeline.source, name)
        problem = "none was saved" if entry is None else outputs_problem(entry["outputs_dir"])
        if problem is not None:
            raise SpecError(
                f"step {name}",
                f"has no earlier output to reuse ({problem})",
                f"run it too (nbscale pipeline run ... --only {name}) or drop --only/--from",
            )
        self.outputs[name] = entry["outputs_dir"]
        self._set(
            name,
            status=REUSED,
            cached=True,
            cache_reason=f"not selected; outputs of run {entry['run_id']}",
            notebook=entry["notebook"],
            outputs_dir=entry["outputs_dir"],
            started=time.time(),
            ended=time.time(),
        )

    # -- execution ---------------------------------------------------------------------------
    def _remember(self, name: str, parts: dict[str, Any], out_dir: Path, notebook: str) -> None:
        self.outputs[name] = str(out_dir)
        db.cache_put(
            self.store,
            {
                "key": fingerprint.key(parts),
                "pipeline": self.pipeline.source,
                "step": name,
                "components": parts,
                "run_id": self.run_id,
                "outputs_dir": str(out_dir),
                "notebook": notebook,
            },
        )

    def _execute_sweep(self, name: str, parts: dict[str, Any], reason: str) -> Attempt:
        """A step with a ``sweep:`` block: its trials run as jobs through the engine's
        ``SweepSteps``; the best trial's outputs and notebook become the step's."""
        step = self.pipeline.steps[name]
        assert step.sweep is not None
        base = self.dir / "steps" / name
        out_dir, notebook = base / "outputs", base / f"{name}.ipynb"
        started = time.time()
        self._set(
            name,
            status=RUNNING,
            attempts=1,
            cache_reason=reason,
            started=started,
            notebook=str(notebook),
        )
        failed = Attempt(ok=False, notebook=str(notebook), started=started)
        if self.sweeps is None:
            failed.error = (
                f"step {name} has a sweep: block, and this runner has no sweep engine to run "
                "its trials"
            )
            return failed
        request = step_sweep.request(
            self.pipeline,
            step,
            self._inputs(name),
            self._step_values(name),
            self.run_id,
            base,
            self.kernel_name,
        )
        request.stop = self.stop
        result = self.sweeps.run(request)
        failed.ended = time.time()
        if not result.ok:
            failed.error = result.error or f"step {name}: its sweep failed"
            return failed
        problem = step_sweep.adopt(result, str(step.sweep.objective), out_dir, notebook)
        if problem is None and artifacts.read_manifest(out_dir) is None:
            problem = "its best trial's outputs have no manifest"
        if problem is not None:
            failed.error = f"step {name}: {problem}"
            return failed
        self._remember(name, parts, out_dir, str(notebook))
        return Attempt(ok=True, notebook=str(notebook), started=started, ended=time.time())

    def _execute(self, name: str, parts: dict[str, Any], reason: str) -> Attempt:
        step = self.pipeline.steps[name]
        if step.sweep is not None:
            return self._execute_sweep(name, parts, reason)
        out_dir = self.dir / "steps" / name / "outputs"
        notebook = self.dir / "steps" / name / f"{name}.ipynb"
        nb = stepbook.build(self.pipeline, step, self._inputs(name), str(out_dir), self.kernel_name)
        attempt = Attempt(ok=False, notebook=str(notebook))
        for number in range(1, step.retries + 2):
            self._set(
                name,
                status=RUNNING,
                attempts=number,
                cache_reason=reason,
                started=time.time(),
                notebook=str(notebook),
            )
            assert self.pool is not None
            attempt = run_step(
                name,
                nb,
                self._step_values(name),
                notebook,
                str(Path(step.notebook).parent),
                self.pool,
                self.kernel_name,
                step.timeout,
            )
            if attempt.ok and artifacts.read_manifest(out_dir) is None:
                # the last cell saves the outputs; without its manifest the kernel did not finish
                attempt.ok, attempt.error = (
                    False,
                    f"step {name} ended without saving its outputs (kernel died?)",
                )
            if attempt.ok:
                break
        if attempt.ok:
            self._remember(name, parts, out_dir, attempt.notebook)
        return attempt

    def run(self) -> str:
        """Run the selected steps; returns the run's final status."""
        steps = self.pipeline.steps
        todo = list(self.selected)
        error: str | None = None
        for name in self.pipeline.order():
            if name in todo:
                continue
            if any(name in self.pipeline.ancestors(s) for s in todo):
                self._reuse(name)
            else:
                self._set(name, status=SKIPPED, cache_reason="not selected (--only/--from)")
        running: dict[Future, str] = {}
        ended = False  # the loop ran to its end (a step's failure included), not interrupted
        with ThreadPoolExecutor(self.max_parallel, thread_name_prefix="nbscale-step") as threads:
            try:
                while todo or running:
                    ready = [
                        s
                        for s in todo
                        if all(self.status.get(d) in DONE for d in steps[s].depends_on)
                    ]
                    for name in ready if error is None else []:
                        todo.remove(name)
                        parts = self._parts(name)
                        entry, reason = self._lookup(name, parts)
                        if entry is not None:
                            self.outputs[name] = entry["outputs_dir"]
                            now = time.time()
                            self._set(
                                name,
                                status=CACHED,
                                cached=True,
                                cache_reason=reason,
                                cache_key=fingerprint.key(parts),
                                notebook=entry["notebook"],
                                outputs_dir=entry["outputs_dir"],
                                started=now,
                                ended=now,
                            )
                            continue
                        if steps[name].sweep is None:  # a sweep step's trials are jobs
                            self._ensure_pool([s for s in [name, *todo] if steps[s].sweep is None])
                        self._set(
                            name,
                            status=RUNNING,
                            cache_reason=reason,
                            cache_key=fingerprint.key(parts),
                        )
                        running[threads.submit(self._execute, name, parts, reason)] = name
                    if error is not None and not running:
                        break
                    if not running:
                        if todo and not [
                            s
                            for s in todo
                            if all(self.status.get(d) in DONE for d in steps[s].depends_on)
                        ]:
                            break  # cannot happen for a valid DAG; guards against a silent hang
                        continue
                    # a timeout, so the main thread wakes to run signal handlers (Ctrl-C, SIGTERM):
                    # a signal that lands on another thread does not interrupt a plain lock wait
                    finished, _ = wait(list(running), timeout=0.25, return_when=FIRST_COMPLETED)
                    for future in finished:
                        name = running.pop(future)
                        try:
                            attempt = future.result()
                        except Exception as exc:  # noqa: BLE001 - a runner bug must still end the step
                            attempt = Attempt(
                                ok=False, notebook="", error=f"step {name} failed: {exc!r}"
                            )
                        self._set(
                            name,
                            status=SUCCEEDED if attempt.ok else FAILED,
                            ended=time.time(),
                            error=attempt.error,
                            outputs_dir=self.outputs.get(name),
                        )
                        if not attempt.ok and error is None:
                            error = attempt.error
                ended = True
            finally:
                self.stop.set()  # a sweep step still running cancels its sweep and returns
                for future in running:
                    future.cancel()
                if self.pool is not None:
                    self.pool.close()
                if self.warm is not None:
                    # the next run of this environment finds its first kernel warm
                    self.warm.finish(start_keepers=ended)
        for name in todo:
            self._set(
                name,
                status=SKIPPED if error else CANCELLED,
                error="not run: an earlier step failed" if error else None,
            )
        db.update_run(
            self.store,
            self.run_id,
            status=FAILED if error else SUCCEEDED,
            ended=time.time(),
            error=error,
        )
        return FAILED if error else SUCCEEDED

    def _thread_env(self) -> dict[str, str]:
        return thread_env(min(self.max_parallel, self.pipeline.width(self.selected)))

    def _ensure_pool(self, upcoming: list[str]) -> None:
        if self.pool is None:
            # started at the first cache miss, so an all-cached run starts no kernel at all
            # one spare beyond the running steps, so the next step's kernel is up when it is ready
            self.pool = KernelPool(self.max_parallel + 1, self.kernel_name, env=self._thread_env())
            self.pool.import_client()
            cwds = [str(Path(self.pipeline.steps[s].notebook).parent) for s in upcoming]
            # the first step's kernel from the kernels kept warm between runs, where one of
            # exactly this environment is ready
            self.warm = WarmKernels(self.kernel_name, self.pool.env)
            entry = self.warm.claim(cwds[0]) if cwds else None
            # else the one started while the DAG was prepared, if it was for exactly this
            early = first_kernel.take(self.kernel_name, cwds[0], self.pool.env) if cwds else None
            if entry is not None:
                if early is not None:
                    first_kernel.discard_kernel(early)
                log.info(
                    "the first step's kernel was kept warm from a run before (pid %s)", entry["pid"]
                )
                self.pool.adopt(PooledKernel.adopt(entry, self.kernel_name, cwds[0]))
                cwds = cwds[1:]
            elif early is not None:
                self.pool.adopt(early)
                early.spawned.wait(STARTUP_TIMEOUT)  # the first step waits for it anyway
                log.info(
                    "the first step's kernel was started while the DAG was prepared (pid %s)",
                    early.pid,
                )
                cwds = cwds[1:]
            # else the first kernel's process first, then papermill's import beside its boot
            self.pool.expect(cwds)
            self.pool.preload()


def execute_run(
    run_id: str,
    on_step: Callable[[str, dict[str, Any]], None] | None = None,
    sweeps: step_sweep.SweepSteps | None = None,
) -> str:
    """Run a recorded run (the detached process and ``detach=False`` both come here).

    Ctrl-C or SIGTERM stops it: running kernels are killed and the run is CANCELLED.
    ``sweeps`` runs steps with a ``sweep:`` block (the engine's: their trials are jobs).
    """
    store = get_store()
    record = db.get_run(store, run_id)
    if not db.update_run(store, run_id, only_if=(PENDING,), status=RUNNING, started=time.time()):
        return record["status"]
    try:
        pipeline = load(record["source"])
        values = resolve_parameters(pipeline.parameters, record["parameters"])
        return Runner(run_id, pipeline, values, record["options"], on_step, sweeps).run()
    except BaseException as exc:
        stopped = isinstance(exc, KeyboardInterrupt | SystemExit)
        status, error = (CANCELLED, "interrupted") if stopped else (FAILED, str(exc))
        db.update_run(
            store, run_id, only_if=(RUNNING,), status=status, ended=time.time(), error=error
        )
        for step in db.steps_of(store, [run_id])[run_id]:
            if step["status"] in (PENDING, RUNNING):
                db.update_step(store, run_id, step["name"], status=CANCELLED, ended=time.time())
        if stopped:
            raise
        return FAILED
