"""Where each torchrun agent of a local job records its exit code, and reading it back."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def exit_file(job_dir: str | Path, node: int) -> Path:
    return Path(job_dir) / "agents" / f"node-{node}.json"


def read_exit(path: Path) -> int | None:
    """The exit code an agent recorded, or None when it has not (yet)."""
    try:
        return int(json.loads(path.read_text())["code"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def record_exit(path: Path, code: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"code": code, "time": time.time(), "pid": os.getpid()}))
        os.replace(tmp, path)
    except OSError as exc:  # a full disk: the supervisor falls back to our exit status
        print(f"nbscale agent: could not record the exit code in {path}: {exc}", file=sys.stderr)
