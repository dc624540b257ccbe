"""A local sweep as its driver leaves it, without running one: the store's row
(``put_sweep``) and the Optuna journal in the nbscale home (``open_study``), its trials
added with ``optuna.trial.create_trial``, so the engine's ``view()`` reads real Optuna data.

For the server extension's and the panel's tests (a real sweep takes minutes)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from nbscale.backends.local.processes import create_time
from nbscale.backends.local.sweeps import distributions, open_study, study_path
from nbscale.specs import Entry, JobSpec
from nbscale.store import get_store
from nbscale.store.sweeps import RUNNING, SweepRecord, put_sweep
from nbscale.sweeps.spec import SweepSpec

SPACE = "lr=loguniform(1e-4,1e-1) batch=choice(32,64) layers=int(2,6)"


def planted_sweep(folder: Path, name: str = "lr-sweep", trials: int = 8, parallel: int = 2):
    """``(spec, study)`` of a RUNNING local sweep whose driver is this process (so it is
    not shown as STOPPED); add trials to ``study`` with :func:`add_trial`."""
    script = folder / f"{name}.py"
    script.write_text(
        "import nbscale\n"
        "lr = nbscale.param('lr')\n"
        "for step in range(3):\n"
        "    nbscale.log_metric('val_loss', (lr - 0.01) ** 2 + 1 / (step + 1))\n"
    )
    spec = SweepSpec(
        job=JobSpec(entry=Entry("script", str(script)), name=name),
        space=SPACE,
        objective="val_loss:min",
        trials=trials,
        parallel=parallel,
    )
    now = time.time()
    put_sweep(
        get_store(),
        SweepRecord(
            id=spec.id,
            name=spec.name,
            backend="local",
            backend_type="local",
            status=RUNNING,
            spec=spec.to_dict(),
            created=now,
            updated=now,
            native_id=str(study_path(spec.id)),
            info={
                "notes": [],
                "driver_pid": os.getpid(),
                "driver_started": create_time(os.getpid()),
            },
        ),
    )
    return spec, open_study(spec)


def add_trial(
    spec: SweepSpec,
    study: Any,
    params: dict[str, Any],
    values: list[float],
    state: str = "COMPLETE",
    **user_attrs: Any,
) -> int:
    """A trial with these parameters whose objective logged ``values`` (the last is its
    value when ``state`` is COMPLETE); returns its number."""
    import optuna

    states = optuna.trial.TrialState
    trial = optuna.trial.create_trial(
        state=states[state],
        value=values[-1] if state == "COMPLETE" else None,
        params=params,
        distributions=distributions(spec),
        intermediate_values=dict(enumerate(values)),
        user_attrs=user_attrs,
    )
    study.add_trial(trial)
    return study.get_trials(deepcopy=False)[-1].number
