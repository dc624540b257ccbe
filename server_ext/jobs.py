"""``/nbscale/api/jobs``: list, describe, submit, cancel, re-run, logs, metrics."""

from __future__ import annotations

from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from nbscale import cost
from nbscale.config import Config
from nbscale.errors import Conflict
from nbscale.jobs import job as get_job
from nbscale.jobs import submit
from nbscale.specs import Entry, JobSpec, shown
from nbscale.store import get_store
from nbscale.store.jobs import page_jobs

from .base import NbscaleHandler
from .models import (
    CreateJob,
    DescribeJob,
    JobLogs,
    JobLogsQuery,
    JobMetrics,
    ListJobsQuery,
    ListJobsResponse,
)

# launching or stopping compute is a separate permission from reading
EXECUTE = "execute"


def describe(data: dict[str, Any], config: Config, detail: bool = False) -> DescribeJob:
    data = shown(data)
    spec = data.get("spec") or {}
    entry = spec.get("entry") or {}
    tags = spec.get("tags") or {}
    trial = str(tags.get("nbscale-trial", ""))
    return DescribeJob(
        id=data["id"],
        name=data["name"],
        backend=data["backend"],
        backend_type=data["backend_type"],
        status=data["status"],
        created=data["created"],
        started=data["started"],
        ended=data["ended"],
        duration=data["duration"],
        nodes=data["nodes"],
        procs_per_node=data["procs_per_node"],
        gpus_per_proc=data["gpus_per_proc"],
        cost=cost.record_cost(data, config),
        error=data["error"],
        exit_code=data["exit_code"],
        failed_rank=data["failed_rank"],
        restarts=data["restarts"],
        notebook=entry.get("target") if entry.get("kind") == "notebook" else None,
        spec=spec if detail else None,
        # a sweep's trial: the panel folds them under their sweep
        sweep=tags.get("nbscale-sweep"),
        trial=int(trial) if trial.isdigit() else None,
    )


def _list(q: ListJobsQuery, config: Config) -> ListJobsResponse:
    # straight from the store: the extension's poller keeps active jobs fresh, so a
    # page is one index seek (keyset, ?after=) and the total a few rows of job_counts,
    # whatever the backend and however deep the page
    page = page_jobs(get_store(), q.status, q.backend, q.limit, q.after)
    return ListJobsResponse(
        jobs=[describe(r.to_dict(), config) for r in page],
        total=page.total,
        limit=q.limit,
        next=page.next,
    )


def _describe(job_id: str, config: Config) -> DescribeJob:
    handle = get_job(job_id, config)
    handle.refresh()
    return describe(handle.to_dict(), config, detail=True)


def _submit(spec: JobSpec, config: Config) -> DescribeJob:
    return describe(submit(spec, config).to_dict(), config, detail=True)


def _cancel(job_id: str, config: Config) -> DescribeJob:
    handle = get_job(job_id, config)
    if handle.refresh().terminal:
        raise Conflict(
            f"job {handle.id} already ended ({handle.record.status})", "there is nothing to cancel"
        )
    handle.cancel()
    return describe(handle.to_dict(), config, detail=True)


def _rerun(job_id: str, config: Config) -> DescribeJob:
    spec = JobSpec.from_dict(get_job(job_id, config).record.spec)
    return _submit(spec, config)


def _logs(job_id: str, q: JobLogsQuery, config: Config) -> JobLogs:
    handle = get_job(job_id, config)
    chunk = handle.read_logs(q.rank, q.offset)
    return JobLogs(**chunk.to_dict(), ranks=handle.ranks(), status=handle.record.status)


def _metrics(job_id: str, config: Config) -> JobMetrics:
    return JobMetrics(metrics=get_job(job_id, config).metrics())


class JobsHandler(NbscaleHandler):
    @web.authenticated
    @authorized
    async def get(self):
        q = self.query(ListJobsQuery)
        self.reply(await self.call(_list, q, self.app.config_cached()))

    @web.authenticated
    @authorized(EXECUTE)
    async def post(self):
        req = self.body(CreateJob)
        path = self.notebook_path(req.path)
        config = await self.call(self.app.config_now)
        spec = JobSpec(
            entry=Entry("notebook", path, req.parameters),
            name=req.name or "",
            backend=req.backend,
            nodes=req.nodes,
            procs_per_node=req.procs_per_node,
            gpus_per_proc=req.gpus_per_proc,
            instance_type=req.instance_type,
        )
        self.reply(await self.call(_submit, spec, config), status=201)


class JobHandler(NbscaleHandler):
    @web.authenticated
    @authorized
    async def get(self, job_id: str):
        self.reply(await self.call(_describe, job_id, self.app.config_cached()))

    @web.authenticated
    @authorized(EXECUTE)
    async def delete(self, job_id: str):
        self.reply(await self.call(_cancel, job_id, self.app.config_cached()))


class RerunHandler(NbscaleHandler):
    @web.authenticated
    @authorized(EXECUTE)
    async def post(self, job_id: str):
        self.reply(
            await self.call(_rerun, job_id, await self.call(self.app.config_now)), status=201
        )


class LogsHandler(NbscaleHandler):
    @web.authenticated
    @authorized
    async def get(self, job_id: str):
        q = self.query(JobLogsQuery)
        self.reply(await self.call(_logs, job_id, q, self.app.config_cached()))


class MetricsHandler(NbscaleHandler):
    @web.authenticated
    @authorized
    async def get(self, job_id: str):
        self.reply(await self.call(_metrics, job_id, self.app.config_cached()))
