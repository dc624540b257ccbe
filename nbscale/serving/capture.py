"""Data capture: a sampled JSONL of inputs and outputs for drift monitoring.

One line per captured request: ``{"time", "event_id", "id", "model",
"inputs", "outputs"}`` with tensors as nested lists (``id`` is the request's
own id, ``event_id`` a fresh UUID per captured line, as SageMaker's capture
has). Files rotate at ``max_bytes``, so capture can stay on.

The request path only draws the sample and enqueues references to the
arrays; converting them to JSON, the disk check and the writing happen on a
background thread, and a full queue drops (and counts) lines rather than
wait. The writer stops before a line would leave the disk with less than
``min_free`` (25%) of its space free, logs that (the replica's log, a
``capture_stopped`` line in ``capture-events.jsonl``, and an endpoint event in
the store when it runs as a local endpoint's replica), and starts again once
the disk has ``resume_free`` free.

The floor can be set per machine with ``NBSCALE_CAPTURE_MIN_FREE`` (a share
of the disk, ``0.1`` for 10%): a large disk that is already more than 75%
full would otherwise never capture. Resuming waits for five points more.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import random
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from ..number_settings import number_setting
from .jsoncodec import dumps

log = logging.getLogger("nbscale.serving.capture")

MIN_FREE = 0.25
RESUME_FREE = 0.30
RECHECK_S = 5.0  # how often a stopped writer looks at the disk again
MIN_FREE_ENV = "NBSCALE_CAPTURE_MIN_FREE"


def floor_from_env() -> tuple[float, float]:
    """(min_free, resume_free) from ``NBSCALE_CAPTURE_MIN_FREE``, else the defaults."""
    raw = os.environ.get(MIN_FREE_ENV, "").strip()
    if not raw:
        return MIN_FREE, RESUME_FREE
    share = number_setting(
        raw,
        MIN_FREE,
        lambda share: 0 <= share < 1,
        f"{MIN_FREE_ENV}={raw!r} is not a share of the disk: give a number from 0 up to"
        " (not including) 1, e.g. 0.1 to keep 10% of the disk free",
    )
    return share, min(share + RESUME_FREE - MIN_FREE, 1.0)


def disk_free(path: str | Path) -> tuple[int, int]:
    """(free bytes for an unprivileged writer, total bytes) of the file system holding ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


