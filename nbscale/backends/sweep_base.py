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
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from ..sweeps.view import (  # noqa: F401 - the role's vocabulary, named here for backends
    CANCELLED,
    FAILED,
    PENDING,
    PRUNED,
    RUNNING,
    SUCCEEDED,
    TRIAL_TERMINAL,
    SweepView,
    TrialView,
)
from .base import DryRun

if TYPE_CHECKING:
    from ..config import BackendConfig
    from ..store import Store
    from ..store.jobs import JobRecord
    from ..store.sweeps import SweepRecord
    from ..sweeps.spec import SweepSpec


class JobAPI(Protocol):
    """What a driver that runs trials as nbscale jobs is handed by the engine (``nbscale.jobs``:
    a backend module does not import the layer above it)."""

    def submit(self, spec: Any) -> Any: ...

    def job(self, job_id: str) -> Any: ...


class SweepBackend(ABC):
    """Starts, follows and stops sweeps on one configured backend."""

    #: the search algorithm a sweep gets when it names none (SageMaker has no TPE)
    default_algorithm: ClassVar[str] = "tpe"
    #: how ``--max-cost`` holds when no ``--max-runtime`` bounds a trial (no estimate)
    budget_rule: ClassVar[str] = "trials stop being started once the spend reaches it"

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

    def detach(self, sweep: SweepSpec, record: SweepRecord) -> SweepRecord:
        """Leave the sweep running without this process. A platform runs its sweeps by
        itself, so nothing is needed; the local backend starts its driver in the
        background."""
        return record

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
