"""Versioned schema, one migration list per component.

Each component (jobs, endpoints, pipelines, ...) owns its tables and appends
to its own list; ``schema_versions`` records how far each one has been taken.
Never edit a migration that has shipped: add a new one.
"""

from __future__ import annotations

import sqlite3

from .endpoints import ENDPOINTS
from .events import EVENTS
from .gpus import GPUS
from .pipelines import PIPELINES

JOBS = [
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        backend TEXT NOT NULL,
        backend_type TEXT NOT NULL,
        status TEXT NOT NULL,
        spec TEXT NOT NULL,
        created REAL NOT NULL,
        started REAL,
        ended REAL,
        exit_code INTEGER,
        failed_rank INTEGER,
        error TEXT,
        native_id TEXT,
        restarts INTEGER NOT NULL DEFAULT 0,
        info TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX jobs_created ON jobs(created DESC);
    CREATE INDEX jobs_status ON jobs(status);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        ref TEXT NOT NULL,
        time REAL NOT NULL,
        type TEXT NOT NULL,
        data TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX events_ref ON events(kind, ref, id);
    """,
]

# component name -> migrations, applied in order; add a component with one line here.
COMPONENTS: dict[str, list[str]] = {
    "jobs": JOBS,
    "endpoints": ENDPOINTS,
    "pipelines": PIPELINES,
    "events": EVENTS,  # after jobs: it extends the jobs component's events table
    "gpus": GPUS,
}


def migrate(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_versions (component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
        )
        done = dict(conn.execute("SELECT component, version FROM schema_versions").fetchall())
        for component, migrations in COMPONENTS.items():
            current = done.get(component, 0)
            if current > len(migrations):
                raise RuntimeError(
                    f"the nbscale store at this path was written by a newer nbscale "
                    f"({component} schema v{current}); upgrade nbscale"
                )
            for version in range(current, len(migrations)):
                for statement in migrations[version].split(";"):
                    if statement.strip():
                        conn.execute(statement)
            if current != len(migrations):
                conn.execute(
                    "INSERT INTO schema_versions(component, version) VALUES (?, ?) "
                    "ON CONFLICT(component) DO UPDATE SET version = excluded.version",
                    (component, len(migrations)),
                )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
