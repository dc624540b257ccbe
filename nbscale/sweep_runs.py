"""Hyperparameter sweeps, the same on every backend: ``nbscale.sweep(spec, space, objective=...)``.

The sweep is checked before anything runs (the space, the objective being logged by the
code, the budget for all its trials), stored, handed to the backend's ``SweepBackend``
(Optuna here, Katib on Kubeflow, automatic model tuning on SageMaker), and followed until
it ends. Running the same sweep again resumes it.
"""

from __future__ import annotations

import ast
import json
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .backends import registry
from .backends.base import DryRun
from .backends.sweep_base import SweepBackend, SweepView, TrialView
from .config import Config
from .config import load as load_config
from .errors import SpecError
from .jobs import Job
from .jobs import job as _job
from .jobs import submit as _submit
from .specs import JobSpec
from .store import Store, get_store
from .store.sweeps import RUNNING, SweepRecord, get_sweep, list_sweeps, put_sweep
from .sweeps.logged import unlogged
from .sweeps.space import Objective
from .sweeps.spec import SweepSpec
from .words import count

# what the local driver runs trials with (a backend does not import the engine layer)
_JOBS = types.SimpleNamespace(submit=_submit, job=_job)
_SCAN_LIMIT = 200  # local modules read for log_metric calls


def _local_imports(source: str, folder: Path) -> list[Path]:
    """The files of the modules ``source`` imports that live in ``folder`` (the code that
    travels with the job and may call ``log_metric`` for it)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    found = []
    for name in sorted(names):
        base = folder.joinpath(*name.split("."))
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                found.append(candidate)
    return found


def _sources(job: JobSpec, cell_source: str | None) -> list[str]:
    """The entry's code (a cell, a script, a notebook's code cells) and the local modules it
    imports, transitively (at most ``_SCAN_LIMIT`` files)."""
    if cell_source is not None:
        texts = [cell_source]
        folder = Path(job.workdir or ".")
    else:
        entry = job.entry
        path = Path(entry.target)
        if entry.kind == "module":
            return []  # where a module lives is for its interpreter to find: not checked
        if entry.kind == "notebook":
            import nbformat

            nb = nbformat.read(path, as_version=4)
            texts = [
                "\n".join(
                    line
                    for line in c.source.splitlines()
                    if not line.lstrip().startswith(("%", "!"))
                )
                for c in nb.cells
                if c.cell_type == "code"
            ]
        else:
            texts = [path.read_text(errors="replace")]
        folder = path.parent
    seen: set[Path] = set()
    queue = [f for t in texts for f in _local_imports(t, folder)]
    while queue and len(seen) < _SCAN_LIMIT:
        module = queue.pop().resolve()
        if module in seen:
            continue
        seen.add(module)
        try:
            text = module.read_text(errors="replace")
        except OSError:
            continue
        texts.append(text)
        queue.extend(_local_imports(text, folder))
    return texts


def check_objective_logged(job: JobSpec, objective: Objective, cell_source: str | None = None):
    """Refuse a sweep whose code never logs its objective (read, not run: the cell or entry and
    the local modules it imports)."""
    texts = _sources(job, cell_source)
    if not texts:
        return
    logged = unlogged(texts, objective.metric)
    if logged is None:
        return
    raise SpecError(
        "objective",
        f"the code never logs {objective.metric!r} ({logged})",
        f"call nbscale.log_metric({objective.metric!r}, value) in the trial, or name a metric "
        "it logs in --objective",
    )


def check_sweep_budget(sweep: SweepSpec, config: Config) -> str | None:
    """Refuse a sweep whose estimate for all its trials is over its ``max_cost``; a note when
    only the running cap can hold it (no --max-runtime bounds a trial)."""
    if sweep.max_cost is None:
        return None
    from .cost import spec_estimate

    est = spec_estimate(sweep.job, config)
    if est["total"] is None:
        rules = registry.role_class("sweeps", config.backend(sweep.job.backend).type)
        return (
            f"budget ${sweep.max_cost:.2f} for the sweep: no --max-runtime bounds a trial, so "
            f"no estimate; {rules.budget_rule}"
        )
    total = est["total"] * sweep.trials
    if total > sweep.max_cost:
        raise SpecError(
            "max_cost",
            f"{count(sweep.trials, 'trial')} x ${est['total']:.2f} (each at most "
            f"{est['max_runtime']} s on {est['backend']}) = ${total:.2f}, over the sweep's "
            f"budget of ${sweep.max_cost:.2f}",
            "raise --max-cost, or lower --trials or --max-runtime",
        )
    return f"budget ${sweep.max_cost:.2f}; at most ${total:.2f} for all trials"


def prepare(
    job: JobSpec,
    space: Any,
    objective: str | Objective,
    cell_source: str | None = None,
    config: Config | None = None,
    **options: Any,
) -> tuple[SweepSpec, list[str]]:
    """The checked ``SweepSpec`` and notes about it; raises one ``SpecError`` when it cannot run.
    With no ``algorithm`` the backend's own default is taken (TPE; Bayesian on SageMaker)."""
    config = config or load_config()
    if options.get("algorithm") is None:
        bconf = config.backend(job.backend)
        options["algorithm"] = registry.role_class("sweeps", bconf.type).default_algorithm
    sweep = SweepSpec(job=job, space=space, objective=objective, **options)
    check_objective_logged(job, sweep.objective, cell_source)
    note = check_sweep_budget(sweep, config)
    return sweep, [note] if note else []


