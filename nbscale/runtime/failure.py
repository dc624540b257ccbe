"""How a rank reports the exception that ended it: where nbscale and torchrun both look.

Shared by the worker and the cell runner (it used to live in the worker, which
the cell runner imported back: a cycle).
"""

from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path
from typing import Any

from .jobdir import JobDir

_HIDDEN_FRAMES = (
    "runpy.py",
    os.path.join("nbscale", "runtime", "worker.py"),
    os.path.join("nbscale", "runtime", "launch.py"),
)


def format_exception(exc: BaseException) -> str:
    """The traceback without nbscale's and runpy's own frames on top."""
    te = traceback.TracebackException.from_exception(exc)
    while te.stack and te.stack[0].filename.endswith(_HIDDEN_FRAMES):
        te.stack.pop(0)
    return "".join(te.format())


def write_error(
    jobdir: JobDir, rank: int, exc: BaseException, restart: int, extra: dict | None = None
) -> None:
    now = time.time()
    tb = format_exception(exc)
    record: dict[str, Any] = {
        "rank": rank,
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": tb,
        "time": now,
        "restart": restart,
        **(extra or {}),
    }
    tmp = jobdir.error(rank).with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(jobdir.error(rank))
    # torchrun's own error file, so its summary names the root cause too
    torch_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if torch_file:
        payload = {
            "message": {
                "message": f"{type(exc).__name__}: {exc}",
                "extraInfo": {"py_callstack": tb, "timestamp": str(int(now))},
            }
        }
        Path(torch_file).parent.mkdir(parents=True, exist_ok=True)
        Path(torch_file).write_text(json.dumps(payload))
