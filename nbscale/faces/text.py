"""Tables, JSON, times, costs and progress, as every face shows them."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def ago(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells
    )


class Progress:
    """A one-line status on stderr: rewritten in place on a terminal, every 10 s otherwise."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.monotonic()
        self._last = 0.0
        self._shown = False

    def update(self, text: str) -> None:
        elapsed = time.monotonic() - self.start
        line = f"{text} ({elapsed:.0f}s)"
        if self.tty:
            self.stream.write("\r\033[K" + line)
            self.stream.flush()
            self._shown = True
        elif elapsed - self._last >= 10 or not self._last:
            self._last = elapsed or 1e-9
            self.stream.write(line + "\n")
            self.stream.flush()

    def clear(self) -> None:
        if self.tty and self._shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._shown = False


def job_cost(record: Any) -> str:
    """The cost of a job so far, as the job lists show it (`$1.20 (spot -$0.80)`)."""
    from ..config import load as load_config
    from ..cost import record_costs

    c = record_costs(record, load_config())
    if c is None:
        return "-"
    return f"${c['cost']:.2f}" + (f" (spot -${c['spot_savings']:.2f})" if c["spot_savings"] else "")


def show_dry_run(dry: Any, *notes: str, out=None, err=None) -> None:
    """A dry run as ``kubectl --dry-run=client -o yaml`` shows one: ``notes`` and the dry run's
    own commentary on stderr, then exactly what would be sent on stdout (``dry`` is a
    ``nbscale.backends.base.DryRun``), so that ``| jq`` or ``| kubectl apply -f -`` work."""
    out = out or sys.stdout
    err = err or sys.stderr
    err.write("".join(f"{note}\n" for note in notes if note) + dry.commentary())
    err.flush()
    out.write(dry.text())
    out.flush()