def backend_for(sweep: SweepSpec, config: Config | None = None, store: Store | None = None):
    return registry.get("sweeps", sweep.job.backend, config, store)


def dry_run(sweep: SweepSpec, config: Config | None = None) -> DryRun:
    backend: SweepBackend = backend_for(sweep, config)
    return backend.dry_run(sweep)


class Sweep:
    """A sweep stored in the nbscale home: its trials, the best one, and how it ended."""

    def __init__(
        self,
        record: SweepRecord,
        backend: SweepBackend,
        store: Store,
        config: Config | None = None,
    ):
        self._record, self._backend, self._store = record, backend, store
        self._config = config  # the config its backend came from; trials' jobs use it too
        self._view: SweepView | None = None

    @property
    def id(self) -> str:
        return self._record.id

    @property
    def record(self) -> SweepRecord:
        return self._record

    @property
    def spec(self) -> SweepSpec:
        return SweepSpec.from_dict(self._record.spec)

    def view(self) -> SweepView:
        self._record = get_sweep(self._store, self._record.id)
        self._view = self._backend.view(self._record)
        return self._view

    def run(
        self,
        on_update: Callable[[SweepView], None] | None = None,
        timeout: float | None = None,
        poll: float | None = None,
    ) -> SweepView:
        """Run (local) or follow (remote) the sweep until it ends."""
        kwargs = {} if poll is None else {"poll": poll}
        self._view = self._backend.drive(
            self.spec, self._record, _JOBS, on_update=on_update, timeout=timeout, **kwargs
        )
        self._record = get_sweep(self._store, self._record.id)
        return self._view

    wait = run

    def detach(self) -> Sweep:
        """Leave the sweep running without this process (a local sweep's driver goes on in
        the background); ``run()`` later follows it, from here or anywhere else."""
        self._record = self._backend.detach(self.spec, self._record)
        return self

    def cancel(self) -> SweepView:
        self._backend.cancel(get_sweep(self._store, self._record.id))
        return self.view()

    @property
    def status(self) -> str:
        return (self._view or self.view()).status

    @property
    def best(self) -> TrialView | None:
        return (self._view or self.view()).best

    @property
    def best_params(self) -> dict[str, Any] | None:
        best = self.best
        return dict(best.params) if best else None

    @property
    def best_job(self) -> Job | None:
        """The best trial as an nbscale job: its logs, metrics and ``--outputs``. A local
        trial is a job already; a remote one (a SageMaker training job, a Katib trial's
        TrainJob) gets a job row from its backend the first time it is asked for."""
        best = self.best
        if best is None:
            return None
        config = self._config
        if self._record.backend_type == "local":
            return _job(best.job_id, config, self._store) if best.job_id else None
        from .errors import NotFound
        from .store.jobs import get_job, insert_job

        row = self._backend.trial_job(self._record, best)
        if row is None:
            return None
        try:
            get_job(self._store, row.id)
        except NotFound:
            insert_job(self._store, row)
        return _job(row.id, config, self._store)

    @property
    def trials(self) -> Any:
        """The trials, best first: a pandas DataFrame where pandas is installed, else a list
        of dicts."""
        rows = []
        for t in (self._view or self.view()).ranked():
            row = {"trial": t.number, "status": t.status, "value": t.value, "last": t.last}
            row.update({f"param_{k}": v for k, v in t.params.items()})
            row.update({"steps": t.steps, "duration": t.duration, "cost": t.cost})
            row.update({"job": t.job_id, "error": t.error})
            rows.append(row)
        try:
            import pandas as pd
        except ImportError:
            return rows
        return pd.DataFrame(rows)

    def to_dict(self) -> dict[str, Any]:
        return (self._view or self.view()).to_dict()

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, str]:
        from .sweeps.table import render

        return render(self._view or self.view())

    def __repr__(self) -> str:
        view = self._view or self.view()
        return f"Sweep({view.id!r}, {view.status}, {count(len(view.trials), 'trial')})"


