"""Endpoint records: one row per deployed endpoint, written by the client and its router.

The bearer token is never stored here: it lives in a 0600 file under
``$NBSCALE_HOME/endpoints/NAME/``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import Conflict, NotFound
from . import paging
from .paging import Page, seek

if TYPE_CHECKING:  # the store package imports this module for its migrations
    from . import Store

STARTING, READY, SCALED_TO_ZERO, FAILED, STOPPING = (
    "STARTING",
    "READY",
    "SCALED_TO_ZERO",
    "FAILED",
    "STOPPING",
)
#: the platform rolled the endpoint's new version back (an auto-rollback alarm fired): it
#: serves the previous version, which the record keeps; ``error`` names the alarm
ROLLED_BACK = "ROLLED_BACK"

ENDPOINTS = [
    """
    CREATE TABLE endpoints (
        name TEXT PRIMARY KEY,
        backend TEXT NOT NULL,
        backend_type TEXT NOT NULL,
        status TEXT NOT NULL,
        url TEXT NOT NULL,
        port INTEGER NOT NULL,
        model_dir TEXT NOT NULL,
        min_replicas INTEGER NOT NULL,
        max_replicas INTEGER NOT NULL,
        replicas INTEGER NOT NULL DEFAULT 0,
        config TEXT NOT NULL DEFAULT '{}',
        pid INTEGER,
        pid_created REAL,
        restarts INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        created REAL NOT NULL,
        updated REAL NOT NULL
    );
    """,
    # keyset paging (nbscale.store.paging): oldest first by the unique (created, name)
    """
    CREATE INDEX endpoints_page ON endpoints(created, name);
    """,
]


@dataclass
class EndpointRecord:
    name: str
    backend: str
    backend_type: str
    status: str
    url: str
    port: int
    model_dir: str
    min_replicas: int
    max_replicas: int
    replicas: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    pid: int | None = None
    pid_created: float | None = None
    restarts: int = 0
    error: str | None = None
    created: float = 0.0
    updated: float = 0.0

    @classmethod
    def from_row(cls, row: Any) -> EndpointRecord:
        data = dict(row)
        data["config"] = json.loads(data["config"] or "{}")
        return cls(**data)


_COLUMNS = list(EndpointRecord.__dataclass_fields__)


def _event(conn: Any, ref: str, type_: str, data: dict, kind: str = "endpoint") -> None:
    conn.execute(
        "INSERT INTO events (kind, ref, time, type, data) VALUES (?, ?, ?, ?, ?)",
        (kind, ref, time.time(), type_, json.dumps(data)),
    )


def insert_endpoint(store: Store, rec: EndpointRecord) -> None:
    values = [json.dumps(getattr(rec, c)) if c == "config" else getattr(rec, c) for c in _COLUMNS]
    with store.transaction() as conn:
        if conn.execute("SELECT 1 FROM endpoints WHERE name = ?", (rec.name,)).fetchone():
            raise Conflict(
                f"an endpoint named {rec.name!r} exists",
                f"undeploy it first: nbscale undeploy {rec.name}",
            )
        # port 0: a cloud endpoint, reached by name rather than by a port of this machine
        taken = (
            rec.port
            and conn.execute("SELECT name FROM endpoints WHERE port = ?", (rec.port,)).fetchone()
        )
        if taken:
            raise Conflict(
                f"port {rec.port} is used by endpoint {taken[0]!r}",
                "pick another --port or leave it out",
            )
        conn.execute(
            f"INSERT INTO endpoints ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
            values,
        )
        _event(conn, rec.name, "deployed", {"port": rec.port}, kind="endpoint")


def get_endpoint(store: Store, name: str) -> EndpointRecord:
    row = store.query_one("SELECT * FROM endpoints WHERE name = ?", (name,))
    if row is None:
        raise NotFound(f"no endpoint {name!r}", "list endpoints with: nbscale endpoints")
    return EndpointRecord.from_row(row)


def list_endpoints(
    store: Store, limit: int | None = None, after: str | None = None
) -> Page[EndpointRecord]:
    """Oldest first (``created``, then ``name``), after the cursor ``after``; ``limit``
    None reads all of them. The page's ``next`` is the cursor of the page after it."""
    page = seek(
        store, paging.ENDPOINTS, "endpoints", "name", limit=limit, after=after, descending=False
    )
    return Page([EndpointRecord.from_row(r) for r in page], page.next)


def update_endpoint(store: Store, name: str, event: str | None = None, **fields: Any) -> bool:
    fields["updated"] = time.time()
    sets = ", ".join(f"{k} = ?" for k in fields)
    params = [json.dumps(v) if k == "config" else v for k, v in fields.items()]
    with store.transaction() as conn:
        changed = (
            conn.execute(f"UPDATE endpoints SET {sets} WHERE name = ?", (*params, name)).rowcount
            > 0
        )
        if changed and event:
            data = {
                k: v
                for k, v in fields.items()
                if k in ("status", "replicas", "error", "min_replicas", "max_replicas")
            }
            _event(conn, name, event, data, kind="endpoint")
    return changed


def delete_endpoint(store: Store, name: str) -> None:
    with store.transaction() as conn:
        conn.execute("DELETE FROM endpoints WHERE name = ?", (name,))
        _event(conn, name, "undeployed", {}, kind="endpoint")


def add_endpoint_event(store: Store, name: str, type_: str, data: dict | None = None) -> None:
    with store.transaction() as conn:
        _event(conn, name, type_, data or {})
