"""The Python API for jobs: ``submit(spec) -> Job``, ``jobs()``, ``job(id)``.

Every face (CLI, magics, server extension) goes through these functions, so
a job behaves the same whoever started it.
"""

from __future__ import annotations

import os
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import IO, Any

from . import paths
from .backends import DryRun, JobBackend, LogChunk, backend_for, get_backend
from .config import Config
from .config import load as load_config
from .errors import JobFailed, NbscaleError, SpecError
from .specs import JobSpec, shown
from .store import Store, get_store
from .store.jobs import (
    FAILED,
    PENDING,
    RUNNING,
    STATUSES,
    SUCCEEDED,
    TERMINAL,
    JobRecord,
    get_job,
    insert_job,
    page_jobs,
    update_job,
)
from .store.paging import Page
from .words import count


class Job:
    """A handle on one job; cheap to make, it reads the store when asked."""

    def __init__(self, record: JobRecord, backend: JobBackend):
        self._record = record
        self._backend = backend

    @property
    def id(self) -> str:
        return self._record.id

    @property
    def name(self) -> str:
        return self._record.name

    @property
    def record(self) -> JobRecord:
        return self._record

    def refresh(self) -> JobRecord:
        self._record = self._backend.status(get_job(self._backend.store, self.id))
        return self._record

    def status(self) -> str:
        return self.refresh().status

    def wait(
        self,
        timeout: float | None = None,
        poll: float = 0.1,
        on_update: Callable[[JobRecord], None] | None = None,
        raise_on_failure: bool = False,
        progress: IO[str] | None = None,
        status: str | None = None,
    ) -> JobRecord:
        """Until the job has ended, or, with ``status``, until it is in that status
        (``RUNNING``; ``SUCCEEDED``...); ``WaitTimeout`` (a ``TimeoutError``) after
        ``timeout`` s, the job going on. A status the job can no longer reach (it ended
        otherwise, or it runs already when ``PENDING`` is asked) raises ``NbscaleError``
        at once. ``progress``: a stream for one line each time the state changes."""
        from .backends.remote.lifecycle import wait_for

        wanted = check_status(status) if status is not None else None

        def reached(r: JobRecord) -> bool:
            return r.terminal if wanted is None else r.status == wanted

        record = wait_for(
            f"job {self.id}",
            self.refresh,
            lambda r: r.status,
            reached,
            failure=None if wanted is None else lambda r: _unreachable(r, wanted),
            timeout=timeout,
            interval=poll,
            hint=f"it goes on: follow it with nbscale logs -f {self.id}, "
            f"or stop it with nbscale cancel {self.id}",
            detail=lambda r: r.info.get("phase"),
            progress=progress,
            on_update=on_update,
        )
        if raise_on_failure and record.status != SUCCEEDED:
            raise JobFailed(
                f"job {self.id} {record.status.lower()}: {record.error or ''}".rstrip(": "),
                rank=record.failed_rank,
                traceback=record.info.get("traceback"),
            )
        return record

    def ranks(self) -> list[int]:
        return self._backend.ranks(self._record)

    def node_ranks(self, node: int) -> list[int]:
        """The ranks node ``node`` runs (``procs_per_node`` of them); refused past the
        job's last node."""
        spec = self._record.spec
        nodes = int(spec.get("nodes") or 1)
        per = int(spec.get("procs_per_node") or 1)
        if not 0 <= node < nodes:
            raise SpecError(
                "--node",
                f"job {self.id} has {count(nodes, 'node')}: {node} is not one of them",
                f"give 0 to {nodes - 1}",
            )
        return list(range(node * per, (node + 1) * per))

    def platform_logs(
        self,
        node: int | None = None,
        tail: int | None = None,
        since: float | None = None,
        follow: bool = False,
    ) -> Iterator[tuple[int, str]]:
        """``(node, line)`` from where the platform keeps the logs, with its timestamps: the
        last ``tail`` lines, those of the last ``since`` seconds, following with ``follow``
        (a backend without timestamps refuses, naming what to do instead)."""
        if node is not None:
            self.node_ranks(node)  # refused past the last node
        return self._backend.platform_logs(
            self.refresh(), None if node is None else [node], tail, since, follow
        )

    def tail(self, rank: int, lines: int) -> tuple[list[str], int]:
        """The last ``lines`` lines of one rank's log so far and the offset after them;
        memory holds those lines and one chunk, however long the log."""
        kept: deque[str] = deque(maxlen=max(lines, 0))
        offset, partial = 0, ""
        while True:
            chunk = self._backend.logs(self._record, rank, offset)
            if not chunk.text:
                break
            parts = (partial + chunk.text).split("\n")
            partial = parts.pop()
            kept.extend(parts)
            offset = chunk.next_offset
        if partial:
            kept.append(partial)
        return (list(kept) if lines > 0 else []), offset

    def read_logs(self, rank: int, offset: int = 0) -> LogChunk:
        return self._backend.logs(self._record, rank, offset)

    def logs(self, rank: int | None = None) -> str:
        """All log text so far: one rank's, or every rank's with a ``[rank N]`` prefix."""
        if rank is not None:
            return self._read_all(rank)
        parts = []
        for r in self.ranks():
            parts.extend(f"[rank {r}] {line}" for line in self._read_all(r).splitlines())
        return "\n".join(parts) + ("\n" if parts else "")

    def _read_all(self, rank: int) -> str:
        text, offset = [], 0
        while True:
            chunk = self._backend.logs(self._record, rank, offset)
            if not chunk.text:
                return "".join(text)
            text.append(chunk.text)
            offset = chunk.next_offset

    def follow(
        self,
        ranks: list[int] | None = None,
        poll: float = 0.1,
        on_poll: Callable[[JobRecord], None] | None = None,
        start: dict[int, int] | None = None,
    ) -> Iterator[tuple[int, str]]:
        """Yield ``(rank, line)`` as lines appear, until the job has ended and every log is
        read; ``start``: where each rank's log is read from (default: its beginning)."""
        offsets: dict[int, int] = dict(start or {})
        partial: dict[int, str] = {}
        while True:
            record = self.refresh()
            ended = record.terminal
            if on_poll:
                on_poll(record)
            progressed = False
            for rank in self.ranks():
                if ranks is not None and rank not in ranks:
                    continue
                chunk = self._backend.logs(self._record, rank, offsets.get(rank, 0))
                if not chunk.text:
                    continue
                progressed = True
                offsets[rank] = chunk.next_offset
                lines = (partial.pop(rank, "") + chunk.text).split("\n")
                partial[rank] = lines.pop()
                for line in lines:
                    yield rank, line
            if ended and not progressed:
                for rank, rest in sorted(partial.items()):
                    if rest:
                        yield rank, rest
                return
            if not progressed:
                time.sleep(poll)

    def metrics(self) -> list[dict[str, Any]]:
        return self._backend.metrics(self._record)

    def cancel(self) -> JobRecord:
        self._record = self._backend.cancel(get_job(self._backend.store, self.id))
        return self._record

    def to_dict(self) -> dict[str, Any]:
        """The record as shown to people and programs (secret-looking values masked)."""
        return shown(self._record.to_dict())

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait for a cell job (``%%train``) and return its outputs by name; raises ``JobFailed``."""
        from .results import load_results

        return load_results(self.wait(timeout=timeout, raise_on_failure=True))

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, str]:
        from .job_repr import job_mimebundle

        return job_mimebundle(self._record)

    def __repr__(self) -> str:
        return f"<Job {self.id} {self._record.status}>"


def check_status(status: str) -> str:
    """``status`` in nbscale's words (any case); one clear message for an unknown one."""
    wanted = str(status).upper()
    if wanted not in STATUSES:
        raise SpecError("status", f"unknown status {status!r}", f"use one of {', '.join(STATUSES)}")
    return wanted


