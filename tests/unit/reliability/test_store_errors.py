"""The store's failures caused by the machine are one clear NbscaleError, never a raw
sqlite3 traceback; its own bugs are not disguised as such."""

from __future__ import annotations

import sqlite3

import pytest

import nbscale.store as store_mod
from nbscale.store import Store, StoreError, get_store
from nbscale.store.jobs import list_jobs


def test_a_store_locked_past_the_busy_timeout_is_a_clear_error(monkeypatch, nbscale_home):
    list_jobs(get_store())  # create it
    holder = sqlite3.connect(nbscale_home / "nbscale.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process keeps the write lock
    try:
        monkeypatch.setattr(store_mod, "BUSY_TIMEOUT_MS", 300)
        impatient = Store(nbscale_home / "nbscale.db")
        with pytest.raises(StoreError, match="stayed locked by another process"):
            impatient.execute("DELETE FROM events WHERE id = -1")
        impatient.close()
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_a_lock_refused_at_once_does_not_claim_a_long_wait(nbscale_home):
    """SQLite answers "database is locked" at once where waiting could deadlock; the message
    says how long it really took, not the busy timeout."""
    path = nbscale_home / "nbscale.db"
    locked = sqlite3.OperationalError("database is locked")
    quick = store_mod._store_error(locked, path, 0.004)
    assert isinstance(quick, StoreError)
    assert "gave up after 0.00 s" in str(quick) and "stayed locked" not in str(quick)
    slow = store_mod._store_error(locked, path, store_mod.BUSY_TIMEOUT_MS / 1000 + 0.2)
    assert f"stayed locked by another process for {store_mod.BUSY_TIMEOUT_MS // 1000} s" in str(
        slow
    )


def test_a_programming_error_is_not_disguised(nbscale_home):
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        get_store().query("SELECT * FROM no_such_table")
