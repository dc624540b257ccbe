"""Endpoint monitoring's arithmetic: quantiles from histograms, SageMaker-named metrics per interval
from a runtime's exposition, per-pod sums since each pod's own last scrape."""

from __future__ import annotations

import pytest

from nbscale.scrapes import NAMES, histogram_quantile, parse, row
from nbscale.serving.metrics import ServerMetrics


def test_histogram_quantile_interpolates_inside_buckets_like_prometheus():
    # 10 observations <= 1, 10 more in (1, 2], none above
    buckets = {1.0: 10, 2.0: 20, float("inf"): 20}
    assert histogram_quantile(0.5, buckets) == 1.0
    assert histogram_quantile(0.75, buckets) == pytest.approx(1.5)
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.5)
    # the rank falls in +Inf: the largest finite bound, as Prometheus answers
    assert histogram_quantile(0.99, {1.0: 1, float("inf"): 10}) == 1.0
    assert histogram_quantile(0.5, {1.0: 0, float("inf"): 0}) is None


def test_rows_from_a_runtime_exposition_use_sagemaker_names_per_interval():
    # Given the serving runtime's own metrics after 100 fast and 4 failing requests
    m = ServerMetrics("digits")
    for _ in range(100):
        m.observe_request("infer", 200, 0.0012)
        m.observe_split("infer", 0.0011, 0.00008)
    for code in (400, 400, 413, 503):
        m.observe_request("infer", code, 0.0005)
        m.observe_split("infer", 0.0004, 0.00006)
    m.observe_request("other", 200, 0.5)  # metadata calls are not invocations
    first = parse(m.exposition()[0].decode(), at=100.0)
    r = row(first)
    assert r["Invocations"] == 104
    assert r["Invocation4XXErrors"] == 3 and r["Invocation5XXErrors"] == 1
    # ModelLatency p50: 1.1 ms lies in the (1 ms, 2 ms] bucket; microseconds
    assert 1000 < r["ModelLatency_p50"] <= 2000
    assert 50 < r["OverheadLatency_p50"] <= 100
    assert r["ModelLatency_p50"] <= r["ModelLatency_p95"] <= r["ModelLatency_p99"]
    # When 10 slow requests follow, the next row covers only them
    for _ in range(10):
        m.observe_request("invocations", 200, 0.3)
        m.observe_split("invocations", 0.2, 0.1)
    second = row(parse(m.exposition()[0].decode(), at=160.0), first)
    assert second["Invocations"] == 10 and second["Period"] == 60.0
    assert second["Invocation4XXErrors"] == 0
    assert 100_000 < second["ModelLatency_p50"] <= 250_000
    assert 50_000 < second["OverheadLatency_p50"] <= 250_000
    assert set(NAMES) <= set(second)


def test_pods_are_summed_per_pod_since_their_own_last_scrape():
    # Given two runtime pods (KServe: no router, request latency is ModelLatency)
    from nbscale.scrapes import Tracker

    a, b = ServerMetrics("digits"), ServerMetrics("digits")
    for _ in range(30):
        a.observe_request("infer", 200, 0.0015)  # (1 ms, 2 ms]
    for _ in range(10):
        b.observe_request("infer", 200, 0.04)  # (20 ms, 50 ms]
    b.observe_request("infer", 400, 0.0004)

    def text(m):
        return parse(m.exposition()[0].decode())

    t = Tracker()
    first = t.add_sources("digits", {"uid-a": text(a), "uid-b": text(b)}, 2, at=10.0)[-1]
    assert first["Invocations"] == 41 and first["Invocation4XXErrors"] == 1
    assert first["Instances"] == 2.0 and first["InvocationsPerInstance"] == 20.5
    assert 1000 < first["ModelLatency_p50"] <= 2000  # most requests were on the fast pod
    assert 20_000 < first["ModelLatency_p99"] <= 50_000
    assert first["OverheadLatency_p50"] is None and first["Period"] is None
    # When pod b goes away and a new pod c (a fresh process) comes with 5 requests, and a
    # serves 3 more, the next row counts 8: c whole, a's difference, nothing negative for b
    c = ServerMetrics("digits")
    for _ in range(5):
        c.observe_request("infer", 200, 0.004)
    for _ in range(3):
        a.observe_request("infer", 500, 0.002)
    second = t.add_sources("digits", {"uid-a": text(a), "uid-c": text(c)}, 2, at=70.0)[-1]
    assert second["Invocations"] == 8 and second["Invocation5XXErrors"] == 3
    assert second["Invocation4XXErrors"] == 0 and second["Period"] == 60.0
    # When pod a restarts (its counters begin again), its new counts are taken whole
    a2 = ServerMetrics("digits")
    a2.observe_request("infer", 200, 0.001)
    third = t.add_sources("digits", {"uid-a": text(a2), "uid-c": text(c)}, 2, at=80.0)[-1]
    assert third["Invocations"] == 1
    # Scaled to zero: a row of nothing, then forgetting starts the series again
    assert t.add_sources("digits", {}, 0, at=90.0)[-1]["Invocations"] == 0
    t.forget("digits")
    assert len(t.add_sources("digits", {"uid-c": text(c)}, 1, at=95.0)) == 1
