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


def test_a_programming_error_is_not_disguised(nbscale_home):
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        get_store().query("SELECT * FROM no_such_table")
