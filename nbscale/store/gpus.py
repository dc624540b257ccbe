"""GPU claims of processes that are not jobs (endpoint replicas); jobs keep theirs in their row."""

from __future__ import annotations

GPUS = [
    """
    CREATE TABLE gpu_claims (
        holder TEXT PRIMARY KEY,
        gpus TEXT NOT NULL,
        pid INTEGER,
        pid_created REAL,
        since REAL NOT NULL
    );
    """,
]
