"""The layout of a job's directory, shared by the backend and the workers.

<job>/spec.json              the spec as submitted
<job>/supervisor.log         what the local supervisor said
<job>/agent-<node>.log       torchrun's own output, one per simulated node
<job>/logs/rank-<R>.log      stdout+stderr of global rank R (all restarts)
<job>/errors/rank-<R>.json   exception of rank R (type, message, traceback, time)
<job>/metrics/rank-<R>.jsonl nbscale.log_metric records
<job>/restarts/rank-<R>      torchrun's restart count as last seen by rank R
<job>/outputs/               results written back by rank 0
<job>/kernels/rank-<R>       the private socket folder of rank R's kernel (notebook jobs)
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

_RANK_FILE = re.compile(r"^rank-(\d+)\.")


class JobDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def make(self) -> JobDir:
        for sub in ("logs", "errors", "metrics", "restarts", "outputs"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)
        return self

    @property
    def spec_file(self) -> Path:
        return self.path / "spec.json"

    @property
    def supervisor_log(self) -> Path:
        return self.path / "supervisor.log"

    @property
    def outputs(self) -> Path:
        return self.path / "outputs"

    def agent_log(self, node: int) -> Path:
        return self.path / f"agent-{node}.log"

    def log(self, rank: int) -> Path:
        return self.path / "logs" / f"rank-{rank}.log"

    def error(self, rank: int) -> Path:
        return self.path / "errors" / f"rank-{rank}.json"

    def metrics_file(self, rank: int) -> Path:
        return self.path / "metrics" / f"rank-{rank}.jsonl"

    def restart_file(self, rank: int) -> Path:
        return self.path / "restarts" / f"rank-{rank}"

    def kernel_note(self, rank: int) -> Path:
        return self.path / "kernels" / f"rank-{rank}"

    def _ranks_in(self, sub: str) -> list[int]:
        folder = self.path / sub
        if not folder.is_dir():
            return []
        return sorted(
            int(m.group(1)) for p in folder.iterdir() if (m := _RANK_FILE.match(p.name + "."))
        )

    def log_ranks(self) -> list[int]:
        return self._ranks_in("logs")

    def errors(self) -> list[dict[str, Any]]:
        out = []
        for rank in self._ranks_in("errors"):
            try:
                out.append(json.loads(self.error(rank).read_text()))
            except (OSError, ValueError):
                continue
        return sorted(out, key=lambda e: e.get("time", 0))

    def restarts(self) -> int:
        counts = []
        for rank in self._ranks_in("restarts"):
            try:
                counts.append(int(self.restart_file(rank).read_text() or 0))
            except (OSError, ValueError):
                continue
        return max(counts, default=0)

    def metrics(self) -> list[dict[str, Any]]:
        out = []
        for rank in self._ranks_in("metrics"):
            try:
                lines = self.metrics_file(rank).read_text().splitlines()
            except OSError:
                continue
            for line in lines:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue  # a line being written right now
        return sorted(out, key=lambda m: (m.get("time", 0), m.get("rank", 0)))
