"""The sweep role of a platform: one ``SweepBackend`` per platform, behind one interface.

- local: Optuna samples and prunes; each trial is an ordinary nbscale job (``local/sweeps.py``);
- kubeflow: a Katib ``Experiment`` whose trial template is the backend's TrainJob
  (``kubeflow/sweeps.py``);
- sagemaker: ``CreateHyperParameterTuningJob`` around the backend's CreateTrainingJob
  request (``sagemaker/sweeps.py``).

Every backend answers with the same ``SweepView``: the trials, each with its parameters,
status, last and final objective value, and the best trial.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from .base import DryRun

if TYPE_CHECKING:
    from ..config import BackendConfig
    from ..store import Store
    from ..store.jobs import JobRecord
    from ..store.sweeps import SweepRecord
    from ..sweeps.spec import SweepSpec

# a trial's status; PRUNED: stopped early by the pruner / early stopping, not a failure
PENDING, RUNNING, SUCCEEDED, FAILED, PRUNED, CANCELLED = (
    "PENDING",
    "RUNNING",
    "SUCCEEDED",
    "FAILED",
    "PRUNED",
    "CANCELLED",
)
TRIAL_TERMINAL = (SUCCEEDED, FAILED, PRUNED, CANCELLED)


class JobAPI(Protocol):
    """What a driver that runs trials as nbscale jobs is handed by the engine (``nbscale.jobs``:
    a backend module does not import the layer above it)."""

    def submit(self, spec: Any) -> Any: ...

    def job(self, job_id: str) -> Any: ...


@dataclass
class TrialView:
    number: int
    params: dict[str, Any]
    status: str
    value: float | None = None  # the objective's final value (its last logged value)
    last: float | None = None  # the latest intermediate value while it runs
    steps: int = 0  # how many values of the objective it logged
    job_id: str | None = None  # the nbscale job (local), Trial or training job name (remote)
    started: float | None = None
    ended: float | None = None
    error: str | None = None
    cost: float | None = None  # USD, where the backend has a price

    @property
    def duration(self) -> float | None:
        if self.started is None:
            return None
        return (self.ended or time.time()) - self.started

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "params": self.params,
            "status": self.status,
            "value": self.value,
            "last": self.last,
            "steps": self.steps,
            "job_id": self.job_id,
            "started": self.started,
            "ended": self.ended,
            "duration": self.duration,
            "error": self.error,
            "cost": self.cost,
        }


@dataclass
class SweepView:
    id: str
    name: str
    backend: str
    status: str  # RUNNING, SUCCEEDED, FAILED, CANCELLED, STOPPED (store.sweeps)
    objective: str  # "val_loss:min"
    trials: list[TrialView] = field(default_factory=list)
    planned: int = 0  # --trials
    native_id: str | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def minimize(self) -> bool:
        return self.objective.endswith(":min")

    @property
    def best(self) -> TrialView | None:
        scored = [t for t in self.trials if t.status == SUCCEEDED and t.value is not None]
        if not scored:
            return None
        return (min if self.minimize else max)(scored, key=lambda t: t.value)

    def ranked(self) -> list[TrialView]:
        """Trials by objective, best first (those with no value yet last, by number)."""
        sign = 1 if self.minimize else -1

        def key(t: TrialView) -> tuple:
            value = t.value if t.value is not None else t.last
            return (value is None, sign * value if value is not None else 0, t.number)

        return sorted(self.trials, key=key)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials:
            out[t.status] = out.get(t.status, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        best = self.best
        return {
            "id": self.id,
            "name": self.name,
            "backend": self.backend,
            "status": self.status,
            "objective": self.objective,
            "planned": self.planned,
            "native_id": self.native_id,
            "error": self.error,
            "notes": self.notes,
            "counts": self.counts(),
            "best": best.to_dict() if best else None,
            "trials": [t.to_dict() for t in self.ranked()],
        }


class SweepBackend(ABC):
    """Starts, follows and stops sweeps on one configured backend."""

    #: the search algorithm a sweep gets when it names none (SageMaker has no TPE)
    default_algorithm: ClassVar[str] = "tpe"

    def __init__(self, config: BackendConfig, store: Store):
        self.config = config
        self.store = store
        self.backend = config.name

    @abstractmethod
    def dry_run(self, sweep: SweepSpec) -> DryRun:
        """What ``start`` would send or run; nothing is created."""

    @abstractmethod
    def start(self, sweep: SweepSpec, record: SweepRecord) -> SweepRecord:
        """Create the sweep on the platform (remote) or prepare its study (local); the
        returned record carries the platform's id in ``native_id``."""

    @abstractmethod
    def view(self, record: SweepRecord) -> SweepView:
        """The sweep and its trials now."""

    @abstractmethod
    def cancel(self, record: SweepRecord) -> None:
        """Stop the sweep and every running trial."""

    def trial_job(self, record: SweepRecord, trial: TrialView) -> JobRecord | None:
        """A job row for a remote trial (its training job, its TrainJob), as the backend's
        ``JobBackend`` would have written it on submit, so that its status, logs and outputs
        come home the way a job's do; None where the backend's trials are nbscale jobs
        already (local) or it cannot say."""
        return None

    def drive(
        self,
        sweep: SweepSpec,
        record: SweepRecord,
        jobs: JobAPI,
        on_update: Callable[[SweepView], None] | None = None,
        poll: float = 2.0,
        timeout: float | None = None,
    ) -> SweepView:
        """Follow the sweep until it ends (a remote platform runs it by itself); the local
        backend overrides this to run it, its trials as jobs through ``jobs``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            view = self.view(record)
            if on_update is not None:
                on_update(view)
            if view.status not in ("RUNNING",):
                return view
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"sweep {record.id} is still running after {timeout:g} s")
            time.sleep(poll)
