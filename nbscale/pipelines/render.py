"""A run as text and HTML, for the CLI, the magics and papermill output."""

from __future__ import annotations

import html
import time
from typing import Any


def _duration(step: dict[str, Any]) -> str:
    if not step.get("started"):
        return "-"
    return f"{(step.get('ended') or time.time()) - step['started']:.1f}s"


def run_text(run: Any) -> str:
    lines = [
        f"pipeline {run.name} run {run.id}: {run.status}" + (f" - {run.error}" if run.error else "")
    ]
    width = max([len(s["name"]) for s in run.steps] + [4])
    for s in run.steps:
        reason = s.get("cache_reason") or ""
        lines.append(f"  {s['name']:<{width}}  {s['status']:<9}  {_duration(s):>7}  {reason}")
        if s.get("error"):
            lines.append(f"  {'':<{width}}  {s['error']}")
        if s.get("notebook") and s["status"] not in ("PENDING",):
            lines.append(f"  {'':<{width}}  notebook: {s['notebook']}")
    return "\n".join(lines)


def run_html(run: Any) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(s['name'])}</td><td>{html.escape(s['status'])}</td><td>{_duration(s)}</td>"
        f"<td>{html.escape(s.get('cache_reason') or '')}</td><td>{html.escape(s.get('error') or '')}</td>"
        f"<td><code>{html.escape(s.get('notebook') or '')}</code></td></tr>"
        for s in run.steps
    )
    err = f"<p><b>error:</b> {html.escape(run.error)}</p>" if run.error else ""
    return (
        f"<p>pipeline <b>{html.escape(run.name)}</b> run <code>{html.escape(run.id)}</code>: "
        f"<b>{html.escape(run.status)}</b></p>{err}<table><tr><th>step</th><th>status</th><th>time</th>"
        f"<th>cache</th><th>error</th><th>executed notebook</th></tr>{rows}</table>"
    )