def _unreachable(record: JobRecord, wanted: str) -> NbscaleError | None:
    """Why ``record`` can no longer be ``wanted`` (None: it still can): a job moves from
    PENDING to RUNNING to one terminal status, never back."""
    now = record.status
    if now == wanted:
        return None
    if now in TERMINAL:
        why = f"it ended {now}" + (f": {record.error}" if record.error else "")
    elif now == RUNNING and wanted == PENDING:
        why = "it is RUNNING already"
    else:
        return None
    return NbscaleError(
        f"job {record.id} will never be {wanted}: {why}",
        f"see what happened with nbscale status {record.id}",
    )


def _new_id(name: str) -> str:
    return f"{name[:40].rstrip('-')}-{secrets.token_hex(3)}"


def dry_run_record(spec: JobSpec, backend: JobBackend) -> JobRecord:
    """The record ``submit`` would write (a fresh id), for a backend's ``dry_run``; not stored."""
    job_id = _new_id(spec.name)
    return JobRecord(
        id=job_id,
        name=spec.name,
        backend=backend.config.name,
        backend_type=backend.type,
        status=PENDING,
        spec=spec.replace(backend=backend.config.name).to_dict(),
        created=time.time(),
        info={"job_dir": str(paths.job_dir(job_id)), "cwd": os.getcwd(), "phase": "dry-run"},
    )


