"""The store's failures caused by the machine are one clear NbscaleError, never a raw
sqlite3 traceback; its own bugs are not disguised as such."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from nbscale.store import Store, StoreError
from nbscale.store.jobs import list_jobs


def cli_error_line(home: Path) -> str:
    """``nbscale jobs`` on ``home``: it must fail with one line and no traceback; that line."""
    done = subprocess.run(
        [sys.executable, "-m", "nbscale", "jobs"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NBSCALE_HOME": str(home)},
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    return done.stderr.strip()


def test_an_unusable_database_file_is_a_clear_error_in_the_api_and_the_cli(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "nbscale.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot use the nbscale store"):
        list_jobs(Store(home / "nbscale.db"))
    assert "cannot use the nbscale store" in cli_error_line(home)


def test_a_store_from_a_newer_nbscale_is_one_line_in_the_cli(tmp_path):
    home = tmp_path / "home"
    list_jobs(Store(home / "nbscale.db"))  # made by this nbscale
    conn = sqlite3.connect(home / "nbscale.db")
    conn.execute("UPDATE schema_versions SET version = 99 WHERE component = 'jobs'")
    conn.commit()
    conn.close()
    line = cli_error_line(home)
    assert "written by a newer nbscale (jobs schema v99" in line
    assert "upgrade nbscale" in line
