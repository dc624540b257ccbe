"""Sweeps: one row per sweep (its spec, where it runs, how it ended); its trials are jobs
(``jobs.info.sweep``) locally, or the platform's own objects (Katib Trials, SageMaker
training jobs of a tuning job) elsewhere."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import NotFound

if TYPE_CHECKING:  # schema.py imports this module while the store package is still loading
    from . import Store

RUNNING, SUCCEEDED, FAILED, CANCELLED, STOPPED = (
    "RUNNING",
    "SUCCEEDED",
    "FAILED",
    "CANCELLED",
    "STOPPED",  # its driver ended (a killed kernel) before the sweep did: re-running resumes it
)
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)

SWEEPS = [
    """
    CREATE TABLE sweeps (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        backend TEXT NOT NULL,
        backend_type TEXT NOT NULL,
        status TEXT NOT NULL,
        spec TEXT NOT NULL,
        created REAL NOT NULL,
        updated REAL NOT NULL,
        ended REAL,
        native_id TEXT,
        error TEXT,
        info TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX sweeps_created ON sweeps(created DESC);
    """,
]


@dataclass
class SweepRecord:
    id: str
    name: str
    backend: str
    backend_type: str
    status: str
    spec: dict[str, Any]
    created: float
    updated: float
    ended: float | None = None
    native_id: str | None = None
    error: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def from_row(cls, row: Any) -> SweepRecord:
        data = dict(row)
        data["spec"] = json.loads(data["spec"])
        data["info"] = json.loads(data["info"] or "{}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "backend": self.backend,
            "backend_type": self.backend_type,
            "status": self.status,
            "created": self.created,
            "updated": self.updated,
            "ended": self.ended,
            "native_id": self.native_id,
            "error": self.error,
            "objective": self.spec.get("objective"),
            "trials": self.spec.get("trials"),
            "info": self.info,
        }


def put_sweep(store: Store, record: SweepRecord) -> SweepRecord:
    """Insert the sweep, or (a re-run of the same sweep) mark it RUNNING again."""

    def body(conn: Any) -> None:
        conn.execute(
            "INSERT INTO sweeps (id, name, backend, backend_type, status, spec, created, updated, "
            "native_id, info) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
            "status = excluded.status, spec = excluded.spec, updated = excluded.updated, "
            "ended = NULL, error = NULL, native_id = COALESCE(excluded.native_id, native_id)",
            (
                record.id,
                record.name,
                record.backend,
                record.backend_type,
                record.status,
                json.dumps(record.spec),
                record.created,
                record.updated,
                record.native_id,
                json.dumps(record.info),
            ),
        )

    store.write(body)
    return get_sweep(store, record.id)


def get_sweep(store: Store, sweep_id: str) -> SweepRecord:
    row = store.query_one("SELECT * FROM sweeps WHERE id = ?", (sweep_id,))
    if row is None:
        raise NotFound(f"no sweep {sweep_id!r}", "list sweeps with: nbscale sweeps")
    return SweepRecord.from_row(row)


def list_sweeps(store: Store, limit: int = 50) -> list[SweepRecord]:
    rows = store.query("SELECT * FROM sweeps ORDER BY created DESC LIMIT ?", (limit,))
    return [SweepRecord.from_row(r) for r in rows]


def update_sweep(
    store: Store, sweep_id: str, info_patch: dict | None = None, **fields: Any
) -> None:
    sets, params = ["updated = ?"], [time.time()]
    for key, value in fields.items():
        sets.append(f"{key} = ?")
        params.append(json.dumps(value) if key == "spec" else value)
    if info_patch:
        sets.append("info = json_patch(info, ?)")
        params.append(json.dumps(info_patch))
    params.append(sweep_id)
    store.write(
        lambda conn: conn.execute(f"UPDATE sweeps SET {', '.join(sets)} WHERE id = ?", params)
    )
