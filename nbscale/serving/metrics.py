"""Prometheus metrics of one server, plus a rolling window for quick JSON stats.

Each server has its own registry, so two servers in one process (tests) do
not collide. The rolling window (last ``WINDOW_S`` seconds of latencies, and
a per-second series) answers ``Endpoint.metrics()`` without a Prometheus.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

WINDOW_S = 60.0
SERIES_POINTS = 120
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Rolling:
    """Latencies and outcomes of recent requests, cheap to record (a deque append)."""

    def __init__(self):
        self.samples: deque[tuple[float, float, bool]] = deque()  # (time, seconds, ok)
        self.series: deque[dict[str, Any]] = deque(maxlen=SERIES_POINTS)
        self.total = 0
        self.errors = 0
        self._second = int(time.time())
        self._sec_lat: list[float] = []
        self._sec_err = 0

    def record(self, seconds: float, ok: bool) -> None:
        now = time.time()
        self.total += 1
        if not ok:
            self.errors += 1
            self._sec_err += 1
        self.samples.append((now, seconds, ok))
        self._roll(now)
        self._sec_lat.append(seconds)

    def _roll(self, now: float, extra: dict[str, Any] | None = None) -> None:
        sec = int(now)
        if sec != self._second:
            lat = self._sec_lat
            self.series.append({
                "time": self._second,
                "rps": len(lat),
                "errors": self._sec_err,
                "p50_ms": float(np.percentile(lat, 50) * 1000) if lat else None,
                "p99_ms": float(np.percentile(lat, 99) * 1000) if lat else None,
                **(extra or {}),
            })
            self._second, self._sec_lat, self._sec_err = sec, [], 0
        cut = now - WINDOW_S
        while self.samples and self.samples[0][0] < cut:
            self.samples.popleft()

    def snapshot(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        now = time.time()
        self._roll(now, extra)
        lat = [s for _, s, _ in self.samples]
        span = min(WINDOW_S, max(1.0, now - self.samples[0][0])) if self.samples else WINDOW_S
        errs = sum(1 for _, _, ok in self.samples if not ok)

        def pct(q):
            return round(float(np.percentile(lat, q)) * 1000, 3) if lat else None

        return {
            "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99),
            "throughput_rps": round(len(lat) / span, 2),
            "error_rate": round(errs / len(lat), 4) if lat else 0.0,
            "requests_total": self.total,
            "errors_total": self.errors,
            "window_s": WINDOW_S,
            "series": list(self.series),
        }


class ServerMetrics:
    def __init__(self, model: str):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("nbscale_requests", "Requests by route and HTTP status", ["model", "route", "code"], registry=r)
        self.latency = Histogram("nbscale_request_latency_seconds", "Request latency", ["model", "route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("nbscale_batch_size", "Rows per model batch", ["model"], buckets=BATCH_BUCKETS, registry=r)
        self.batch_latency = Histogram("nbscale_batch_latency_seconds", "Model time per batch", ["model"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("nbscale_queue_depth", "Rows waiting for the model", ["model"], registry=r)
        self.inflight = Gauge("nbscale_inflight_requests", "Requests being served", ["model"], registry=r)
        self.load_time = Gauge("nbscale_model_load_seconds", "Time to load and warm up the model", ["model"], registry=r)
        self.batch_limit = Gauge("nbscale_batch_limit", "Current adaptive batch size limit", ["model"], registry=r)
        self.model = model
        self.rolling = Rolling()
        # children bound once: a labels() lookup per request costs more than the observation
        self._hist: dict[str, Any] = {}
        self._count: dict[tuple[str, int], Any] = {}
        self._bs = self.batch_size.labels(model)
        self._bl = self.batch_latency.labels(model)

    def observe_request(self, route: str, code: int, seconds: float) -> None:
        h = self._hist.get(route)
        if h is None:
            h = self._hist[route] = self.latency.labels(self.model, route)
        h.observe(seconds)
        c = self._count.get((route, code))
        if c is None:
            c = self._count[(route, code)] = self.requests.labels(self.model, route, str(code))
        c.inc()
        if route in ("infer", "invocations"):
            self.rolling.record(seconds, code < 400)

    def observe_batch(self, size: int, seconds: float) -> None:
        self._bs.observe(size)
        self._bl.observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
