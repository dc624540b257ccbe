"""What every backend answers about a sweep: its trials and the best one (``SweepView``)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

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

    @property
    def cost(self) -> float | None:
        """USD its trials spent so far, where they are priced (None: none is)."""
        costs = [t.cost for t in self.trials if t.cost is not None]
        return round(sum(costs), 4) if costs else None

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
            "cost": self.cost,
            "best": best.to_dict() if best else None,
            "trials": [t.to_dict() for t in self.ranked()],
        }
