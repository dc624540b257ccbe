"""``/nbscale/api/pipelines``: list runs, describe a run, start a run, cancel a run."""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from tornado import web

from .base import NbscaleHandler
from .jobs import EXECUTE
from .models import CreateRun, DescribeRun, ListRunsQuery, ListRunsResponse

# the runner kills its kernels on SIGTERM within seconds; past this the answer is a 504
CANCEL_TIMEOUT = 30.0


def _engine():
    from nbscale import pipelines

    return pipelines


def _list(q: ListRunsQuery) -> ListRunsResponse:
    page = _engine().runs(q.limit, q.after)
    return ListRunsResponse(runs=[DescribeRun(**r.to_dict()) for r in page], next=page.next)


def _describe(run_id: str) -> DescribeRun:
    return DescribeRun(**_engine().get_run(run_id).to_dict())


def _start(path: str, req: CreateRun) -> DescribeRun:
    run = _engine().start_run(
        path, parameters=req.parameters or None, backend=req.backend, detach=True
    )
    return DescribeRun(**run.to_dict())


def _cancel(run_id: str) -> DescribeRun:
    # the engine refuses (NotFound / Conflict) an unknown, ended or in-process run itself
    return DescribeRun(**_engine().cancel_run(run_id, timeout=CANCEL_TIMEOUT).to_dict())


class RunsHandler(NbscaleHandler):
    @web.authenticated
    @authorized
    async def get(self):
        self.reply(await self.call(_list, self.query(ListRunsQuery)))

    @web.authenticated
    @authorized(EXECUTE)
    async def post(self):
        req = self.body(CreateRun)
        path = self.notebook_path(req.path, suffixes=(".ipynb", ".py", ".yaml", ".yml", ".toml"))
        self.reply(await self.call(_start, path, req), status=201)


class RunHandler(NbscaleHandler):
    @web.authenticated
    @authorized
    async def get(self, run_id: str):
        self.reply(await self.call(_describe, run_id))

    @web.authenticated
    @authorized(EXECUTE)
    async def delete(self, run_id: str):
        self.reply(await self.call(_cancel, run_id))
