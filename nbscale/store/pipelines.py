"""Pipeline runs, their steps, and the step cache."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from ..errors import NotFound
from . import paging
from .paging import Page, seek

if TYPE_CHECKING:  # schema.py imports this module while the store package is still loading
    from . import Store


def add_event(store: Store, ref: str, type_: str, data: dict[str, Any]) -> None:
    from .jobs import add_event as add

    add(store, ref, type_, data, kind="pipeline")


PIPELINES = [
    """
    CREATE TABLE pipeline_runs (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        source TEXT NOT NULL,
        backend TEXT NOT NULL,
        status TEXT NOT NULL,
        created REAL NOT NULL,
        started REAL,
        ended REAL,
        error TEXT,
        parameters TEXT NOT NULL DEFAULT '{}',
        options TEXT NOT NULL DEFAULT '{}',
        pid INTEGER,
        pid_started REAL
    );
    CREATE INDEX pipeline_runs_created ON pipeline_runs(created DESC);
    CREATE TABLE pipeline_steps (
        run_id TEXT NOT NULL REFERENCES pipeline_runs(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        position INTEGER NOT NULL,
        status TEXT NOT NULL,
        cached INTEGER NOT NULL DEFAULT 0,
        cache_reason TEXT,
        cache_key TEXT,
        depends_on TEXT NOT NULL DEFAULT '[]',
        started REAL,
        ended REAL,
        notebook TEXT,
        outputs_dir TEXT,
        error TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (run_id, name)
    );
    CREATE TABLE pipeline_cache (
        key TEXT PRIMARY KEY,
        pipeline TEXT NOT NULL,
        step TEXT NOT NULL,
        components TEXT NOT NULL,
        run_id TEXT NOT NULL,
        outputs_dir TEXT NOT NULL,
        notebook TEXT NOT NULL,
        created REAL NOT NULL
    );
    CREATE INDEX pipeline_cache_step ON pipeline_cache(pipeline, step, created DESC);
    """,
    # keyset paging (nbscale.store.paging): runs newest first by the unique (created, id)
    """
    DROP INDEX IF EXISTS pipeline_runs_created;
    CREATE INDEX pipeline_runs_page ON pipeline_runs(created, id);
    """,
]

RUN_COLUMNS = [
    "id",
    "name",
    "source",
    "backend",
    "status",
    "created",
    "started",
    "ended",
    "error",
    "parameters",
    "options",
    "pid",
    "pid_started",
]
STEP_COLUMNS = [
    "run_id",
    "name",
    "position",
    "status",
    "cached",
    "cache_reason",
    "cache_key",
    "depends_on",
    "started",
    "ended",
    "notebook",
    "outputs_dir",
    "error",
    "attempts",
]
_JSON = {"parameters", "options", "depends_on", "components"}


def _enc(column: str, value: Any) -> Any:
    return json.dumps(value) if column in _JSON else value


def _dec(row: Any) -> dict[str, Any]:
    data = dict(row)
    for column in _JSON & set(data):
        data[column] = json.loads(data[column] or "null")
    if "cached" in data:
        data["cached"] = bool(data["cached"])
    return data


def insert_run(store: Store, run: dict[str, Any], steps: list[dict[str, Any]]) -> None:
    """The run and all its steps in one transaction: a reader sees all of it or none."""
    with store.transaction() as conn:
        conn.execute(
            f"INSERT INTO pipeline_runs ({', '.join(RUN_COLUMNS)}) VALUES ({', '.join('?' * len(RUN_COLUMNS))})",
            [_enc(c, run.get(c)) for c in RUN_COLUMNS],
        )
        for step in steps:
            row = {"cached": 0, "attempts": 0, **step, "run_id": run["id"]}
            conn.execute(
                f"INSERT INTO pipeline_steps ({', '.join(STEP_COLUMNS)}) VALUES ({', '.join('?' * len(STEP_COLUMNS))})",
                [_enc(c, row.get(c)) for c in STEP_COLUMNS],
            )
    add_event(store, run["id"], "created", {"status": run["status"]})


def update_run(
    store: Store, run_id: str, only_if: tuple[str, ...] | None = None, **fields: Any
) -> bool:
    sets = ", ".join(f"{k} = ?" for k in fields)
    sql = f"UPDATE pipeline_runs SET {sets} WHERE id = ?"
    params = [_enc(k, v) for k, v in fields.items()] + [run_id]
    if only_if:
        sql += f" AND status IN ({', '.join('?' * len(only_if))})"
        params += list(only_if)
    changed = store.execute(sql, tuple(params)) > 0
    if changed and "status" in fields:
        add_event(
            store, run_id, "status", {"status": fields["status"], "error": fields.get("error")}
        )
    return changed


def update_step(store: Store, run_id: str, name: str, **fields: Any) -> None:
    sets = ", ".join(f"{k} = ?" for k in fields)
    store.execute(
        f"UPDATE pipeline_steps SET {sets} WHERE run_id = ? AND name = ?",
        tuple(_enc(k, v) for k, v in fields.items()) + (run_id, name),
    )


def get_run(store: Store, run_id: str) -> dict[str, Any]:
    row = store.query_one("SELECT * FROM pipeline_runs WHERE id = ?", (run_id,))
    if row is None:
        rows = store.query(
            "SELECT * FROM pipeline_runs WHERE id LIKE ? LIMIT 2", (run_id.replace("%", "") + "%",)
        )
        if len(rows) != 1:
            raise NotFound(f"no pipeline run {run_id!r}", "list runs with: nbscale pipeline runs")
        row = rows[0]
    return _dec(row)


def list_runs(store: Store, limit: int = 50, after: str | None = None) -> Page[dict[str, Any]]:
    """Runs newest first (``created``, then ``id``, descending) after the cursor ``after``;
    the page's ``next`` is the cursor of the page after it."""
    page = seek(store, paging.RUNS, "pipeline_runs", "id", limit=limit, after=after)
    return Page([_dec(r) for r in page], page.next)


def steps_of(store: Store, run_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {r: [] for r in run_ids}
    if not run_ids:
        return out
    rows = store.query(
        f"SELECT * FROM pipeline_steps WHERE run_id IN ({', '.join('?' * len(run_ids))}) ORDER BY position",
        tuple(run_ids),
    )
    for row in rows:
        out[row["run_id"]].append(_dec(row))
    return out


def cache_get(store: Store, key: str) -> dict[str, Any] | None:
    row = store.query_one("SELECT * FROM pipeline_cache WHERE key = ?", (key,))
    return _dec(row) if row else None


def cache_latest(store: Store, pipeline: str, step: str) -> dict[str, Any] | None:
    row = store.query_one(
        "SELECT * FROM pipeline_cache WHERE pipeline = ? AND step = ? ORDER BY created DESC LIMIT 1",
        (pipeline, step),
    )
    return _dec(row) if row else None


def cache_put(store: Store, entry: dict[str, Any]) -> None:
    cols = ["key", "pipeline", "step", "components", "run_id", "outputs_dir", "notebook", "created"]
    entry = {**entry, "created": entry.get("created") or time.time()}
    store.execute(
        f"INSERT OR REPLACE INTO pipeline_cache ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
        tuple(_enc(c, entry[c]) for c in cols),
    )


def cache_drop(store: Store, key: str) -> None:
    store.execute("DELETE FROM pipeline_cache WHERE key = ?", (key,))
