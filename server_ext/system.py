"""``GET version``, ``GET backends``, ``GET cost``."""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from tornado import web

from nbscale import cost
from nbscale.backends import get_backend
from nbscale.errors import NotFound

from . import API_VERSION, __version__
from .base import NbscaleHandler
from .models import (
    BackendInfo,
    CostEstimate,
    CostEstimateQuery,
    ListBackendsResponse,
    VersionResponse,
)


class VersionHandler(NbscaleHandler):
    @web.authenticated
    @authorized
    async def get(self):
        self.reply(VersionResponse(version=__version__, api_version=API_VERSION))


def _check(name: str, config) -> tuple[bool, str]:
    try:
        result = get_backend(name, config).check()
    except Exception as exc:  # an unreachable backend is an answer here, not an error
        return False, str(exc)
    return bool(result.get("reachable")), str(result.get("detail", ""))


class BackendsHandler(NbscaleHandler):
    @web.authenticated
    @authorized
    async def get(self):
        config = await self.call(self.app.config_now)
        out = []
        for name, bconf in sorted(config.backends.items()):
            reachable, detail = await self.call(_check, name, config)
            try:
                price = cost.node_price(bconf.type, bconf.settings)
            except Exception:
                price = 0.0
            out.append(
                BackendInfo(
                    name=name,
                    type=bconf.type,
                    default=name == config.default_backend,
                    reachable=reachable,
                    detail=detail,
                    price_per_node_hour=price,
                )
            )
        self.reply(ListBackendsResponse(backends=out))


class CostHandler(NbscaleHandler):
    @web.authenticated
    @authorized
    async def get(self):
        q = self.query(CostEstimateQuery)
        config = await self.call(self.app.config_now)
        est = await self.call(cost.estimate, config=config, **q.model_dump())
        self.reply(CostEstimate(**est.to_dict()))


class NoRouteHandler(NbscaleHandler):
    """Anything under ``/nbscale/api/`` that no route takes: a JSON 404 saying where the routes are
    (an id with '..' or a character ids never have lands here too)."""

    def _no_route(self, rest: str):
        raise NotFound(
            f"no route {self.request.method} /nbscale/api/{rest[:80]}",
            "the routes are listed in server_ext/openapi.json; ids use letters, digits, "
            "'.', '_' and '-' and never '..'",
        )

    @web.authenticated
    @authorized
    async def get(self, rest: str):
        self._no_route(rest)

    @web.authenticated
    @authorized
    async def post(self, rest: str):
        self._no_route(rest)

    @web.authenticated
    @authorized
    async def delete(self, rest: str):
        self._no_route(rest)

    @web.authenticated
    @authorized
    async def put(self, rest: str):
        self._no_route(rest)

    @web.authenticated
    @authorized
    async def patch(self, rest: str):
        self._no_route(rest)