def dry_run_plan(spec: JobSpec, config: Config | None = None) -> DryRun:
    """What ``submit(spec)`` would send, after the same checks, with nothing sent, uploaded
    or stored: the platform's objects or request, or, for a backend that sends none
    (local), the spec it would run."""
    backend = get_backend(spec.backend, config or load_config())
    backend.check_resources(spec)
    backend.validate(spec)
    plan = backend.dry_run(dry_run_record(spec, backend))
    real = backend.resolve(spec)
    if (real.procs_per_node, real.gpus_per_proc) != (spec.procs_per_node, spec.gpus_per_proc):
        plan = plan.with_notes(
            f"each node runs {count(real.procs_per_node, 'process')} with "
            f"{count(real.gpus_per_proc, 'GPU')} each (the node's GPUs; "
            f"asked: {spec.procs_per_node} x {spec.gpus_per_proc})"
        )
    return plan


def submit(spec: JobSpec, config: Config | None = None, store: Store | None = None) -> Job:
    """Validate, record and start a job; nothing is written when validation fails."""
    config = config or load_config()
    store = store or get_store()
    bconf = config.backend(spec.backend)
    spec = spec.replace(backend=bconf.name)
    backend = get_backend(bconf.name, config, store)
    backend.check_resources(spec)
    backend.validate(spec)
    if spec.max_cost is not None:  # over budget: refused before anything is stored
        from .cost import check_budget

        check_budget(spec, config)
    job_id = _new_id(spec.name)
    record = JobRecord(
        id=job_id,
        name=spec.name,
        backend=bconf.name,
        backend_type=bconf.type,
        status=PENDING,
        spec=spec.to_dict(),
        created=time.time(),
        info={"job_dir": str(paths.job_dir(job_id)), "cwd": os.getcwd(), "phase": "queued"},
    )
    insert_job(store, record)
    try:
        record = backend.submit(record, secrets=dict(spec.secret_values))
    except NbscaleError as exc:
        update_job(store, job_id, status=FAILED, ended=time.time(), error=str(exc))
        raise
    except OSError as exc:
        update_job(store, job_id, status=FAILED, ended=time.time(), error=f"could not start: {exc}")
        raise NbscaleError(f"could not start job {job_id}: {exc}") from exc
    return Job(record, backend)


def job(job_id: str, config: Config | None = None, store: Store | None = None) -> Job:
    store = store or get_store()
    record = get_job(store, job_id)
    return Job(record, backend_for(record, config or load_config(), store))


def jobs(
    status: str | None = None,
    backend: str | None = None,
    limit: int = 100,
    after: str | None = None,
    refresh: bool = True,
    config: Config | None = None,
    store: Store | None = None,
) -> Page[Job]:
    """Newest first; ``after`` is a page's ``next`` cursor (keyset paging, nbscale.store.paging)."""
    store = store or get_store()
    config = config or load_config()
    records = page_jobs(store, status=status, backend=backend, limit=limit, after=after)
    out = []
    backends: dict[str, JobBackend] = {}
    for rec in records:
        if rec.backend not in backends:
            backends[rec.backend] = backend_for(rec, config, store)
        handle = Job(rec, backends[rec.backend])
        if refresh and not rec.terminal:
            handle.refresh()
        out.append(handle)
    return Page(out, records.next, records.total)


def platform_jobs(
    backend: str | None = None, config: Config | None = None, store: Store | None = None
) -> list[dict[str, Any]]:
    """Every job the platform of ``backend`` holds where it looks (a Kubeflow namespace's
    TrainJobs), nbscale's and others', each with ``attached``: the id of its row in the
    store, if it has one (``attach`` makes one)."""
    config = config or load_config()
    store = store or get_store()
    plat = get_backend(backend, config, store)
    found = plat.list_native()
    for item in found:
        row = store.query_one(
            "SELECT id FROM jobs WHERE backend = ? AND native_id = ? ORDER BY created DESC",
            (plat.config.name, item.get("name")),
        )
        item["attached"] = row[0] if row else None
    return found


def attach(
    name: str, backend: str | None = None, config: Config | None = None, store: Store | None = None
) -> Job:
    """A handle on the platform's job ``name`` (one nbscale did not start too): its row in
    the store, made when there is none, so status, logs and wait work on it."""
    config = config or load_config()
    store = store or get_store()
    plat = get_backend(backend, config, store)
    return Job(plat.attach(name), plat)


def runtimes(backend: str | None = None, config: Config | None = None) -> list[dict[str, Any]]:
    """The runtimes the platform of ``backend`` offers its jobs (Kubeflow: the
    ClusterTrainingRuntimes and the namespace's TrainingRuntimes)."""
    return get_backend(backend, config or load_config()).runtimes()
