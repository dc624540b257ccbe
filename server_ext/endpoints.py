"""``/nbscale/api/endpoints``: list, describe, metrics, scale, undeploy."""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from tornado import web

from .base import NbscaleHandler
from .jobs import EXECUTE
from .models import (
    DescribeEndpoint,
    EndpointMetrics,
    ListEndpointsQuery,
    ListEndpointsResponse,
    ScaleEndpoint,
)


def _engine():
    # imported when first used: the serving engine pulls in more than the job routes need
    from nbscale import endpoints

    return endpoints


def _list(q: ListEndpointsQuery) -> ListEndpointsResponse:
    page = _engine().endpoints(q.limit, q.after)
    return ListEndpointsResponse(
        endpoints=[DescribeEndpoint(**e.to_dict()) for e in page], next=page.next
    )


def _describe(name: str) -> DescribeEndpoint:
    return DescribeEndpoint(**_engine().endpoint(name).to_dict())


def _metrics(name: str) -> EndpointMetrics:
    return EndpointMetrics(**_engine().endpoint(name).metrics())


def _scale(name: str, req: ScaleEndpoint) -> DescribeEndpoint:
    ep = _engine().endpoint(name)
    ep.scale(req.min_replicas, req.max_replicas)
    return DescribeEndpoint(**_engine().endpoint(name).to_dict())


def _delete(name: str) -> DescribeEndpoint:
    ep = _engine().endpoint(name)
    ep.delete()
    return DescribeEndpoint(**ep.to_dict())


class EndpointsHandler(NbscaleHandler):
    @web.authenticated
    @authorized
    async def get(self):
        self.reply(await self.call(_list, self.query(ListEndpointsQuery)))


class EndpointHandler(NbscaleHandler):
    @web.authenticated
    @authorized
    async def get(self, name: str):
        self.reply(await self.call(_describe, name))

    @web.authenticated
    @authorized(EXECUTE)
    async def delete(self, name: str):
        self.reply(await self.call(_delete, name))


class EndpointMetricsHandler(NbscaleHandler):
    @web.authenticated
    @authorized
    async def get(self, name: str):
        self.reply(await self.call(_metrics, name))


class ScaleHandler(NbscaleHandler):
    @web.authenticated
    @authorized(EXECUTE)
    async def post(self, name: str):
        req = self.body(ScaleEndpoint)
        self.reply(await self.call(_scale, name, req))
