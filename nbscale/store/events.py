"""Events that monitoring raises: drift alerts, capture stopped, budget reached, idle teardown.

The ``events`` table itself is the jobs component's (every job and endpoint
change is an event there). This component adds what alerts need: a ``key``
so the same alert (one drifting window, one budget stop) is recorded once even
when several processes look at the same window, and an index to list events
by type and time across jobs and endpoints.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the store package imports this module for its migrations
    from . import Store

EVENTS = [
    """
    ALTER TABLE events ADD COLUMN key TEXT;
    CREATE UNIQUE INDEX events_key ON events(kind, ref, type, key) WHERE key IS NOT NULL;
    CREATE INDEX events_type_time ON events(type, time);
    """,
]

# alert types monitoring records (kind "endpoint" or "job")
DRIFT = "drift_alert"
CAPTURE_STOPPED = "capture_stopped"
CAPTURE_RESUMED = "capture_resumed"
BUDGET_REACHED = "budget_reached"
IDLE_TEARDOWN = "idle_scaled_to_zero"


def record_event(
    store: Store,
    kind: str,
    ref: str,
    type_: str,
    data: dict[str, Any] | None = None,
    key: str | None = None,
    at: float | None = None,
) -> bool:
    """Append an event; with ``key``, only the first event of that (kind, ref, type, key) is kept.

    Returns whether a row was written.
    """
    with store.transaction() as conn:
        try:
            conn.execute(
                "INSERT INTO events (kind, ref, time, type, data, key) VALUES (?, ?, ?, ?, ?, ?)",
                (kind, ref, at or time.time(), type_, json.dumps(data or {}), key),
            )
        except sqlite3.IntegrityError:
            return False
    return True


def list_events(
    store: Store,
    kind: str | None = None,
    ref: str | None = None,
    types: list[str] | tuple[str, ...] | None = None,
    since: float | None = None,
    limit: int = 1000,
) -> list[dict[str, Any]]:
    """Events, newest first, filtered by kind, ref, types and time."""
    where, params = [], []
    if kind:
        where.append("kind = ?")
        params.append(kind)
    if ref:
        where.append("ref = ?")
        params.append(ref)
    if types:
        where.append(f"type IN ({', '.join('?' * len(types))})")
        params.extend(types)
    if since is not None:
        where.append("time >= ?")
        params.append(since)
    sql = "SELECT id, kind, ref, time, type, key, data FROM events"
    if where:
        sql += " WHERE " + " AND ".join(where)
    rows = store.query(sql + " ORDER BY time DESC, id DESC LIMIT ?", (*params, limit))
    return [{**dict(r), "data": json.loads(r["data"])} for r in rows]
