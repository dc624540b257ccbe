"""A replica's load, shared with its endpoint's router through a small mmap'd file.

While a local endpoint's only replica serves the endpoint's socket itself, the router sees
none of its requests; the replica publishes what the router would have counted: requests in
flight, the last request's time (``time.monotonic()``: CLOCK_MONOTONIC, one clock for every
process of the machine), the requests served and whether it is serving the shared socket
now. The router reads it on every control tick to autoscale, scale to zero and apply the idle
TTL, and before it pauses or stops the replica. Updating it costs one ``struct.pack_into``
per change (about a microsecond a request, both changes together).

The file is ``replica-<id>.load`` in the endpoint's folder, mode 0600, little-endian:
``inflight`` (int64), ``requests`` (int64), ``last_request`` (float64), ``serving`` (int64),
``pid`` (int64).
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from dataclasses import dataclass

LAYOUT = struct.Struct("<qqdqq")
SIZE = LAYOUT.size


@dataclass(frozen=True)
class Load:
    inflight: int
    requests: int
    last_request: float
    serving: bool
    pid: int


class LoadWriter:
    """The replica's side: counts the requests it serves on the shared socket."""

    def __init__(self, path: str):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.ftruncate(fd, SIZE)
            self.map = mmap.mmap(fd, SIZE)
        finally:
            os.close(fd)
        self.inflight = 0
        self.requests = 0
        self.last_request = 0.0  # none yet: the router's own idle clock stands
        self.serving = 0
        self.pid = os.getpid()
        self._write()

    def _write(self) -> None:
        LAYOUT.pack_into(
            self.map,
            0,
            self.inflight,
            self.requests,
            self.last_request,
            self.serving,
            self.pid,
        )

    def begin(self) -> None:
        self.inflight += 1
        self.requests += 1
        self.last_request = time.monotonic()
        self._write()

    def end(self) -> None:
        self.inflight -= 1
        self._write()

    def set_serving(self, serving: bool) -> None:
        self.serving = int(serving)
        self._write()

    def close(self) -> None:
        self.map.close()


class LoadReader:
    """The router's side: the replica's figures, read without a lock (two equal reads)."""

    def __init__(self, path: str):
        fd = os.open(path, os.O_RDONLY)
        try:
            if os.fstat(fd).st_size < SIZE:
                raise OSError(f"{path} is not a replica load file (shorter than {SIZE} bytes)")
            self.map = mmap.mmap(fd, SIZE, prot=mmap.PROT_READ)
        finally:
            os.close(fd)

    def read(self) -> Load:
        # the writer updates the fields with one memcpy; reading until two reads agree keeps a
        # read that raced it from mixing old and new fields
        first = LAYOUT.unpack_from(self.map, 0)
        for _ in range(100):
            again = LAYOUT.unpack_from(self.map, 0)
            if again == first:
                break
            first = again
        inflight, requests, last, serving, pid = first
        return Load(inflight, requests, last, bool(serving), pid)

    def close(self) -> None:
        self.map.close()