class DataCapture:
    def __init__(
        self,
        directory: str | Path,
        sample_rate: float = 1.0,
        max_bytes: int = 64 << 20,
        replica: str = "0",
        min_free: float | None = None,
        resume_free: float | None = None,
    ):
        if not 0 < sample_rate <= 1:
            raise ValueError("capture sample rate must be in (0, 1]")
        env_min, env_resume = floor_from_env()
        if min_free is None:
            min_free = env_min
        if resume_free is None:
            resume_free = max(env_resume, min_free)
        if not 0 <= min_free < 1 or resume_free < min_free:
            raise ValueError("capture needs 0 <= min_free < 1 and resume_free >= min_free")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rate = sample_rate
        self.max_bytes = max_bytes
        self.replica = replica
        self.min_free = min_free
        self.resume_free = resume_free
        self.dropped = 0  # lines lost because the writer fell behind
        self.skipped = 0  # lines not written because the disk was too full
        self.written = 0
        self.stopped = False
        self._next_check = 0.0  # while stopped: when the writer looks at the disk again
        self._q: queue.Queue = queue.Queue(maxsize=10_000)
        self._thread = threading.Thread(target=self._write, name="nbscale-capture", daemon=True)
        self._thread.start()

    def path(self) -> Path:
        return self.dir / f"capture-{self.replica}-{os.getpid()}.jsonl"

    def offer(
        self, model: str, rid: str | None, inputs: dict[str, np.ndarray], outputs: dict[str, Any]
    ) -> None:
        if self.rate < 1 and random.random() >= self.rate:
            return
        if self.stopped and time.monotonic() < self._next_check:  # the writer would skip it
            self.skipped += 1
            return
        try:
            self._q.put_nowait((time.time(), rid, model, inputs, outputs))
        except queue.Full:
            self.dropped += 1

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every queued line is written (or skipped)."""
        deadline = time.monotonic() + timeout
        while self._q.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    # -- the writer thread -------------------------------------------------------
    def _encode(self, item: tuple) -> bytes:
        t, rid, model, inputs, outputs = item
        line = {
            "time": t,
            "event_id": uuid.uuid4().hex,
            "id": rid,
            "model": model,
            "inputs": {k: np.asarray(v).tolist() for k, v in inputs.items()},
            "outputs": {k: np.asarray(v).tolist() for k, v in outputs.items()},
        }
        return dumps(line) + b"\n"

    def _room_for(self, nbytes: int) -> bool:
        """Whether ``nbytes`` more leave at least ``min_free`` of the disk free; logs the changes."""
        free, total = disk_free(self.dir)
        if not total:
            return True
        if self.stopped:
            if free / total < self.resume_free:
                return False
            self.stopped = False
            self._note("capture_resumed", free, total)
            return True
        if (free - nbytes) / total < self.min_free:
            self.stopped = True
            self._note("capture_stopped", free, total)
            return False
        return True

    def _note(self, kind: str, free: int, total: int) -> None:
        data = {
            "free_bytes": free,
            "total_bytes": total,
            "free_share": round(free / total, 4),
            "min_free": self.min_free,
            "directory": str(self.dir),
            "replica": self.replica,
            "written": self.written,
            "skipped": self.skipped,
        }
        if kind == "capture_stopped":
            log.warning(
                "data capture stopped: %.1f%% of the disk under %s is free, the floor is %.0f%%",
                100 * free / total,
                self.dir,
                100 * self.min_free,
            )
        else:
            log.warning("data capture resumed: %.1f%% of the disk is free", 100 * free / total)
        try:  # a small line even on a nearly full disk: the floor leaves a quarter of it
            with (self.dir / "capture-events.jsonl").open("ab") as fh:
                fh.write(dumps({"time": time.time(), "type": kind, **data}) + b"\n")
        except OSError:
            pass
        endpoint = os.environ.get("NBSCALE_ENDPOINT")
        if endpoint:  # a local endpoint's replica: the store has the endpoint's event log
            try:
                from ..store import get_store
                from ..store.endpoints import add_endpoint_event

                add_endpoint_event(get_store(), endpoint, kind, data)
            except Exception as exc:  # the store is optional to capture; never kill the writer
                log.warning("could not record %s in the store: %s", kind, exc)

    def _write(self) -> None:
        fh, written = None, 0
        while True:
            item = self._q.get()
            try:
                if self.stopped and time.monotonic() < self._next_check:
                    self.skipped += 1
                    continue
                data = self._encode(item)
                self._next_check = time.monotonic() + RECHECK_S
                if not self._room_for(len(data)):
                    self.skipped += 1
                    if fh is not None:  # an open file keeps its space even once moved away
                        fh.close()
                        fh = None
                    continue
                if fh is None or written >= self.max_bytes:
                    if fh is not None:
                        fh.close()
                        self.path().rename(
                            self.path().with_suffix(f".{int(time.time() * 1000)}.jsonl")
                        )
                    fh = self.path().open("ab")
                    written = fh.tell()
                fh.write(data)
                fh.flush()
                written += len(data)
                self.written += 1
            except OSError as exc:  # the disk filled up under us (another writer): stop, say so
                if fh is not None:
                    with contextlib.suppress(OSError):
                        fh.close()
                    fh = None
                if not self.stopped:
                    self.stopped = True
                    free, total = disk_free(self.dir)
                    log.warning("data capture write failed: %s", exc)
                    self._note("capture_stopped", free, total)
                self.skipped += 1
            finally:
                self._q.task_done()


def read_capture(directory: str | Path, since: float | None = None) -> list[dict[str, Any]]:
    """Every captured line under ``directory`` (``since``: only lines from then on), oldest file first."""
    from .jsoncodec import loads

    out = []
    for path in sorted(Path(directory).glob("capture-*.jsonl"), key=lambda p: p.stat().st_mtime):
        if path.name == "capture-events.jsonl":
            continue
        if since is not None and path.stat().st_mtime < since:
            continue  # last written before the window began
        for line in path.read_bytes().splitlines():
            if line.strip():
                try:
                    rec = loads(line)
                except ValueError:  # a line cut short by a full disk or a kill
                    continue
                if since is None or rec.get("time", 0) >= since:
                    out.append(rec)
    return out
