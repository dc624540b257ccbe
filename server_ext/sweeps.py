"""``/nbscale/api/sweeps``: list sweeps, describe one (its trials, best first), cancel one.

Thin: the engine (``nbscale.sweep_runs``) reads the store and the backend's study,
Experiment or tuning job; these handlers only shape its answer.
"""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from tornado import web

from nbscale.backends.sweep_base import RUNNING as TRIAL_RUNNING
from nbscale.backends.sweep_base import TRIAL_TERMINAL
from nbscale.config import Config
from nbscale.errors import Conflict

from .base import NbscaleHandler
from .jobs import EXECUTE
from .models import DescribeSweep, ListSweepsQuery, ListSweepsResponse, SweepSummary


def _engine():
    from nbscale import sweep_runs

    return sweep_runs


def summary(handle) -> SweepSummary:
    record, view = handle.record, handle.view()
    best = view.best
    counts = view.counts()
    return SweepSummary(
        id=view.id,
        name=view.name,
        backend=view.backend,
        backend_type=record.backend_type,
        status=view.status,
        objective=view.objective,
        planned=view.planned,
        done=sum(counts.get(s, 0) for s in TRIAL_TERMINAL),
        running=counts.get(TRIAL_RUNNING, 0),
        best_value=best.value if best else None,
        best_trial=best.number if best else None,
        cost=view.cost,
        created=record.created,
        ended=record.ended,
        error=view.error,
    )


def _list(q: ListSweepsQuery, config: Config) -> ListSweepsResponse:
    return ListSweepsResponse(sweeps=[summary(h) for h in _engine().sweeps(q.limit, config)])


def _describe(sweep_id: str, config: Config) -> DescribeSweep:
    return DescribeSweep(**_engine().get(sweep_id, config).view().to_dict())


def _cancel(sweep_id: str, config: Config) -> DescribeSweep:
    handle = _engine().get(sweep_id, config)
    if handle.record.terminal:
        raise Conflict(
            f"sweep {handle.id} already ended ({handle.record.status})",
            "there is nothing to cancel",
        )
    return DescribeSweep(**handle.cancel().to_dict())


class SweepsHandler(NbscaleHandler):
    @web.authenticated
    @authorized
    async def get(self):
        q = self.query(ListSweepsQuery)
        self.reply(await self.call(_list, q, self.app.config_cached()))


class SweepHandler(NbscaleHandler):
    @web.authenticated
    @authorized
    async def get(self, sweep_id: str):
        self.reply(await self.call(_describe, sweep_id, self.app.config_cached()))

    @web.authenticated
    @authorized(EXECUTE)
    async def delete(self, sweep_id: str):
        self.reply(await self.call(_cancel, sweep_id, self.app.config_cached()))
