"""Data capture: a sampled JSONL of inputs and outputs for drift monitoring.

One line per captured request: ``{"time", "id", "model", "inputs", "outputs"}``
with tensors as nested lists. Files rotate at ``max_bytes``, so capture can
stay on. Writes happen on a background thread; the request path only
enqueues, and drops (and counts) lines when the writer falls behind.
"""

from __future__ import annotations

import os
import queue
import random
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from .jsoncodec import dumps


class DataCapture:
    def __init__(
        self,
        directory: str | Path,
        sample_rate: float = 1.0,
        max_bytes: int = 64 << 20,
        replica: str = "0",
    ):
        if not 0 < sample_rate <= 1:
            raise ValueError("capture sample rate must be in (0, 1]")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rate = sample_rate
        self.max_bytes = max_bytes
        self.replica = replica
        self.dropped = 0
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
        line = {
            "time": time.time(),
            "id": rid,
            "model": model,
            "inputs": {k: np.asarray(v).tolist() for k, v in inputs.items()},
            "outputs": {k: np.asarray(v).tolist() for k, v in outputs.items()},
        }
        try:
            self._q.put_nowait(line)
        except queue.Full:
            self.dropped += 1

    def flush(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not self._q.empty() and time.monotonic() < deadline:
            time.sleep(0.01)

    def _write(self) -> None:
        fh, written = None, 0
        while True:
            line = self._q.get()
            if fh is None or written >= self.max_bytes:
                if fh is not None:
                    fh.close()
                    self.path().rename(self.path().with_suffix(f".{int(time.time() * 1000)}.jsonl"))
                fh = self.path().open("ab")
                written = fh.tell()
            data = dumps(line) + b"\n"
            fh.write(data)
            fh.flush()
            written += len(data)


def read_capture(directory: str | Path) -> list[dict[str, Any]]:
    """Every captured line under ``directory``, oldest file first."""
    from .jsoncodec import loads

    out = []
    for path in sorted(Path(directory).glob("capture-*.jsonl"), key=lambda p: p.stat().st_mtime):
        for line in path.read_bytes().splitlines():
            if line.strip():
                out.append(loads(line))
    return out
