"""Rich views for endpoint monitoring: a live metrics chart and a drift report.

Both render as HTML in Lab and as plain text in papermill and terminals.
"""

from __future__ import annotations

import time
from html import escape
from typing import Any

WATCHED = ("Invocations", "ModelLatency_p50", "ModelLatency_p99", "OverheadLatency_p99")


def line_chart(title: str, values: list[float | None], width: int = 220, height: int = 80) -> str:
    pts = [(i, v) for i, v in enumerate(values) if v is not None]
    if not pts:
        return (
            f"<svg width='{width}' height='{height}' style='border:1px solid #ddd;margin:2px'>"
            f"<text x='5' y='14' font-size='11'>{escape(title)}: no data</text></svg>"
        )
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1, y0, y1 = min(xs), max(xs), min(0.0, min(ys)), max(ys)
    sx = (width - 10) / ((x1 - x0) or 1)
    sy = (height - 25) / ((y1 - y0) or 1)
    path = " ".join(f"{5 + (x - x0) * sx:.1f},{height - 5 - (y - y0) * sy:.1f}" for x, y in pts)
    return (
        f"<svg width='{width}' height='{height}' style='border:1px solid #ddd;margin:2px'>"
        f"<text x='5' y='14' font-size='11'>{escape(title)}: {ys[-1]:.4g}</text>"
        f"<polyline fill='none' stroke='#1f77b4' stroke-width='1.5' points='{path}'/></svg>"
    )


class MetricsWatch:
    """The SageMaker-named series of some endpoints, one row of charts per endpoint."""

    def __init__(self):
        self.series: dict[str, list[dict[str, Any]]] = {}
        self.errors: dict[str, str] = {}
        self.updated = 0.0

    def update(self, name: str, metrics: dict[str, Any] | None, error: str | None = None) -> None:
        if metrics is not None:
            self.series[name] = list(metrics.get("sagemaker_series") or [])
            self.errors.pop(name, None)
        if error:
            self.errors[name] = error
        self.updated = time.time()

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, str]:
        lines, blocks = [], []
        for name in sorted(set(self.series) | set(self.errors)):
            rows = self.series.get(name) or []
            last = rows[-1] if rows else {}
            summary = ", ".join(f"{k} {last.get(k)}" for k in WATCHED if k in last)
            err = self.errors.get(name)
            lines.append(f"{name}: {summary or 'no data'}" + (f" ({err})" if err else ""))
            charts = "".join(line_chart(k, [r.get(k) for r in rows]) for k in WATCHED)
            note = f"<div style='color:#b00'>{escape(err)}</div>" if err else ""
            blocks.append(
                f"<div><b>{escape(name)}</b> (latency in µs){note}<div>{charts}</div></div>"
            )
        if not lines:
            return {"text/plain": "no endpoints to watch", "text/html": "<i>no endpoints</i>"}
        stamp = time.strftime("%H:%M:%S", time.localtime(self.updated))
        return {
            "text/plain": "\n".join(lines) + f"\n(updated {stamp})",
            "text/html": "".join(blocks) + f"<div style='color:#888'>updated {stamp}</div>",
        }


class DriftView:
    """A drift report: one row per window, newest first, drifting features first."""

    def __init__(self, report: Any):
        self.report = report

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, str]:
        d = self.report.to_dict()
        rows = []
        for w in d["windows"]:
            start = time.strftime("%Y-%m-%d %H:%M", time.localtime(w["start"]))
            if w["skipped"]:
                rows.append(
                    f"<tr><td>{start}</td><td>{w['rows']}</td><td>{escape(w['skipped'])}</td></tr>"
                )
                continue
            drifting = [f for f in w["features"] if f["drifting"]]
            cells = (
                "; ".join(
                    f"<b>{escape(f['feature'])}</b> KS {f['ks']:.3f} (p {f['p_value']:.2g}),"
                    f" PSI {f['psi']:.3f}, share {f['share']:.1%}"
                    for f in drifting[:8]
                )
                or "no drift"
            )
            more = f" and {len(drifting) - 8} more" if len(drifting) > 8 else ""
            style = " style='background:#fee'" if drifting else ""
            rows.append(
                f"<tr{style}><td>{start}</td><td>{w['rows']}</td><td>{cells}{more}</td></tr>"
            )
        html = (
            f"<div><b>drift of {escape(d['endpoint'])}</b>: {d['captured_rows']} captured rows,"
            f" drifting: {escape(', '.join(d['drifting']) or 'none')}</div>"
            "<table><tr><th>window</th><th>rows</th><th>drifting features</th></tr>"
            + "".join(rows)
            + "</table>"
        )
        return {"text/plain": self.report.describe(), "text/html": html}
