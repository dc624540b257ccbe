"""Drift of a deployed endpoint: its captured inputs, window by window, against its baseline.

The baseline lives beside the endpoint (``$NBSCALE_HOME/endpoints/NAME/baseline.json``,
written by ``deploy(..., baseline=X_train)``); captured inputs come from the
endpoint's data capture: the serving runtime's capture folder, or what the platform
captured (SageMaker's data capture in S3, ``EndpointBackend.captured_inputs``). Each window with a drifting feature records one
``drift_alert`` event for the endpoint (once per window, however often it is
looked at).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import NotFound, SpecError
from ..serving.capture import read_capture
from ..store import Store
from ..store.events import DRIFT, record_event
from .baseline import Baseline
from .drift import DEFAULT_FDR, WindowReport, parse_duration, windows

BASELINE_FILE = "baseline.json"
# window reports already computed, per (endpoint dir, baseline, window length): a panel
# that looks every few seconds re-tests only the window still filling up
_REPORTS: dict[tuple, dict] = {}


def captured_rows(
    directory: str | Path, since: float | None = None, until: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(times, rows x features) of the captured inputs under ``directory``."""
    if not Path(directory).is_dir():
        return np.zeros(0), np.zeros((0, 0))
    requests = []
    for rec in read_capture(directory, since=since):
        inputs = rec.get("inputs") or {}
        if inputs:
            requests.append((float(rec.get("time", 0)), next(iter(inputs.values()))))
    return stack_requests(requests, until)


def stack_requests(
    requests: Iterable[tuple[float, object]], until: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(times, rows x features) of captured requests given as (time, the request's rows)."""
    times: list[np.ndarray] = []
    rows: list[np.ndarray] = []
    for t, data in requests:
        if until is not None and t >= until:
            continue
        arr = np.asarray(data, dtype=float)
        arr = arr.reshape(arr.shape[0], -1) if arr.ndim > 1 else arr[None, :]
        rows.append(arr)
        times.append(np.full(arr.shape[0], t))
    if not rows:
        return np.zeros(0), np.zeros((0, 0))
    widths = {r.shape[1] for r in rows}
    if len(widths) > 1:
        keep = max(widths, key=lambda w: sum(r.shape[0] for r in rows if r.shape[1] == w))
        pairs = [(t, r) for t, r in zip(times, rows, strict=True) if r.shape[1] == keep]
        times, rows = [p[0] for p in pairs], [p[1] for p in pairs]
    return np.concatenate(times), np.concatenate(rows)


@dataclass
class DriftReport:
    endpoint: str
    window_s: float
    since: float
    windows: list[WindowReport]
    captured_rows: int
    alerts: int  # new drift_alert events recorded by this look

    @property
    def drifting(self) -> list[str]:
        """Features that drift in any window, most windows first."""
        counts: dict[str, int] = {}
        for w in self.windows:
            for f in w.drifting:
                counts[f.feature] = counts.get(f.feature, 0) + 1
        return sorted(counts, key=lambda k: -counts[k])

    def to_dict(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "window_s": self.window_s,
            "since": self.since,
            "captured_rows": self.captured_rows,
            "drifting": self.drifting,
            "alerts": self.alerts,
            "windows": [w.to_dict() for w in reversed(self.windows)],  # newest first
        }

    def describe(self) -> str:
        head = (
            f"endpoint {self.endpoint}: {self.captured_rows} captured rows in "
            f"{len(self.windows)} windows of {_span(self.window_s)}"
        )
        if not self.windows:
            return head + " (nothing captured yet: deploy with capture_rate, send traffic)"
        return "\n".join([head, *(w.describe() for w in self.windows)])

    def to_frame(self):
        """One row per (window, feature): a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(
            [
                {"window_start": w.start, "window_rows": w.rows, **f}
                for w in self.windows
                for f in w.to_dict()["features"]
            ]
        )

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, str]:
        return {"text/plain": self.describe()}


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def endpoint_drift(
    store: Store,
    name: str,
    endpoint_dir: Path,
    window: str | float = "1h",
    since: str | float | None = None,
    fdr: float = DEFAULT_FDR,
    baseline: Baseline | str | Path | None = None,
    record_alerts: bool = True,
    now: float | None = None,
    captured: Callable[[float], Iterable[tuple[float, object]] | None] | None = None,
) -> DriftReport:
    """Compare the endpoint's captured inputs with its baseline, one report per window.

    ``since`` is a duration back from now (``"24h"``) or an epoch time; by
    default the last 24 windows. ``captured(start)`` gives the platform's captured
    requests as (time, rows) from ``start`` on; None (or its None) reads the endpoint's
    capture folder.
    """
    window_s = parse_duration(window, "window")
    now = time.time() if now is None else now
    if since is None:
        start = now - 24 * window_s
    elif isinstance(since, str):
        start = now - parse_duration(since, "since")
    else:
        start = float(since)
    if baseline is None:
        path = endpoint_dir / BASELINE_FILE
        if not path.is_file():
            raise NotFound(
                f"endpoint {name!r} has no baseline",
                "deploy with baseline=X_train (%deploy model --baseline X_train), or pass baseline=",
            )
        baseline = Baseline.load(path)
    elif not isinstance(baseline, Baseline):
        baseline = Baseline.load(baseline)
    requests = captured(start) if captured is not None else None
    if requests is None:
        times, rows = captured_rows(endpoint_dir / "capture", since=start)
    else:
        times, rows = stack_requests(requests)
    if rows.size and rows.shape[1] != len(baseline.features):
        raise SpecError(
            "baseline",
            f"the captured inputs have {rows.shape[1]} features per row, "
            f"the baseline {len(baseline.features)}",
            "make the baseline from the data the model was trained on",
        )
    cache = _REPORTS.setdefault((str(endpoint_dir), baseline.created, window_s), {})
    reports = windows(baseline, times, rows, window_s, fdr, cache) if rows.size else []
    alerts = 0
    if record_alerts:
        for w in reports:
            if w.drifting:
                data = {
                    "window_start": w.start,
                    "window_end": w.end,
                    "rows": w.rows,
                    "features": [
                        {
                            "feature": f.feature,
                            "ks": f.ks,
                            "p_value": f.p_value,
                            "psi": f.psi,
                            "share": f.share,
                        }
                        for f in w.drifting[:20]
                    ],
                    "drifting": len(w.drifting),
                }
                key = f"{int(window_s)}:{int(w.start)}"
                alerts += record_event(store, "endpoint", name, DRIFT, data, key=key)
    return DriftReport(
        name, window_s, start, reports, int(rows.shape[0]) if rows.size else 0, alerts
    )
