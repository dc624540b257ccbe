"""Prometheus metrics of one server, plus a rolling window for quick JSON stats.

Each server has its own registry, so two servers in one process (tests) do
not collide. The rolling window (last ``WINDOW_S`` seconds of latencies, and
a per-second series) answers ``Endpoint.metrics()`` without a Prometheus.
"""

from __future__ import annotations

import random
import time
from bisect import bisect_left
from collections import deque
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

WINDOW_S = 60.0
SERIES_POINTS = 120
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# router overhead is tens of microseconds, or seconds while a replica cold-starts
OVERHEAD_BUCKETS = (
    5e-5,
    1e-4,
    2e-4,
    5e-4,
    0.001,
    0.002,
    0.005,
    0.01,
    0.05,
    0.25,
    1.0,
    5.0,
    30.0,
    120.0,
)


DIGEST_RANKS = np.arange(1001) / 10  # 0, 0.1, ... 100: exact at 50, 95 and 99
SHOWN_RANKS = (50, 95, 99)


class Rolling:
    """Latencies and outcomes of recent requests, in one bucket per second.

    A bucket keeps at most ``SAMPLE_CAP`` latencies (a uniform reservoir) in
    a plain list of floats, which the garbage collector never scans: a
    window of per-request tuples at 20k requests/s made full collections
    stall the server for 100+ ms.
    """

    SAMPLE_CAP = 2048

    def __init__(self):
        self.buckets: deque[list] = deque()  # [second, latencies, count, errors]
        self.series: deque[dict[str, Any]] = deque(maxlen=SERIES_POINTS)
        self.total = 0
        self.errors = 0

    def record(self, seconds: float, ok: bool) -> None:
        sec = int(time.time())
        self.total += 1
        b = self.buckets[-1] if self.buckets else None
        if b is None or b[0] != sec:
            self._close(sec)
            b = [sec, [], 0, 0]
            self.buckets.append(b)
        b[2] += 1
        if not ok:
            b[3] += 1
            self.errors += 1
        lat = b[1]
        if len(lat) < self.SAMPLE_CAP:
            lat.append(seconds)
        else:
            j = random.randrange(b[2])
            if j < self.SAMPLE_CAP:
                lat[j] = seconds

    def _close(self, now_sec: int, extra: dict[str, Any] | None = None) -> None:
        """Turn finished seconds into series points and drop buckets older than the window."""
        for b in self.buckets:
            if b[0] < now_sec and not (self.series and self.series[-1]["time"] >= b[0]):
                lat = b[1]
                self.series.append(
                    {
                        "time": b[0],
                        "rps": b[2],
                        "errors": b[3],
                        "p50_ms": round(float(np.percentile(lat, 50)) * 1000, 3) if lat else None,
                        "p99_ms": round(float(np.percentile(lat, 99)) * 1000, 3) if lat else None,
                        **(extra or {}),
                    }
                )
        while self.buckets and self.buckets[0][0] < now_sec - WINDOW_S:
            self.buckets.popleft()

    def snapshot(self, extra: dict[str, Any] | None = None, digest: bool = False) -> dict[str, Any]:
        """The window's figures; ``digest`` adds its latencies at every 0.1% rank
        (``latency_quantiles_ms``, 1001 values), from which the router merges the windows of
        several replicas serving one endpoint (``backends.local.replica_figures``)."""
        now = time.time()
        self._close(int(now), extra)
        lat = [x for b in self.buckets for x in b[1]]
        count = sum(b[2] for b in self.buckets)
        errs = sum(b[3] for b in self.buckets)
        span = min(WINDOW_S, max(1.0, now - self.buckets[0][0])) if self.buckets else WINDOW_S

        # one percentile call for every rank wanted: numpy partitions the window once
        wanted = DIGEST_RANKS if digest else SHOWN_RANKS
        at = np.percentile(lat, wanted) * 1000 if lat else None
        where = {50: 500, 95: 950, 99: 990} if digest else {50: 0, 95: 1, 99: 2}

        def pct(q):
            return None if at is None else round(float(at[where[q]]), 3)

        snap = {
            "p50_ms": pct(50),
            "p95_ms": pct(95),
            "p99_ms": pct(99),
            "throughput_rps": round(count / span, 2),
            "error_rate": round(errs / count, 4) if count else 0.0,
            "requests_total": self.total,
            "errors_total": self.errors,
            "window_s": WINDOW_S,
            "series": list(self.series),
        }
        if digest:
            snap["window_requests"], snap["window_errors"] = count, errs
            snap["latency_quantiles_ms"] = [] if at is None else np.round(at, 4).tolist()
        return snap


