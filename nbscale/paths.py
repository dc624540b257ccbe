"""Where nbscale keeps its state: ``$NBSCALE_HOME`` (default ``~/.nbscale``)."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    path = Path(os.environ.get("NBSCALE_HOME") or Path.home() / ".nbscale").expanduser()
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def db_path() -> Path:
    return home() / "nbscale.db"


def jobs_dir() -> Path:
    path = home() / "jobs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def job_dir(job_id: str) -> Path:
    return jobs_dir() / job_id


def endpoint_dir(name: str) -> Path:
    """An endpoint's folder on this machine (token, capture, baseline, model copies)."""
    return home() / "endpoints" / name


def free_bytes(path: Path) -> int | None:
    """The free space on the disk holding ``path``, or None where it cannot be read."""
    import shutil

    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None
