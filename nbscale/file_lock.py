"""One exclusive ``flock`` on a file, for the few places where processes of one home must
take turns and SQLite cannot order them (creating the store, a job's log copier, the warm
kernel pool's registry). POSIX only, like the local backend."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created 0600 when missing) for the block.

    The lock is the open file's: it goes with the process if the process dies, so a crash
    never leaves it held."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock
