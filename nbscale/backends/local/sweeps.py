"""Sweeps on this machine: Optuna samples and prunes, every trial is an ordinary nbscale job.

The study lives in the nbscale home (``sweeps/<id>.journal``, Optuna's journal storage),
so the same sweep run again (a re-run cell after the kernel died) resumes: finished
trials are kept, trials whose jobs are still running are followed again, and only the
rest are started. The driver (``drive``) runs in the calling process: the kernel or the
CLI. It starts at most ``parallel`` trials at once (fewer where the machine's cores or
GPUs cannot hold them), reports each new value of the objective to the pruner and
cancels a trial the pruner stops (PRUNED), retries a failed trial's values until more
than ``max_failed`` trials failed, and stops starting trials once the spend reaches
``max_cost``.
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ... import paths
from ...cpus import allowed_cpus
from ...errors import NbscaleError, SpecError
from ...store.jobs import get_job
from ...store.sweeps import CANCELLED as SWEEP_CANCELLED
from ...store.sweeps import FAILED as SWEEP_FAILED
from ...store.sweeps import RUNNING as SWEEP_RUNNING
from ...store.sweeps import STOPPED, SweepRecord, get_sweep, update_sweep
from ...store.sweeps import SUCCEEDED as SWEEP_SUCCEEDED
from ...words import count
from ..base import DryRun
from ..sweep_base import (
    CANCELLED,
    FAILED,
    PENDING,
    PRUNED,
    RUNNING,
    SUCCEEDED,
    SweepBackend,
    SweepView,
    TrialView,
)
from .processes import alive

if TYPE_CHECKING:
    import optuna

    from ...sweeps.spec import SweepSpec
    from ..sweep_base import JobAPI

POLL = 0.5
DETACH_TIMEOUT = 60.0  # seconds for a background driver to take its sweep


def study_path(sweep_id: str) -> Path:
    folder = paths.home() / "sweeps"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder / f"{sweep_id}.journal"


def _optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the table says what happens
    return optuna


def distributions(sweep: SweepSpec) -> dict[str, Any]:
    """The space as Optuna distributions."""
    optuna = _optuna()
    out: dict[str, Any] = {}
    for p in sweep.space.params:
        if p.kind == "categorical":
            out[p.name] = optuna.distributions.CategoricalDistribution(list(p.choices))
        elif p.kind == "int":
            out[p.name] = optuna.distributions.IntDistribution(
                int(p.low), int(p.high), log=p.log, step=int(p.step or 1)
            )
        else:
            out[p.name] = optuna.distributions.FloatDistribution(
                float(p.low), float(p.high), log=p.log, step=p.step
            )
    return out


PRUNER_SETTINGS = {"startup_trials", "warmup_steps"}


def sampler(sweep: SweepSpec, done: int = 0):
    """The sampler; ``done``: trials the study already holds, so that a resumed seeded sweep
    does not draw its first values again."""
    optuna = _optuna()
    seed = None if sweep.seed is None else sweep.seed + done
    if sweep.algorithm == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if sweep.algorithm == "grid":

        class Grid(optuna.samplers.GridSampler):
            def after_trial(self, study, trial, state, values):
                """Optuna's grid stops ``study.optimize`` once every point is taken, which
                raises outside ``optimize``; the driver stops by the count of trials."""

        return Grid({p.name: p.grid() for p in sweep.space.params}, seed=seed)
    if sweep.algorithm == "bayesian":  # a Gaussian process, as SageMaker's and Katib's are
        return optuna.samplers.GPSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def pruner(sweep: SweepSpec):
    optuna = _optuna()
    unknown = set(sweep.settings) - PRUNER_SETTINGS
    if unknown:
        raise SpecError(
            "sweep.settings",
            f"{sorted(unknown)[0]!r} is not a setting of local sweeps",
            f"known: {', '.join(sorted(PRUNER_SETTINGS))}",
        )
    startup = sweep.settings.get("startup_trials", 5)
    warmup = sweep.settings.get("warmup_steps", 0)
    for name, value in (("startup_trials", startup), ("warmup_steps", warmup)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10_000:
            raise SpecError(
                f"sweep.settings.{name}", f"must be a whole number 0..10000, got {value!r}"
            )
    if sweep.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup)
    if sweep.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


def open_study(sweep: SweepSpec, create: bool = True) -> optuna.Study:
    optuna = _optuna()
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = study_path(sweep.id)
    if not create and not path.exists():
        raise FileNotFoundError(path)
    storage = JournalStorage(JournalFileBackend(str(path)))
    study = optuna.create_study(
        study_name=sweep.id,
        storage=storage,
        load_if_exists=True,
        direction="minimize" if sweep.objective.minimize else "maximize",
        sampler=sampler(sweep),
        pruner=pruner(sweep),
    )
    done = len(study.get_trials(deepcopy=False))
    if done and sweep.seed is not None:
        study.sampler = sampler(sweep, done)
    return study


def concurrency(sweep: SweepSpec) -> tuple[int, str | None]:
    """How many trials run at once here, and why fewer than asked when so."""
    job = sweep.job
    procs = job.nodes * job.procs_per_node
    limit, why = sweep.parallel, None
    allowed = allowed_cpus()
    cpus = max(1, allowed // procs)
    if cpus < limit:
        limit, why = cpus, f"nbscale may use {count(allowed, 'core')} here"
    if job.gpus_per_proc:
        from . import gpus

        total = len(gpus.machine_gpus())
        per_trial = procs * job.gpus_per_proc
        fit = total // per_trial
        if fit < 1:
            raise SpecError(
                "sweep",
                f"a trial needs {count(per_trial, 'GPU')} and this machine has {total}",
                "lower --gpus or --procs, or run the sweep on a cluster backend",
            )
        if fit < limit:
            limit, why = fit, f"{count(total, 'GPU')} hold {count(fit, 'trial')} at once"
    return max(1, limit), why


def _metric_values(records: list[dict[str, Any]], name: str) -> list[float]:
    """The objective's values in the order they were logged (rank 0's where it logged any)."""
    mine = [r for r in records if r.get("name") == name]
    if any(r.get("rank", 0) == 0 for r in mine):
        mine = [r for r in mine if r.get("rank", 0) == 0]
    mine.sort(key=lambda r: r.get("time") or 0)
    out = []
    for r in mine:
        value = r.get("value")
        if isinstance(value, (int, float)) and math.isfinite(value):
            out.append(float(value))
    return out


class LocalSweeps(SweepBackend):
    def dry_run(self, sweep: SweepSpec) -> DryRun:
        """The sweep's spec as it would be stored and run (each trial: its job with its own
        values in NBSCALE_PARAMS); the plan as commentary."""
        limit, why = concurrency(sweep)
        pruner(sweep)  # its settings are checked now
        notes = [
            f"a sweep of {count(sweep.trials, 'trial')} on {self.backend}: Optuna "
            f"{sweep.algorithm} sampling, {sweep.pruner} pruning, {limit} at once"
            + (f" ({sweep.parallel} asked; {why})" if why else ""),
            f"objective: {sweep.objective}; space: {sweep.space}",
        ]
        return DryRun([sweep.to_dict()], "json", notes)

    def start(self, sweep: SweepSpec, record: SweepRecord) -> SweepRecord:
        open_study(sweep)  # a refusal of its settings comes now, before anything runs
        update_sweep(self.store, record.id, native_id=str(study_path(sweep.id)))
        return get_sweep(self.store, record.id)

    # -- the driver ---------------------------------------------------------------------------
    def drive(
        self,
        sweep: SweepSpec,
        record: SweepRecord,
        jobs: JobAPI,
        on_update: Callable[[SweepView], None] | None = None,
        poll: float = POLL,
        timeout: float | None = None,
    ) -> SweepView:
        """Run the sweep here, or follow it while another live process drives it (a
        detached driver, another kernel): two drivers of one study would start twice
        the trials. When that driver ends before the sweep does, this one takes over."""
        deadline = None if timeout is None else time.monotonic() + timeout
        current = get_sweep(self.store, record.id)
        while _driver_alive(current) and current.info.get("driver_pid") != os.getpid():
            view = self.view(current)
            if on_update is not None:
                on_update(view)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(
                    f"sweep {record.id} is still running (driven by process "
                    f"{current.info['driver_pid']}); follow it again to see it end"
                )
            time.sleep(poll)
            current = get_sweep(self.store, record.id)
            if current.terminal and not _driver_alive(current):
                view = self.view(current)
                if on_update is not None:
                    on_update(view)
                return view
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        return _Driver(self, sweep, current, jobs, on_update, poll, left).run()

    def detach(self, sweep: SweepSpec, record: SweepRecord) -> SweepRecord:
        """Start the sweep's driver as a background process of its own (it outlives this
        one; ``sweeps/<id>.driver.log`` holds its output) and return once it holds the
        sweep. A sweep that a live process drives already is left to it."""
        current = get_sweep(self.store, record.id)
        if _driver_alive(current):
            return current
        log_path = study_path(sweep.id).with_suffix(".driver.log")
        command = [sys.executable, "-m", "nbscale.sweep_driver", record.id]
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "NBSCALE_HOME": str(paths.home())},
            )
        first = proc.wait()  # the driver forks; this first process returns at once
        deadline = time.monotonic() + DETACH_TIMEOUT
        while True:
            current = get_sweep(self.store, record.id)
            if _driver_alive(current):
                return current
            if first != 0 or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
                raise NbscaleError(
                    f"the background driver of sweep {record.id} did not start"
                    + (f": {' | '.join(tail)}" if tail else ""),
                    f"see {log_path}; running the sweep without detaching resumes it here",
                )
            time.sleep(0.05)

    # -- looking at it ------------------------------------------------------------------------
    def view(self, record: SweepRecord) -> SweepView:
        sweep = stored(record)
        status = record.status
        if status == SWEEP_RUNNING and not _driver_alive(record):
            status = STOPPED
        try:
            study = open_study(sweep, create=False)
            trials = [_trial_view(self, t) for t in study.get_trials(deepcopy=False)]
        except FileNotFoundError:
            trials = []
        if record.terminal:  # a retry queued when the sweep stopped never runs
            trials = [t for t in trials if not (t.status == PENDING and not t.job_id)]
        notes = list(record.info.get("notes") or [])
        if status == STOPPED:
            notes.append(
                "its driver ended before the sweep did: run the same sweep again to resume it"
            )
        return SweepView(
            id=record.id,
            name=record.name,
            backend=record.backend,
            status=status,
            objective=str(sweep.objective),
            trials=trials,
            planned=sweep.trials,
            native_id=record.native_id,
            error=record.error,
            notes=notes,
        )

    def cancel(self, record: SweepRecord) -> None:

        update_sweep(self.store, record.id, status=SWEEP_CANCELLED, ended=time.time())
        sweep = stored(record)
        with contextlib.suppress(FileNotFoundError):
            study = open_study(sweep, create=False)
            optuna = _optuna()
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                job_id = t.user_attrs.get("job_id")
                if job_id:
                    with contextlib.suppress(Exception):
                        from .jobs import LocalBackend

                        LocalBackend(self.config, self.store).cancel(get_job(self.store, job_id))
                with contextlib.suppress(Exception):
                    study._storage.set_trial_user_attr(t._trial_id, "cancelled", True)
                    study.tell(t.number, state=optuna.trial.TrialState.FAIL)


def stored(record: SweepRecord) -> Any:
    """What the study of a stored sweep needs (id, objective, space, algorithm, seed, pruner),
    read from its row alone: its script may have changed or gone since."""
    from types import SimpleNamespace

    from ...sweeps.space import Space, parse_objective

    spec = record.spec
    return SimpleNamespace(
        id=record.id,
        objective=parse_objective(spec["objective"]),
        space=Space.from_list(spec["space"]),
        algorithm=spec["algorithm"],
        seed=spec.get("seed"),
        pruner=spec["pruner"],
        settings=spec.get("settings") or {},
        trials=spec["trials"],
    )


def _example_values(sweep: SweepSpec) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in sweep.space.params:
        if p.kind == "categorical":
            out[p.name] = p.choices[0]
        elif p.log:
            mid = math.sqrt(p.low * p.high)
            out[p.name] = int(round(mid)) if p.kind == "int" else mid
        else:
            mid = (p.low + p.high) / 2
            out[p.name] = int(mid) if p.kind == "int" else mid
    return out


def _driver_alive(record: SweepRecord) -> bool:
    pid, started = record.info.get("driver_pid"), record.info.get("driver_started")
    return bool(pid) and alive(pid, started)


def _trial_view(backend: LocalSweeps, t: Any) -> TrialView:
    optuna = _optuna()
    states = optuna.trial.TrialState
    status = {
        states.COMPLETE: SUCCEEDED,
        states.PRUNED: PRUNED,
        states.FAIL: FAILED,
        states.RUNNING: RUNNING,
        states.WAITING: PENDING,
    }[t.state]
    if status == FAILED and (t.user_attrs.get("cancelled") or t.user_attrs.get("not_started")):
        status = CANCELLED
    steps = sorted(t.intermediate_values.items())
    last = steps[-1][1] if steps else None
    started = t.datetime_start.timestamp() if t.datetime_start else None
    ended = t.datetime_complete.timestamp() if t.datetime_complete else None
    return TrialView(
        number=t.number,
        params=dict(t.params),
        status=status,
        value=t.value if t.state == states.COMPLETE else None,
        last=last,
        steps=len(steps),
        job_id=t.user_attrs.get("job_id"),
        started=started,
        ended=ended,
        error=t.user_attrs.get("error"),
        cost=t.user_attrs.get("cost"),
    )


class _Driver:
    """One pass of the sweep loop per ``poll``: follow running trials, start new ones."""

    def __init__(self, backend, sweep, record, jobs, on_update, poll, timeout):
        self.backend, self.sweep, self.record, self.jobs = backend, sweep, record, jobs
        self.on_update, self.poll = on_update, poll
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.optuna = _optuna()
        self.study = open_study(sweep)
        self.dists = distributions(sweep)
        self.limit, why = concurrency(sweep)
        self.notes = [f"{self.limit} trials at once ({sweep.parallel} asked; {why})"] if why else []
        self.active: dict[int, tuple[Any, Any]] = {}  # trial number -> (trial, job)
        self.reported: dict[int, int] = {}  # trial number -> values reported to the pruner
        self.stop_reason: str | None = None
        self.spent = 0.0
        self.stopping: list[threading.Thread] = []  # pruned trials' jobs being cancelled

    def _stop(self, job: Any) -> None:
        """Cancel a pruned trial's job without holding up the loop (a cancel waits for the
        job's processes to end); ``_end`` waits for these."""
        thread = threading.Thread(target=job.cancel, name="nbscale-prune", daemon=True)
        thread.start()
        self.stopping.append(thread)

    def _join_stopping(self) -> None:
        for thread in self.stopping:
            thread.join(60)
        self.stopping.clear()

    # the trials Optuna holds, by state
    def _trials(self, *states):
        return self.study.get_trials(deepcopy=False, states=states)

    def _failed(self) -> list[Any]:
        return [
            t
            for t in self._trials(self.optuna.trial.TrialState.FAIL)
            if not t.user_attrs.get("cancelled") and not t.user_attrs.get("not_started")
        ]

    def _finished(self) -> int:
        s = self.optuna.trial.TrialState
        return len(self._trials(s.COMPLETE, s.PRUNED))

    def run(self) -> SweepView:
        from ...backends.local.processes import create_time

        me = os.getpid()
        update_sweep(
            self.backend.store,
            self.record.id,
            status=SWEEP_RUNNING,
            info_patch={"driver_pid": me, "driver_started": create_time(me)},
        )
        given = list(self.record.info.get("notes") or [])
        self.notes = given + [n for n in self.notes if n not in given]
        self._adopt()
        try:
            while True:
                if get_sweep(self.backend.store, self.record.id).status == SWEEP_CANCELLED:
                    return self._end(SWEEP_CANCELLED, None)
                self._follow()
                if self.stop_reason is None:
                    self._check_failures()
                if self.stop_reason is None:
                    self._check_budget()
                if self.stop_reason is None:
                    self._start_more()
                view = self.backend.view(get_sweep(self.backend.store, self.record.id))
                if self.on_update is not None:
                    self.on_update(view)
                if not self.active and (
                    self.stop_reason is not None or self._finished() >= self.sweep.trials
                ):
                    failed = self.stop_reason is not None and self.stop_reason.startswith("failed")
                    status = SWEEP_FAILED if failed else SWEEP_SUCCEEDED
                    return self._end(status, self.stop_reason)
                if self.deadline is not None and time.monotonic() > self.deadline:
                    raise TimeoutError(
                        f"sweep {self.record.id} is still running: its trials go on; run it "
                        "again to follow and finish it"
                    )
                time.sleep(self.poll)
        except BaseException as exc:
            # the kernel interrupted or died: the trials' jobs go on; a re-run resumes
            try:
                if isinstance(exc, KeyboardInterrupt):
                    self._settle()
            finally:
                update_sweep(self.backend.store, self.record.id, info_patch={"driver_pid": None})
            raise

    def _end(self, status: str, reason: str | None) -> SweepView:
        if status == SWEEP_FAILED:
            for _, job in self.active.values():
                self._stop(job)
        self._join_stopping()
        update_sweep(
            self.backend.store,
            self.record.id,
            status=status,
            ended=time.time(),
            error=reason if status == SWEEP_FAILED else None,
            info_patch={"driver_pid": None, "notes": self.notes + ([reason] if reason else [])},
        )
        view = self.backend.view(get_sweep(self.backend.store, self.record.id))
        if self.on_update is not None:
            self.on_update(view)
        return view

    def _adopt(self) -> None:
        """Trials left RUNNING by a driver that ended: follow their jobs again."""
        for t in self._trials(self.optuna.trial.TrialState.RUNNING):
            job_id = t.user_attrs.get("job_id") or self._submitted(t.number)
            if job_id and not t.user_attrs.get("job_id"):  # it ended right after submitting
                self.study._storage.set_trial_user_attr(t._trial_id, "job_id", job_id)
            if not job_id:  # the driver ended between asking and submitting
                self.study._storage.set_trial_user_attr(t._trial_id, "not_started", True)
                self.study._storage.set_trial_user_attr(
                    t._trial_id, "error", "never started: the sweep's driver ended first"
                )
                self.study.tell(t.number, state=self.optuna.trial.TrialState.FAIL)
                continue
            trial = self.optuna.trial.Trial(self.study, t._trial_id)
            self.active[t.number] = (trial, self.jobs.job(job_id))
            self.reported[t.number] = len(t.intermediate_values)

    def _submitted(self, number: int) -> str | None:
        """The job submitted for trial ``number`` of this sweep, found by its tags."""
        row = self.backend.store.query_one(
            "SELECT id FROM jobs WHERE json_extract(spec, '$.tags.\"nbscale-sweep\"') = ? "
            "AND json_extract(spec, '$.tags.\"nbscale-trial\"') = ? ORDER BY created DESC",
            (self.sweep.id, str(number)),
        )
        return row["id"] if row else None

    def _start_more(self) -> None:
        while (
            len(self.active) < self.limit
            and self._finished() + len(self.active) < self.sweep.trials
        ):
            trial = self.study.ask(self.dists)
            spec = self.sweep.trial_spec(trial.number, dict(trial.params))
            try:
                job = self.jobs.submit(spec)
            except Exception as exc:  # the spec cannot run at all: every trial would fail so
                trial.set_user_attr("error", str(exc))
                self.study.tell(trial, state=self.optuna.trial.TrialState.FAIL)
                self.stop_reason = f"failed: trial {trial.number} could not be submitted: {exc}"
                return
            trial.set_user_attr("job_id", job.id)
            self.active[trial.number] = (trial, job)
            self.reported[trial.number] = 0

    def _settle(self) -> None:
        """On an interrupt: record the trials whose jobs have ended since the last pass, so
        that the stopped sweep's table shows them as they are; nothing is started, pruned or
        cancelled. A failure here leaves them to the driver that resumes the sweep."""
        with contextlib.suppress(Exception):
            self._follow(prune=False)

    def _follow(self, prune: bool = True) -> None:
        states = self.optuna.trial.TrialState
        for number, (trial, job) in list(self.active.items()):
            record = job.refresh()
            values = _metric_values(job.metrics(), self.sweep.objective.metric)
            for step in range(self.reported[number], len(values)):
                trial.report(values[step], step)
            self.reported[number] = len(values)
            cost = _job_cost(job)
            if cost is not None:
                trial.set_user_attr("cost", cost)
            if not record.terminal:
                if prune and values and self.sweep.pruner != "none" and trial.should_prune():
                    self._stop(job)
                    trial.set_user_attr("error", f"pruned at step {len(values) - 1}")
                    self.study.tell(trial, state=states.PRUNED)
                    del self.active[number]
                continue
            del self.active[number]
            if record.status == "SUCCEEDED":
                if values:
                    self.study.tell(trial, values[-1])
                    continue
                trial.set_user_attr(
                    "error",
                    f"the trial never called nbscale.log_metric({self.sweep.objective.metric!r}, ...)",
                )
            else:
                trial.set_user_attr("error", (record.error or record.status)[-2000:])
                if record.status == "CANCELLED":
                    trial.set_user_attr("cancelled", True)
            self.study.tell(trial, state=states.FAIL)
            if record.status != "CANCELLED":
                # retried: the same values come again in a new trial (counted: --max-failed)
                self.study.enqueue_trial(dict(trial.params), skip_if_exists=False)

    def _check_failures(self) -> None:
        failed = self._failed()
        if len(failed) > self.sweep.max_failed:
            last = failed[-1].user_attrs.get("error") or "no error recorded"
            self.stop_reason = (
                f"failed: {count(len(failed), 'trial')} failed, more than --max-failed "
                f"{self.sweep.max_failed}; the last one (trial {failed[-1].number}): {last}"
            )

    def _check_budget(self) -> None:
        if self.sweep.max_cost is None:
            return
        spent = sum(t.user_attrs.get("cost") or 0.0 for t in self.study.get_trials(deepcopy=False))
        self.spent = spent
        if spent >= self.sweep.max_cost:
            self.stop_reason = (
                f"budget: ${spent:.2f} spent, the sweep's --max-cost ${self.sweep.max_cost:.2f} "
                "is reached; no more trials are started"
            )


def _job_cost(job: Any) -> float | None:
    from ...config import load as load_config
    from ...cost import record_cost

    try:
        return record_cost(job.record.to_dict(), load_config())
    except Exception:  # noqa: BLE001 - a trial without a price costs nothing we can say
        return None
