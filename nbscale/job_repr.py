"""How a job shows itself in a notebook: a short table, as HTML and as text."""

from __future__ import annotations

from html import escape

from .store.jobs import JobRecord
from .words import count


def _fields(record: JobRecord) -> list[tuple[str, str]]:
    spec = record.spec
    duration = record.duration
    rows = [
        ("job", record.id),
        (
            "status",
            record.status + (f" ({record.info.get('phase')})" if not record.terminal else ""),
        ),
        ("backend", record.backend),
        (
            "shape",
            f"{count(spec.get('nodes', 1), 'node')} x "
            f"{count(spec.get('procs_per_node', 1), 'process')}",
        ),
        ("duration", "-" if duration is None else f"{duration:.1f} s"),
    ]
    if record.error:
        rows.append(("error", record.error.splitlines()[0]))
    return rows


def job_text(record: JobRecord) -> str:
    return "\n".join(f"{k + ':':10}{v}" for k, v in _fields(record))


def job_mimebundle(record: JobRecord) -> dict[str, str]:
    rows = "".join(
        f"<tr><th style='text-align:left'>{escape(k)}</th><td style='text-align:left'>{escape(v)}</td></tr>"
        for k, v in _fields(record)
    )
    return {"text/plain": job_text(record), "text/html": f"<table>{rows}</table>"}