def start(
    sweep: SweepSpec,
    config: Config | None = None,
    store: Store | None = None,
    notes: list[str] | None = None,
) -> Sweep:
    """Store the sweep (or find it again: the same sweep resumes) and start it on its backend."""
    config = config or load_config()
    store = store or get_store()
    backend: SweepBackend = backend_for(sweep, config, store)
    now = time.time()
    record = SweepRecord(
        id=sweep.id,
        name=sweep.name,
        backend=backend.backend,
        backend_type=backend.config.type,
        status=RUNNING,
        spec=json.loads(json.dumps(sweep.to_dict())),
        created=now,
        updated=now,
        info={"notes": list(notes or [])},
    )
    record = put_sweep(store, record)
    record = backend.start(sweep, record)
    return Sweep(record, backend, store, config)


def sweep(
    job: JobSpec,
    space: Any,
    objective: str | Objective,
    *,
    wait: bool = True,
    on_update: Callable[[SweepView], None] | None = None,
    timeout: float | None = None,
    config: Config | None = None,
    store: Store | None = None,
    **options: Any,
) -> Sweep:
    """Sweep ``job`` over ``space`` (``["lr=loguniform(1e-4,1e-1)", ...]`` or one string of
    them) for ``objective`` (``"val_loss:min"``). ``options``: trials, parallel, algorithm
    (tpe, random, grid, bayesian), pruner (median, halving, none), max_failed, max_cost,
    name, seed, settings. With ``wait`` (the default) it returns when the sweep has ended."""
    config = config or load_config()
    spec, notes = prepare(job, space, objective, config=config, **options)
    handle = start(spec, config, store, notes)
    if wait:
        handle.run(on_update=on_update, timeout=timeout)
    return handle


def get(sweep_id: str, config: Config | None = None, store: Store | None = None) -> Sweep:
    config = config or load_config()
    store = store or get_store()
    record = get_sweep(store, sweep_id)
    return Sweep(record, registry.for_record("sweeps", record, config, store), store, config)


def sweeps(
    limit: int = 50, config: Config | None = None, store: Store | None = None
) -> list[Sweep]:
    config = config or load_config()
    store = store or get_store()
    return [
        Sweep(r, registry.for_record("sweeps", r, config, store), store, config)
        for r in list_sweeps(store, limit)
    ]


def drive_detached(sweep_id: str) -> int:
    """The background driver of a detached local sweep (``python -m nbscale.sweep_driver
    ID``): it leaves its starter at once (the starter waits for it to hold the sweep) and
    drives the sweep until it ends."""
    import os

    if os.fork() > 0:
        return 0
    view = get(sweep_id).run()
    print(f"sweep {view.id}: {view.status}", flush=True)
    return 0
