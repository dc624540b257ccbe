"""What a running job looks like in the notebook.

``WidgetView``: an ipywidgets box shown from second 0 with the phase, the
elapsed time, a rank-prefixed log tail and a small SVG chart per metric.
``TextView``: the same facts as plain lines, for papermill and terminal
kernels, where a widget would render as ``VBox(...)``.

Both keep bounded memory: the last ``LOG_LINES`` log lines and the last
``POINTS`` points per metric.
"""

from __future__ import annotations

import os
import sys
import time
from abc import ABC, abstractmethod
from collections import deque
from html import escape
from typing import Any

from nbscale.store.jobs import JobRecord

LOG_LINES = 200
POINTS = 300
REFRESH = 0.25  # seconds between widget updates
METRICS_EVERY = 1.0


def _phase(record: JobRecord) -> str:
    if record.terminal:
        return record.status.lower()
    phase = record.info.get("phase") or record.status.lower()
    return "finishing" if phase == "ended" else phase


def _latest(metrics: list[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """Points per metric name, rank 0's when it logged any (the others mostly repeat it)."""
    series: dict[str, list[tuple[float, float]]] = {}
    ranks_by_name: dict[str, set[int]] = {}
    for m in metrics:
        ranks_by_name.setdefault(m["name"], set()).add(m.get("rank", 0))
    for m in metrics:
        if 0 in ranks_by_name[m["name"]] and m.get("rank", 0) != 0:
            continue
        value = m["value"]
        if not isinstance(value, int | float):
            continue
        points = series.setdefault(m["name"], [])
        points.append((m["step"] if m.get("step") is not None else len(points), float(value)))
    return {name: points[-POINTS:] for name, points in series.items()}


def svg_chart(
    name: str, points: list[tuple[float, float]], width: int = 260, height: int = 90
) -> str:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    sx = (width - 10) / ((x1 - x0) or 1)
    sy = (height - 25) / ((y1 - y0) or 1)
    path = " ".join(f"{5 + (x - x0) * sx:.1f},{height - 5 - (y - y0) * sy:.1f}" for x, y in points)
    return (
        f"<svg width='{width}' height='{height}' style='border:1px solid #ddd;margin-right:6px'>"
        f"<text x='5' y='14' font-size='11'>{escape(name)}: {ys[-1]:.4g} (step {xs[-1]:g})</text>"
        f"<polyline fill='none' stroke='#1f77b4' stroke-width='1.5' points='{path}'/></svg>"
    )


class _View(ABC):
    def __init__(self, job, title: str):
        self.job = job
        self.title = title
        self.start = time.monotonic()
        self.lines: deque[str] = deque(maxlen=LOG_LINES)
        self.series: dict[str, list[tuple[float, float]]] = {}
        self.record: JobRecord = job.record
        self._metrics_at = 0.0

    def _poll_metrics(self, force: bool = False) -> bool:
        now = time.monotonic()
        if not force and now - self._metrics_at < METRICS_EVERY:
            return False
        self._metrics_at = now
        try:
            series = _latest(self.job.metrics())
        except OSError:
            return False
        changed = series != self.series
        self.series = series
        return changed

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    # the interface the watcher drives
    @abstractmethod
    def poll(self, record: JobRecord) -> None:
        """See TextView and WidgetView."""

    @abstractmethod
    def line(self, rank: int, text: str) -> None:
        """See TextView and WidgetView."""

    @abstractmethod
    def note(self, text: str) -> None:
        """See TextView and WidgetView."""

    @abstractmethod
    def finish(self, record: JobRecord) -> None:
        """See TextView and WidgetView."""


class TextView(_View):
    def __init__(self, job, title: str, stream=None):
        super().__init__(job, title)
        self.stream = stream or sys.stdout
        self._said = ""
        self._metrics_said = 0.0
        self._pending = False
        self._write(f"{title}: job {job.id}")

    def _write(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def poll(self, record: JobRecord) -> None:
        self.record = record
        phase = _phase(record)
        if phase != self._said:
            self._said = phase
            self._write(f"[{self.elapsed():5.1f}s] {phase}")
        # metrics read at the previous poll are printed now, after the log lines that
        # preceded them have been read, so the text keeps the job's order
        if self._pending:
            self._pending = False
            self._write(f"[{self.elapsed():5.1f}s] metrics: {self._metrics_text()}")
        if time.monotonic() - self._metrics_said > 5 and self._poll_metrics():
            self._metrics_said = time.monotonic()
            self._pending = True

    def _metrics_text(self) -> str:
        return ", ".join(
            f"{n}={p[-1][1]:.4g} (step {p[-1][0]:g})" for n, p in sorted(self.series.items())
        )

    def line(self, rank: int, text: str) -> None:
        self._write(f"[rank {rank}] {text}")

    def note(self, text: str) -> None:
        self._write(text)

    def finish(self, record: JobRecord) -> None:
        self.record = record
        self._poll_metrics(force=True)
        if self.series:
            self._write(f"metrics: {self._metrics_text()}")
        if _phase(record) != self._said:
            self._said = _phase(record)
            self._write(f"[{self.elapsed():5.1f}s] {self._said}")


class WidgetView(_View):
    def __init__(self, job, title: str):
        super().__init__(job, title)
        import ipywidgets as w
        from IPython.display import display

        self.header = w.HTML()
        self.chart = w.HTML()
        self.log = w.HTML(layout=w.Layout(max_height="240px", overflow="auto"))
        self.box = w.VBox([self.header, self.chart, self.log])
        self._drawn = 0.0
        self._dirty = True
        self._draw(force=True)
        display(self.box)

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and (now - self._drawn < REFRESH or not self._dirty):
            return
        self._drawn = now
        self._dirty = False
        rec = self.record
        color = {"succeeded": "green", "failed": "red", "cancelled": "gray", "lost": "red"}.get(
            _phase(rec), "#333"
        )
        self.header.value = (
            f"<b>{escape(self.title)}</b> &middot; job <code>{escape(rec.id)}</code> &middot; "
            f"<span style='color:{color}'>{escape(_phase(rec))}</span> &middot; {self.elapsed():.1f} s"
        )
        self.chart.value = "".join(svg_chart(n, p) for n, p in sorted(self.series.items())[:6] if p)
        self.log.value = (
            "<pre style='font-size:11px;margin:0'>" + escape("\n".join(self.lines)) + "</pre>"
            if self.lines
            else ""
        )

    def poll(self, record: JobRecord) -> None:
        if _phase(record) != _phase(self.record):
            self._dirty = True
        self.record = record
        if self._poll_metrics():
            self._dirty = True
        self._dirty = self._dirty or time.monotonic() - self._drawn > 1.0  # the clock moves
        self._draw()

    def line(self, rank: int, text: str) -> None:
        self.lines.append(f"[rank {rank}] {text}")
        self._dirty = True
        self._draw()

    def note(self, text: str) -> None:
        self.lines.append(text)
        self._draw(force=True)

    def finish(self, record: JobRecord) -> None:
        self.record = record
        self._poll_metrics(force=True)
        self._draw(force=True)


def widgets_wanted() -> bool:
    """Widgets only where a front end can draw them.

    ``NBSCALE_PROGRESS=widget|text`` decides; otherwise a kernel started by a
    Jupyter server (which sets ``JPY_SESSION_NAME``) or VS Code gets widgets,
    and papermill, nbclient and terminal IPython get text.
    """
    choice = os.environ.get("NBSCALE_PROGRESS", "auto")
    if choice in ("widget", "text"):
        return choice == "widget"
    if not (os.environ.get("JPY_SESSION_NAME") or os.environ.get("VSCODE_PID")):
        return False
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def make_view(job, title: str) -> _View:
    return WidgetView(job, title) if widgets_wanted() else TextView(job, title)
