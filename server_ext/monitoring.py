"""``/nbscale/api/endpoints/{name}/drift`` and ``/nbscale/api/idle``: thin calls into nbscale.monitoring."""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from tornado import web

from .base import NbscaleHandler
from .models import EndpointDrift, EndpointDriftQuery, ListIdleResponse


def _drift(name: str, window: str, since: str | None) -> EndpointDrift:
    from nbscale.endpoints import endpoint

    return EndpointDrift(**endpoint(name).drift(window=window, since=since).to_dict())


def _idle(config) -> ListIdleResponse:
    from nbscale.monitoring.idle import running_things

    items = running_things(config)
    return ListIdleResponse(
        items=items, cost_per_hour=round(sum(t["cost_per_hour"] for t in items), 4)
    )


class DriftHandler(NbscaleHandler):
    @web.authenticated
    @authorized
    async def get(self, name: str):
        q = self.query(EndpointDriftQuery)
        self.reply(await self.call(_drift, name, q.window, q.since))


class IdleHandler(NbscaleHandler):
    @web.authenticated
    @authorized
    async def get(self):
        config = await self.call(self.app.config_now)
        self.reply(await self.call(_idle, config))
