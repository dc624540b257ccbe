"""The store: one SQLite database under ``$NBSCALE_HOME`` shared by every process.

WAL mode lets readers run beside one writer; a busy timeout makes writers wait
instead of failing; every write is a short ``BEGIN IMMEDIATE`` transaction so
a process that dies mid-way leaves nothing half-written.

A full disk, a store held too long by another process or a file that cannot
be opened raise :class:`StoreError` (an ``NbscaleError``: one clear line in the
CLI), never a raw ``sqlite3.OperationalError``. The store keeps a small
reserve file next to the database: when a write finds the disk full, the
reserve is given back and the write tried once more (:meth:`Store.write`), so
the records that end a job can still be written on a disk that its logs filled.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from .. import file_lock, paths
from ..errors import NbscaleError

BUSY_TIMEOUT_MS = 60_000
RESERVE_BYTES = 1 << 20
T = TypeVar("T")


class StoreError(NbscaleError):
    """The store cannot be used right now: full disk, held too long, unreadable file."""


class StoreFull(StoreError):
    """The disk holding the store is full."""


def _store_error(exc: sqlite3.Error, path: Path, waited: float) -> sqlite3.Error | StoreError:
    """The NbscaleError for an error caused by the machine, or ``exc`` itself for a bug;
    ``waited`` is how long the failed call took, in seconds."""
    text = str(exc).lower()
    if "database or disk is full" in text or getattr(exc, "sqlite_errorcode", None) == 13:
        free = paths.free_bytes(path.parent)
        return StoreFull(
            f"the disk holding the nbscale store is full ({path.parent}"
            + (f", {free // 1024} KiB free" if free is not None else "")
            + "); nothing was written",
            "free space there (old job folders under jobs/ are safe to delete), then retry",
        )
    if "database is locked" in text or "database is busy" in text:
        if waited * 1000 >= BUSY_TIMEOUT_MS * 0.9:
            return StoreError(
                f"the nbscale store {path} stayed locked by another process for {waited:.0f} s",
                "retry; if it persists, look for a stuck nbscale process",
            )
        # SQLite answers at once, without its busy timeout, where waiting could deadlock
        return StoreError(
            f"the nbscale store {path} was locked by another process and SQLite gave up "
            f"after {waited:.2f} s rather than wait ({exc})",
            "retry; if it persists, report it with the command that failed",
        )
    if any(
        m in text
        for m in (
            "unable to open database",
            "readonly database",
            "disk i/o error",
            "malformed",
            "not a database",
        )
    ):
        return StoreError(
            f"cannot use the nbscale store {path}: {exc}",
            "check that NBSCALE_HOME is a writable folder on a healthy disk",
        )
    return exc


@contextmanager
def _mapped_errors(path: Path) -> Iterator[None]:
    began = time.monotonic()
    try:
        yield
    except sqlite3.Error as exc:
        mapped = _store_error(exc, path, time.monotonic() - began)
        if mapped is exc:
            raise
        raise mapped from exc


class Store:
    def __init__(self, path: Path | str | None = None):
        self.path = Path(path) if path else paths.db_path()
        self._local = threading.local()
        self._migrated = False
        self._lock = threading.Lock()

    @property
    def reserve_path(self) -> Path:
        return self.path.with_name(self.path.name + ".reserve")

    def _make_reserve(self) -> None:
        """Set aside RESERVE_BYTES while there is room (once per process; cheap when present)."""
        reserve = self.reserve_path
        if reserve.exists():
            return
        tmp = reserve.with_name(reserve.name + f".{os.getpid()}")
        try:
            with open(tmp, "wb") as fh:
                fh.write(b"\0" * RESERVE_BYTES)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, reserve)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()

    def release_reserve(self) -> bool:
        """Give the reserve back to the disk; True when there was one."""
        try:
            self.reserve_path.unlink()
            return True
        except OSError:
            return False

    def _conn(self) -> sqlite3.Connection:
        with _mapped_errors(self.path):
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
            try:
                conn.row_factory = sqlite3.Row
                conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA foreign_keys=ON")
                with self._lock:
                    if not self._migrated:
                        self._set_up(conn)
                        self._migrated = True
                        self._make_reserve()
            except BaseException:
                conn.close()
                raise
            self._local.conn = conn
        return conn

    def _set_up(self, conn: sqlite3.Connection) -> None:
        """WAL and the schema, once per process, one process at a time.

        Turning a new database to WAL takes SQLite's exclusive lock, and two processes
        asking at once can make SQLite answer "database is locked" at once, without its
        busy timeout (it will not wait where waiting could deadlock). A file lock next to
        the database orders each process's first open; once the file is in WAL mode (a
        setting the file keeps) that open only finds it so, and this process's later
        connections (other threads) skip this step and take no file lock."""
        # imported here: component modules import this package for Store
        from .schema import migrate

        with file_lock.exclusive(self.path.with_name(self.path.name + ".lock")):
            conn.execute("PRAGMA journal_mode=WAL")
            migrate(conn)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; it takes the write lock at once, so no upgrade deadlock."""
        conn = self._conn()
        with _mapped_errors(self.path):
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            else:
                try:
                    conn.execute("COMMIT")
                except sqlite3.Error:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise

    def write(self, body: Callable[[sqlite3.Connection], T]) -> T:
        """``body(conn)`` in a write transaction; on a full disk the reserve is given
        back and ``body`` runs once more, so a record that must be written (a job's
        end) is written if the reserve makes room for it."""
        try:
            with self.transaction() as conn:
                return body(conn)
        except StoreFull:
            if not self.release_reserve():
                raise
        with self.transaction() as conn:
            return body(conn)

    def query(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        with _mapped_errors(self.path):
            return self._conn().execute(sql, params).fetchall()

    def query_one(self, sql: str, params: tuple | dict = ()) -> sqlite3.Row | None:
        with _mapped_errors(self.path):
            return self._conn().execute(sql, params).fetchone()

    def execute(self, sql: str, params: tuple | dict = ()) -> int:
        """One statement in its own transaction; returns the number of rows changed."""
        return self.write(lambda conn: conn.execute(sql, params).rowcount)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


_stores: dict[Path, Store] = {}
_stores_lock = threading.Lock()


def get_store(path: Path | str | None = None) -> Store:
    """The process-wide store for ``path`` (default: the one under ``$NBSCALE_HOME``)."""
    key = Path(path) if path else paths.db_path()
    with _stores_lock:
        store = _stores.get(key)
        if store is None:
            store = _stores[key] = Store(key)
        return store


def row_to_dict(row: sqlite3.Row | None) -> dict[str, Any] | None:
    return dict(row) if row is not None else None
