"""Endpoint metrics under SageMaker's names, from the serving runtime's Prometheus histograms.

=======================  ==========================================================
``Invocations``          requests to the model routes (V2 infer, /invocations)
``Invocation4XXErrors``  of those, answered 4xx
``Invocation5XXErrors``  of those, answered 5xx
``InvocationsPerInstance``  Invocations / ready replicas
``ModelLatency``         time the replica took to answer, as the router saw it
``OverheadLatency``      the router's time besides that (queueing, cold starts, proxying)
=======================  ==========================================================

Latencies are in microseconds, as CloudWatch reports them, and are
percentiles (p50/p95/p99) interpolated inside the histogram buckets exactly as
Prometheus' ``histogram_quantile`` does, never averages. A row covers the
interval since the previous scrape (counter and bucket differences), so a
series of rows is a per-interval time series; the first row of a process
covers everything since the router started.

The same parser reads a KServe pod's ``/metrics`` (the same runtime, no
router: ModelLatency is then the runtime's request latency, the container's
time as SageMaker counts it, and OverheadLatency, the platform's part, is
measured by Knative's queue-proxy rather than the runtime: it stays None).
With several pods, ``Tracker.add_sources`` takes each pod's counter and bucket
differences since its own previous scrape and sums them (a pod that came or
went does not look like a restart), then the percentiles come from the summed
buckets, as ``histogram_quantile(sum by (le) (rate(...)))`` would.
"""

from __future__ import annotations

import http.client
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from .errors import BackendUnavailable

MODEL_ROUTES = ("infer", "invocations")
QUANTILES = (50, 95, 99)
SERIES_POINTS = 720
NAMES = (
    "Invocations",
    "Invocation4XXErrors",
    "Invocation5XXErrors",
    "InvocationsPerInstance",
    *(f"ModelLatency_p{q}" for q in QUANTILES),
    *(f"OverheadLatency_p{q}" for q in QUANTILES),
)


@dataclass
class Scrape:
    """One read of a /metrics page: counters and cumulative histogram buckets."""

    time: float
    requests: dict[int, float] = field(default_factory=dict)  # HTTP code -> count (model routes)
    histograms: dict[str, dict[float, float]] = field(default_factory=dict)  # name -> le -> count
    instances: float | None = None


def parse(text: str, at: float | None = None) -> Scrape:
    """A Prometheus text exposition of the nbscale runtime or router, read into a ``Scrape``."""
    s = Scrape(time.time() if at is None else at)
    wanted = {
        "nbscale_model_latency_seconds": "model",
        "nbscale_overhead_latency_seconds": "overhead",
        "nbscale_request_latency_seconds": "request",
    }
    for fam in text_string_to_metric_families(text):
        if fam.name == "nbscale_requests":
            for smp in fam.samples:
                if smp.name.endswith("_total") and smp.labels.get("route") in MODEL_ROUTES:
                    code = int(smp.labels["code"])
                    s.requests[code] = s.requests.get(code, 0.0) + smp.value
        elif fam.name in wanted:
            buckets = s.histograms.setdefault(wanted[fam.name], {})
            for smp in fam.samples:
                if smp.name.endswith("_bucket") and smp.labels.get("route") in MODEL_ROUTES:
                    le = float(smp.labels["le"])
                    buckets[le] = buckets.get(le, 0.0) + smp.value
        elif fam.name == "nbscale_endpoint_replicas":
            for smp in fam.samples:
                if smp.labels.get("state") == "ready":
                    s.instances = (s.instances or 0.0) + smp.value
    return s


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' ``histogram_quantile``: linear inside the bucket holding rank ``q * total``."""
    if not buckets:
        return None
    les = sorted(buckets)
    total = buckets[les[-1]]
    if total <= 0:
        return None
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le in les:
        count = buckets[le]
        if count >= rank:
            if math.isinf(le):  # past the last finite bucket: its bound is all we know
                return prev_le
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return prev_le


def _minus(cur: dict[float, float], prev: dict[float, float] | None) -> dict[float, float]:
    if not prev:
        return dict(cur)
    out = {le: cur[le] - prev.get(le, 0.0) for le in cur}
    if any(v < 0 for v in out.values()):  # the router restarted: its counters began again
        return dict(cur)
    return out


def since(cur: Scrape, prev: Scrape | None) -> Scrape:
    """The counts of ``cur`` taken since ``prev`` (all of ``cur`` when the source restarted:
    a counter went down or vanished)."""
    if prev is None:
        return cur

    def dropped(now: dict, before: dict) -> bool:
        return any(now.get(k, -1.0) < v for k, v in before.items())

    if dropped(cur.requests, prev.requests) or any(
        dropped(cur.histograms.get(n, {}), b) for n, b in prev.histograms.items()
    ):
        return cur
    return Scrape(
        cur.time,
        {c: v - prev.requests.get(c, 0.0) for c, v in cur.requests.items()},
        {
            n: {le: v - prev.histograms.get(n, {}).get(le, 0.0) for le, v in b.items()}
            for n, b in cur.histograms.items()
        },
        cur.instances,
    )