class LoopHistogram:
    """One histogram child, observed from the event loop's thread only: no lock, one bisect.

    prometheus_client's own ``Histogram.observe`` takes a lock per bucket and sum
    (thread safety a single-threaded server does not need) and cost about as much
    as parsing a request; the exposition is still prometheus_client's, through a
    collector (``LoopFamilies``).
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # le: the first bound >= value
        self.sum += value


class LoopCounter:
    __slots__ = ("value",)

    def __init__(self):
        self.value = 0

    def inc(self) -> None:
        self.value += 1


class LoopFamilies:
    """A prometheus_client collector of ``LoopHistogram``/``LoopCounter`` children."""

    def __init__(self, registry: CollectorRegistry):
        self.families: dict[str, tuple[str, str, tuple[str, ...], Any, dict]] = {}
        registry.register(self)

    def histogram(self, name: str, doc: str, labels: tuple[str, ...], bounds) -> dict:
        children: dict[tuple[str, ...], LoopHistogram] = {}
        self.families[name] = ("histogram", doc, labels, tuple(float(b) for b in bounds), children)
        return children

    def counter(self, name: str, doc: str, labels: tuple[str, ...]) -> dict:
        children: dict[tuple[str, ...], LoopCounter] = {}
        self.families[name] = ("counter", doc, labels, None, children)
        return children

    def collect(self):
        for name, (kind, doc, labels, bounds, children) in self.families.items():
            if kind == "counter":
                fam = CounterMetricFamily(name, doc, labels=labels)
                for values, child in list(children.items()):
                    fam.add_metric(values, child.value)
            else:
                fam = HistogramMetricFamily(name, doc, labels=labels)
                les = [*(floatToGoString(b) for b in bounds), "+Inf"]
                for values, child in list(children.items()):
                    cum, buckets = 0, []
                    for le, n in zip(les, child.counts, strict=True):
                        cum += n
                        buckets.append((le, cum))
                    fam.add_metric(values, buckets, child.sum)
            yield fam


class ServerMetrics:
    """The metrics of one server. Observations happen on its event loop's thread only."""

    def __init__(self, model: str):
        self.registry = CollectorRegistry()
        r = self.registry
        loop_metrics = LoopFamilies(r)
        self._requests = loop_metrics.counter(
            "nbscale_requests", "Requests by route and HTTP status", ("model", "route", "code")
        )
        self._latency = loop_metrics.histogram(
            "nbscale_request_latency_seconds",
            "Request latency",
            ("model", "route"),
            LATENCY_BUCKETS,
        )
        self._batch_size = loop_metrics.histogram(
            "nbscale_batch_size", "Rows per model batch", ("model",), BATCH_BUCKETS
        )
        self._batch_latency = loop_metrics.histogram(
            "nbscale_batch_latency_seconds", "Model time per batch", ("model",), LATENCY_BUCKETS
        )
        self.queue_depth = Gauge(
            "nbscale_queue_depth", "Rows waiting for the model", ["model"], registry=r
        )
        self.inflight = Gauge(
            "nbscale_inflight_requests", "Requests being served", ["model"], registry=r
        )
        self.load_time = Gauge(
            "nbscale_model_load_seconds",
            "Time to load and warm up the model",
            ["model"],
            registry=r,
        )
        self.batch_limit = Gauge(
            "nbscale_batch_limit", "Current adaptive batch size limit", ["model"], registry=r
        )
        # SageMaker's ModelLatency / OverheadLatency, observed by a router (nbscale.scrapes)
        self._model_latency = loop_metrics.histogram(
            "nbscale_model_latency_seconds",
            "Time the replica took to answer, as the router saw it",
            ("model", "route"),
            LATENCY_BUCKETS,
        )
        self._overhead_latency = loop_metrics.histogram(
            "nbscale_overhead_latency_seconds",
            "Router time besides the replica's (queueing for a replica, cold starts, proxying)",
            ("model", "route"),
            OVERHEAD_BUCKETS,
        )
        self.model = model
        self.rolling = Rolling()
        # children bound once: a label lookup per request costs more than the observation
        self._hist: dict[str, LoopHistogram] = {}
        self._count: dict[tuple[str, int], LoopCounter] = {}
        self._split: dict[str, tuple[LoopHistogram, LoopHistogram]] = {}
        self._bs = self._batch_size[(model,)] = LoopHistogram(tuple(map(float, BATCH_BUCKETS)))
        self._bl = self._batch_latency[(model,)] = LoopHistogram(LATENCY_BUCKETS)

    def observe_request(self, route: str, code: int, seconds: float) -> None:
        h = self._hist.get(route)
        if h is None:
            h = self._hist[route] = self._latency[(self.model, route)] = LoopHistogram(
                LATENCY_BUCKETS
            )
        h.observe(seconds)
        c = self._count.get((route, code))
        if c is None:
            c = self._count[(route, code)] = self._requests[(self.model, route, str(code))] = (
                LoopCounter()
            )
        c.value += 1
        if route in ("infer", "invocations"):
            self.rolling.record(seconds, code < 400)

    def observe_split(self, route: str, model_s: float, overhead_s: float) -> None:
        pair = self._split.get(route)
        if pair is None:
            key = (self.model, route)
            pair = self._split[route] = (
                self._model_latency.setdefault(key, LoopHistogram(LATENCY_BUCKETS)),
                self._overhead_latency.setdefault(key, LoopHistogram(OVERHEAD_BUCKETS)),
            )
        pair[0].observe(model_s)
        pair[1].observe(max(0.0, overhead_s))

    def observe_batch(self, size: int, seconds: float) -> None:
        self._bs.observe(size)
        self._bl.observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
