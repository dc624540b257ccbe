"""Every node pod's log, split by rank into the job's local ``logs/rank-R.log``.

The launcher prints each local rank's lines as ``[rank N] text``; anything else it
(or pip, or the shell stage) prints goes to the node's first rank, prefixed
``[node K]``. Logs are read with ``timestamps=True`` and ``sinceTime`` from the last
line seen, streamed in chunks (memory stays bounded by one chunk and one line), and
lines already written are skipped, so polling again never duplicates a line.

A container that has restarted (``restartCount`` above what was read) has its previous
run read first, with ``previous=True``: the kubelet keeps the log of the run before the
current one, and its end holds the traceback of the failure that caused the restart;
the timestamps order the two runs, so the same cursor serves both.
"""

from __future__ import annotations

import datetime
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...runtime.jobdir import JobDir
from ..remote.lifecycle import route_line

CHUNK = 64 * 1024
MAX_LINE = 1 << 20  # a longer line is cut here (a pod cannot make the kernel hold more)


@dataclass
class PodCursor:
    """How far one pod's log has been copied: the last timestamp and lines seen at it."""

    last_ts: str = ""
    at_last: int = 0
    done: bool = False  # the pod has ended and its whole log is copied
    restarts: int = 0  # the container restarts whose previous run's log has been read

    def to_dict(self) -> dict[str, Any]:
        return {
            "last_ts": self.last_ts,
            "at_last": self.at_last,
            "done": self.done,
            "restarts": self.restarts,
        }


@dataclass
class LogState:
    pods: dict[str, PodCursor] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> LogState:
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError):
            return cls()
        return cls({k: PodCursor(**v) for k, v in raw.items()})

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({k: v.to_dict() for k, v in self.pods.items()}))
        tmp.replace(path)


def since_seconds(ts: str, now: float | None = None) -> int | None:
    """``sinceSeconds`` that reaches back to the last line seen, with a second to spare
    (the lines already copied are skipped by their timestamps)."""
    if not ts:
        return None
    try:
        seen = datetime.datetime.fromisoformat(ts[:26].rstrip("Z") + "+00:00").timestamp()
    except ValueError:
        return None
    now = time.time() if now is None else now
    return max(1, math.ceil(now - seen) + 1)


class RankWriter:
    """Appends lines to rank files, keeping the files open only while copying."""

    def __init__(self, jobdir: JobDir, node_rank: int, first_rank: int):
        self.jobdir = jobdir
        self.node_rank = node_rank
        self.first_rank = first_rank
        self.files: dict[int, Any] = {}

    def write(self, text: str) -> None:
        rank, line = route_line(text, self.first_rank, f"node {self.node_rank}")
        fh = self.files.get(rank)
        if fh is None:
            fh = self.files[rank] = open(self.jobdir.log(rank), "a", encoding="utf-8")  # noqa: SIM115
        fh.write(line + "\n")

    def close(self) -> None:
        for fh in self.files.values():
            fh.close()
        self.files.clear()


def copy_pod_log(stream: Any, cursor: PodCursor, writer: RankWriter) -> None:
    """Copy new lines of one pod's log (an urllib3 response of ``timestamps=True``)."""
    partial = b""
    seen_at_ts = 0
    current_ts = ""

    def handle(raw: bytes) -> None:
        nonlocal seen_at_ts, current_ts
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        ts, _, line = text.partition(" ")
        if ts != current_ts:
            current_ts, seen_at_ts = ts, 0
        seen_at_ts += 1
        if ts < cursor.last_ts or (ts == cursor.last_ts and seen_at_ts <= cursor.at_last):
            return  # written by an earlier copy
        writer.write(line)
        if ts == cursor.last_ts:
            cursor.at_last += 1
        else:
            cursor.last_ts, cursor.at_last = ts, 1

    skipping = False  # inside the rest of a line that was cut at MAX_LINE
    for chunk in stream.stream(CHUNK, decode_content=True):
        partial += chunk
        *lines, partial = partial.split(b"\n")
        for raw in lines:
            if skipping:
                skipping = False
                continue
            handle(raw[:MAX_LINE])
        if len(partial) > MAX_LINE:
            if not skipping:
                handle(partial[:MAX_LINE])
            skipping, partial = True, b""
    if partial and not skipping:
        handle(partial[:MAX_LINE])