def combine(scrapes: list[Scrape], at: float, instances: float | None) -> Scrape:
    """One scrape holding the sums of several (the pods of one endpoint)."""
    out = Scrape(at, instances=instances)
    for s in scrapes:
        for code, v in s.requests.items():
            out.requests[code] = out.requests.get(code, 0.0) + v
        for name, buckets in s.histograms.items():
            into = out.histograms.setdefault(name, {})
            for le, v in buckets.items():
                into[le] = into.get(le, 0.0) + v
    return out


def row(cur: Scrape, prev: Scrape | None = None) -> dict[str, Any]:
    """The SageMaker-named metrics for the interval between ``prev`` and ``cur``."""
    reqs = dict(cur.requests)
    if prev is not None:
        diff = {c: v - prev.requests.get(c, 0.0) for c, v in reqs.items()}
        reqs = diff if all(v >= 0 for v in diff.values()) else reqs
    invocations = sum(reqs.values())
    out: dict[str, Any] = {
        "Timestamp": cur.time,
        "Period": round(cur.time - prev.time, 3) if prev else None,
        "Invocations": int(invocations),
        "Invocation4XXErrors": int(sum(v for c, v in reqs.items() if 400 <= c < 500)),
        "Invocation5XXErrors": int(sum(v for c, v in reqs.items() if c >= 500)),
        "Instances": cur.instances,
        "InvocationsPerInstance": (
            round(invocations / cur.instances, 3) if cur.instances else float(invocations)
        ),
    }
    model = cur.histograms.get("model") or cur.histograms.get("request") or {}
    prev_model = (prev.histograms.get("model") or prev.histograms.get("request")) if prev else None
    overhead = cur.histograms.get("overhead")
    for q in QUANTILES:
        v = histogram_quantile(q / 100, _minus(model, prev_model))
        out[f"ModelLatency_p{q}"] = round(v * 1e6, 1) if v is not None else None
        v = (
            histogram_quantile(
                q / 100, _minus(overhead, prev.histograms.get("overhead") if prev else None)
            )
            if overhead
            else None
        )
        out[f"OverheadLatency_p{q}"] = round(v * 1e6, 1) if v is not None else None
    return out


def scrape_local(port: int, token: str, timeout: float = 10.0) -> Scrape:
    """Read a local endpoint's router ``/metrics`` (bearer token required)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        body = resp.read()
    except OSError as exc:
        raise BackendUnavailable(f"/metrics on 127.0.0.1:{port} did not answer: {exc}") from None
    finally:
        conn.close()
    if resp.status != 200:
        raise BackendUnavailable(f"/metrics on 127.0.0.1:{port} answered {resp.status}")
    return parse(body.decode())


class Tracker:
    """The rows seen for each endpoint by this process (previous scrape + a bounded series)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._prev: dict[str, Scrape] = {}
        self._rows: dict[str, deque] = {}
        self._sources: dict[str, dict[str, Scrape]] = {}
        self._last: dict[str, float] = {}

    def add(self, name: str, cur: Scrape) -> list[dict[str, Any]]:
        with self._lock:
            r = row(cur, self._prev.get(name))
            self._prev[name] = cur
            rows = self._rows.setdefault(name, deque(maxlen=SERIES_POINTS))
            rows.append(r)
            return list(rows)

    def forget(self, name: str) -> None:
        """Drop an endpoint's series and previous scrapes (it was undeployed)."""
        with self._lock:
            for d in (self._prev, self._rows, self._sources, self._last):
                d.pop(name, None)

    def add_sources(
        self, name: str, sources: dict[str, Scrape], instances: int, at: float | None = None
    ) -> list[dict[str, Any]]:
        """One row from several sources (pods) of an endpoint: each source's differences
        since its own previous scrape, summed; a source seen for the first time counts
        whole. Returns the endpoint's series."""
        at = time.time() if at is None else at
        with self._lock:
            seen = self._sources.setdefault(name, {})
            parts = [since(cur, seen.get(src)) for src, cur in sources.items()]
            r = row(combine(parts, at, float(instances)))
            last = self._last.get(name)
            r["Period"] = round(at - last, 3) if last is not None else None
            self._last[name] = at
            self._sources[name] = dict(sources)
            rows = self._rows.setdefault(name, deque(maxlen=SERIES_POINTS))
            rows.append(r)
            return list(rows)


TRACKER = Tracker()


def with_sagemaker_names(stats: dict[str, Any], scrape: Scrape | None, name: str) -> dict[str, Any]:
    """``stats`` plus the SageMaker-named metrics of an endpoint whose runtime's Prometheus
    metrics nbscale reads directly (``EndpointBackend.scrape``; unchanged without ``scrape``).

    Adds the latest interval's values at the top level (``Invocations``,
    ``ModelLatency_p99``...), ``sagemaker_names`` (their list) and
    ``sagemaker_series``: one row per look, ``pandas.DataFrame(m["sagemaker_series"])``.
    """
    if scrape is None:
        return stats
    rows = TRACKER.add(name, scrape)
    return {**stats, **rows[-1], "sagemaker_names": list(NAMES), "sagemaker_series": rows}


def to_frame(metrics: dict[str, Any]):
    """The SageMaker-named series as a pandas DataFrame indexed by time."""
    import pandas as pd

    frame = pd.DataFrame(metrics.get("sagemaker_series") or [])
    if not frame.empty:
        frame.index = pd.to_datetime(frame.pop("Timestamp"), unit="s")
    return frame
