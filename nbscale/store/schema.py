"""Versioned schema, one migration list per component.

Each component (jobs, endpoints, pipelines, ...) owns its tables and appends
to its own list; ``schema_versions`` records how far each one has been taken.
Never edit a migration that has shipped: add a new one.
"""

from __future__ import annotations

import sqlite3

from . import StoreError
from .endpoints import ENDPOINTS
from .events import EVENTS
from .gpus import GPUS
from .pipelines import PIPELINES
from .sweeps import SWEEPS

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
    # keyset paging (nbscale.store.paging): one index per filter combination ending in the
    # order key (created, id), so every page is one index seek; job_counts, kept by
    # triggers in the same transaction as the row, answers the total without a scan
    """
    DROP INDEX IF EXISTS jobs_created;
    DROP INDEX IF EXISTS jobs_status;
    CREATE INDEX jobs_page ON jobs(created, id);
    CREATE INDEX jobs_page_status ON jobs(status, created, id);
    CREATE INDEX jobs_page_backend ON jobs(backend, created, id);
    CREATE INDEX jobs_page_backend_status ON jobs(backend, status, created, id);
    CREATE TABLE job_counts (
        status TEXT NOT NULL,
        backend TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (status, backend)
    ) WITHOUT ROWID;
    INSERT INTO job_counts (status, backend, n)
        SELECT status, backend, COUNT(*) FROM jobs GROUP BY status, backend;
    CREATE TRIGGER job_counts_insert AFTER INSERT ON jobs BEGIN
        INSERT INTO job_counts (status, backend, n) VALUES (NEW.status, NEW.backend, 1)
            ON CONFLICT (status, backend) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER job_counts_delete AFTER DELETE ON jobs BEGIN
        UPDATE job_counts SET n = n - 1 WHERE status = OLD.status AND backend = OLD.backend;
    END;
    CREATE TRIGGER job_counts_update AFTER UPDATE OF status, backend ON jobs
    WHEN OLD.status IS NOT NEW.status OR OLD.backend IS NOT NEW.backend BEGIN
        UPDATE job_counts SET n = n - 1 WHERE status = OLD.status AND backend = OLD.backend;
        INSERT INTO job_counts (status, backend, n) VALUES (NEW.status, NEW.backend, 1)
            ON CONFLICT (status, backend) DO UPDATE SET n = n + 1;
    END;
    """,
]

# component name -> migrations, applied in order; add a component with one line here.
COMPONENTS: dict[str, list[str]] = {
    "jobs": JOBS,
    "endpoints": ENDPOINTS,
    "pipelines": PIPELINES,
    "events": EVENTS,  # after jobs: it extends the jobs component's events table
    "gpus": GPUS,
    "sweeps": SWEEPS,
}


def statements(script: str) -> list[str]:
    """The statements of a migration, split where SQLite says one is complete (so a
    trigger's ``BEGIN ...; ...; END`` stays one statement)."""
    out, pending = [], ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n\t;"):
                out.append(pending.strip())
            pending = ""
    if pending.strip(" \n\t;"):
        raise ValueError(f"incomplete statement at the end of a migration: {pending[:80]!r}")
    return out


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
                path = conn.execute("PRAGMA database_list").fetchone()[2]
                raise StoreError(
                    f"the nbscale store {path} was written by a newer nbscale "
                    f"({component} schema v{current}; this one knows v{len(migrations)})",
                    "upgrade nbscale (pip install -U nbscale), or give this one a home of "
                    "its own with NBSCALE_HOME",
                )
            for version in range(current, len(migrations)):
                for statement in statements(migrations[version]):
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
