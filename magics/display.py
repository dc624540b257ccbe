"""Rich objects the magics return, and errors shown as one clear message.

IPython asks an exception for ``_render_traceback_()`` before printing it;
giving user errors that method replaces a page of magic internals with the
message, and gives a failed job the remote traceback of the cell instead.
"""

from __future__ import annotations

import re
from html import escape
from typing import Any

from nbscale.capture import CELL_FILENAME
from nbscale.errors import JobFailed, NbscaleError
from nbscale.faces.text import ago, duration
from nbscale.job_repr import job_mimebundle
from nbscale.store.jobs import JobRecord

_CELL_LINE = re.compile(r'File "' + re.escape(CELL_FILENAME) + r'", line (\d+)')


def user_error(exc: NbscaleError) -> NbscaleError:
    """The same exception, rendered as its message only."""
    message = f"{type(exc).__name__}: {exc}"
    exc._render_traceback_ = lambda: message.splitlines()  # type: ignore[attr-defined]
    return exc


def cell_line(traceback_text: str | None) -> int | None:
    lines = _CELL_LINE.findall(traceback_text or "")
    return int(lines[-1]) if lines else None


class CellJobFailed(JobFailed):
    """A ``%%train`` job that failed: the failing rank, the cell line, the remote traceback."""

    def __init__(self, record: JobRecord):
        tb = record.info.get("traceback")
        line = cell_line(tb)
        where = f"rank {record.failed_rank}" if record.failed_rank is not None else "the job"
        at = f" at line {line} of the cell" if line else ""
        first = (record.error or record.status.lower()).splitlines()[0]
        first = re.sub(r"^rank \d+: ", "", first)
        super().__init__(
            f"job {record.id}: {where} failed{at}: {first}", rank=record.failed_rank, traceback=tb
        )
        self.record = record
        self.cell_line = line

    def _render_traceback_(self) -> list[str]:
        out = [f"{type(self).__name__}: {self}"]
        tb = self.remote_traceback
        # a traceback that never reached the cell (a missing output) adds nothing to the message
        if tb and CELL_FILENAME in tb:
            out += ["", f"traceback from rank {self.rank}:", *tb.rstrip().splitlines()]
        elif self.record.error and "\n" in self.record.error:
            out += self.record.error.splitlines()[1:]
        return out


class JobInterrupted(KeyboardInterrupt):
    def __init__(self, message: str):
        super().__init__(message)

    def _render_traceback_(self) -> list[str]:
        return [f"KeyboardInterrupt: {self.args[0]}"]


def _describe(value: Any) -> str:
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"{type(value).__name__} {tuple(shape)}"
    if isinstance(value, list | tuple | dict):
        return f"{type(value).__name__} of {len(value)}"
    return type(value).__name__


class TrainResult:
    """What a finished ``%%train`` cell shows: the job and the names now in the notebook."""

    def __init__(self, record: JobRecord, outputs: dict[str, Any]):
        self.record = record
        self.outputs = outputs

    def __getitem__(self, name: str) -> Any:
        return self.outputs[name]

    def _summary(self) -> str:
        return (
            f"job {self.record.id} {self.record.status.lower()} in {duration(self.record.duration)}"
        )

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, str]:
        rows = [(n, _describe(v)) for n, v in self.outputs.items()]
        text = self._summary() + "".join(f"\n  {n}: {d}" for n, d in rows)
        if not rows:
            text += "\n  (no --outputs)"
        html_rows = "".join(
            f"<tr><td><code>{escape(n)}</code></td><td>{escape(d)}</td></tr>" for n, d in rows
        )
        html = f"<div>{escape(self._summary())}</div>" + (
            f"<table><tr><th>output</th><th>value</th></tr>{html_rows}</table>" if rows else ""
        )
        return {"text/plain": text, "text/html": html}

    def __repr__(self) -> str:
        return self._repr_mimebundle_()["text/plain"]


def _cost(record: JobRecord) -> str:
    from nbscale.faces.text import job_cost

    return job_cost(record)


class JobsTable:
    def __init__(self, records: list[JobRecord]):
        self.records = records

    def _rows(self) -> list[list[str]]:
        return [
            [
                r.id,
                r.status,
                f"{r.spec.get('nodes', 1)}x{r.spec.get('procs_per_node', 1)}",
                r.backend,
                str(r.restarts),
                ago(r.created),
                duration(r.duration),
                _cost(r),
            ]
            for r in self.records
        ]

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, str]:
        from nbscale.faces.text import table

        headers = [
            "job",
            "status",
            "nodes x procs",
            "backend",
            "restarts",
            "created",
            "duration",
            "cost",
        ]
        if not self.records:
            return {
                "text/plain": "no jobs yet: run a cell with %%train",
                "text/html": "<i>no jobs yet</i>",
            }
        html = (
            "<table><tr>"
            + "".join(f"<th>{h}</th>" for h in headers)
            + "</tr>"
            + "".join(
                "<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>"
                for row in self._rows()
            )
            + "</table>"
        )
        return {"text/plain": table(headers, self._rows()), "text/html": html}


class LogText:
    def __init__(self, job_id: str, text: str):
        self.job_id = job_id
        self.text = text

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, str]:
        text = self.text or f"(job {self.job_id} has no log lines yet)"
        return {"text/plain": text, "text/html": f"<pre>{escape(text)}</pre>"}

    def __str__(self) -> str:
        return self.text


class JobView:
    """A job record as a rich object (``%cancel`` returns one)."""

    def __init__(self, record: JobRecord):
        self.record = record

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, str]:
        return job_mimebundle(self.record)
