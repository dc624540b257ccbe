"""Job records and their events."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import NotFound
from . import Store, paging
from .paging import Page, seek

PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED, LOST = (
    "PENDING",
    "RUNNING",
    "SUCCEEDED",
    "FAILED",
    "CANCELLED",
    "LOST",
)
ACTIVE = (PENDING, RUNNING)
TERMINAL = (SUCCEEDED, FAILED, CANCELLED, LOST)
STATUSES = ACTIVE + TERMINAL


@dataclass
class JobRecord:
    id: str
    name: str
    backend: str
    backend_type: str
    status: str
    spec: dict[str, Any]
    created: float
    started: float | None = None
    ended: float | None = None
    exit_code: int | None = None
    failed_rank: int | None = None
    error: str | None = None
    native_id: str | None = None
    restarts: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def duration(self) -> float | None:
        if self.started is None:
            return None
        return (self.ended or time.time()) - self.started

    def to_dict(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "id": self.id,
            "name": self.name,
            "backend": self.backend,
            "backend_type": self.backend_type,
            "status": self.status,
            "created": self.created,
            "started": self.started,
            "ended": self.ended,
            "duration": self.duration,
            "exit_code": self.exit_code,
            "failed_rank": self.failed_rank,
            "error": self.error,
            "native_id": self.native_id,
            "restarts": self.restarts,
            "nodes": spec.get("nodes", 1),
            "procs_per_node": spec.get("procs_per_node", 1),
            "gpus_per_proc": spec.get("gpus_per_proc", 0),
            "spec": spec,
        }

    @classmethod
    def from_row(cls, row: Any) -> JobRecord:
        data = dict(row)
        data["spec"] = json.loads(data["spec"])
        data["info"] = json.loads(data["info"] or "{}")
        return cls(**data)


_COLUMNS = [
    "id",
    "name",
    "backend",
    "backend_type",
    "status",
    "spec",
    "created",
    "started",
    "ended",
    "exit_code",
    "failed_rank",
    "error",
    "native_id",
    "restarts",
    "info",
]


def _encode(name: str, value: Any) -> Any:
    return json.dumps(value) if name in ("spec", "info") else value


def insert_job(store: Store, record: JobRecord) -> None:
    values = [_encode(c, getattr(record, c)) for c in _COLUMNS]

    def body(conn: Any) -> None:
        conn.execute(
            f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
            values,
        )
        _event(conn, record.id, "created", {"status": record.status})

    store.write(body)


def get_job(store: Store, job_id: str) -> JobRecord:
    if len(job_id) > 200:  # ids are ~50 characters; a longer one cannot name a job
        raise NotFound(
            f"no job {job_id[:40]!r}... ({len(job_id)} characters)", "list jobs with: nbscale jobs"
        )
    row = store.query_one("SELECT * FROM jobs WHERE id = ?", (job_id,))
    if row is None:
        # let people type a unique prefix, as with git hashes (compared as text: no wildcards)
        rows = store.query(
            "SELECT * FROM jobs WHERE substr(id, 1, ?) = ? LIMIT 2", (len(job_id), job_id)
        )
        if len(rows) == 1:
            return JobRecord.from_row(rows[0])
        raise NotFound(f"no job {job_id!r}", "list jobs with: nbscale jobs")
    return JobRecord.from_row(row)


def _filters(status: str | None, backend: str | None) -> tuple[list[str], list[Any]]:
    where, params = [], []
    if status:
        where.append("status = ?")
        params.append(status.upper())
    if backend:
        where.append("backend = ?")
        params.append(backend)
    return where, params


def count_jobs(store: Store, status: str | None = None, backend: str | None = None) -> int:
    """How many jobs match, from ``job_counts`` (kept by triggers): a few rows, never a scan."""
    where, params = _filters(status, backend)
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    return store.query_one(f"SELECT COALESCE(SUM(n), 0) FROM job_counts{clause}", tuple(params))[0]


def page_jobs(
    store: Store,
    status: str | None = None,
    backend: str | None = None,
    limit: int = 100,
    after: str | None = None,
) -> Page[JobRecord]:
    """Newest first (``created``, then ``id``, descending), after the cursor ``after``;
    the page's ``next`` is the cursor of the page after it and ``total`` counts every
    match. Each filter combination has an index on ``(filters..., created, id)``."""
    where, params = _filters(status, backend)
    page = seek(store, paging.JOBS, "jobs", "id", where, params, limit, after)
    return Page(
        [JobRecord.from_row(r) for r in page], page.next, count_jobs(store, status, backend)
    )


def list_jobs(
    store: Store,
    status: str | None = None,
    backend: str | None = None,
    limit: int = 100,
    after: str | None = None,
) -> tuple[list[JobRecord], int]:
    """``(records, total)`` of :func:`page_jobs`' page."""
    page = page_jobs(store, status, backend, limit, after)
    return list(page), page.total


def update_job(
    store: Store, job_id: str, only_if_active: bool = True, event: str | None = None, **fields: Any
) -> bool:
    """Change fields; with ``only_if_active`` a job that already ended is left alone.

    Returns whether the row changed, so two processes racing to end a job
    (the supervisor finishing, a cancel, a LOST check) agree on one winner.
    """
    if not fields:
        return False
    info_patch = fields.pop("info_patch", None)
    sets = [f"{k} = ?" for k in fields]
    params = [_encode(k, v) for k, v in fields.items()]
    if info_patch:
        sets.append("info = json_patch(info, ?)")
        params.append(json.dumps(info_patch))
    sql = f"UPDATE jobs SET {', '.join(sets)} WHERE id = ?"
    params.append(job_id)
    if only_if_active:
        sql += f" AND status IN ({', '.join('?' * len(ACTIVE))})"
        params.extend(ACTIVE)

    def body(conn: Any) -> bool:
        changed = conn.execute(sql, params).rowcount > 0
        if changed and (event or "status" in fields):
            data = {
                k: v
                for k, v in fields.items()
                if k in ("status", "exit_code", "failed_rank", "error")
            }
            _event(conn, job_id, event or "status", data)
        return changed

    # store.write: the record that ends a job is written even on a disk its logs filled
    return store.write(body)


def _event(conn: Any, ref: str, type_: str, data: dict, kind: str = "job") -> None:
    conn.execute(
        "INSERT INTO events (kind, ref, time, type, data) VALUES (?, ?, ?, ?, ?)",
        (kind, ref, time.time(), type_, json.dumps(data)),
    )


def add_event(
    store: Store, ref: str, type_: str, data: dict | None = None, kind: str = "job"
) -> None:
    store.write(lambda conn: _event(conn, ref, type_, data or {}, kind))


def events(store: Store, ref: str, kind: str = "job", after: int = 0) -> list[dict[str, Any]]:
    rows = store.query(
        "SELECT id, time, type, data FROM events WHERE kind = ? AND ref = ? AND id > ? ORDER BY id",
        (kind, ref, after),
    )
    return [
        {"id": r["id"], "time": r["time"], "type": r["type"], "data": json.loads(r["data"])}
        for r in rows
    ]
