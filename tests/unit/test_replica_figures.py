"""An endpoint whose replicas all serve its socket (``direct``) answers /metrics and
/nbscale/stats for the whole endpoint, from what each replica counted."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from nbscale.backends.local.replica_figures import merged_exposition, merged_stats
from nbscale.serving.metrics import Rolling, ServerMetrics


def _samples(text: bytes) -> dict[tuple, float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text.decode())
        for s in fam.samples
    }


def test_counters_and_histograms_are_summed_and_gauges_kept_per_replica():
    # Given two replicas' own metrics
    a, b = ServerMetrics("m"), ServerMetrics("m")
    for _ in range(3):
        a.observe_request("infer", 200, 0.002)
    for seconds in (0.002, 0.2):
        b.observe_request("infer", 200, seconds)
    b.observe_request("infer", 503, 0.001)
    a.batch_limit.labels("m").set(8)
    b.batch_limit.labels("m").set(32)
    # When the router merges them
    merged = _samples(merged_exposition({0: a.exposition()[0], 3: b.exposition()[0]}))
    # Then each request counts once, by route and code, as a sum() over the replicas would
    ok = (("code", "200"), ("model", "m"), ("route", "infer"))
    assert merged[("nbscale_requests_total", ok)] == 5
    assert (
        merged[("nbscale_requests_total", (("code", "503"), ("model", "m"), ("route", "infer")))]
        == 1
    )
    lat = (("model", "m"), ("route", "infer"))
    assert merged[("nbscale_request_latency_seconds_count", lat)] == 6
    assert merged[("nbscale_request_latency_seconds_sum", lat)] == pytest.approx(0.209)
    inf = (("le", "+Inf"), *lat)
    assert merged[("nbscale_request_latency_seconds_bucket", inf)] == 6
    # And a gauge is a replica's own state, told apart by a replica label
    assert merged[("nbscale_batch_limit", (("model", "m"), ("replica", "0")))] == 8
    assert merged[("nbscale_batch_limit", (("model", "m"), ("replica", "3")))] == 32
    assert not any(k[0] == "nbscale_batch_limit" and "replica" not in dict(k[1]) for k in merged)


def _window(latencies_s: list[float]) -> dict:
    r = Rolling()
    for x in latencies_s:
        r.record(x, True)
    return r.snapshot(digest=True)


def test_percentiles_weigh_each_replica_by_the_requests_it_served():
    # Given one replica that answered 900 requests in 1 ms and one that answered 100 in 10 ms
    fast, slow = _window([0.001] * 900), _window([0.010] * 100)
    merged = merged_stats([fast, slow])
    # Then the endpoint's median is the busy replica's and its p95 and p99 the slow one's
    assert merged["p50_ms"] == pytest.approx(1.0)
    assert merged["p95_ms"] == pytest.approx(10.0)
    assert merged["p99_ms"] == pytest.approx(10.0)
    assert merged["requests_total"] == 1000
    # And with the weights the other way round the median moves, as it does for the requests
    merged = merged_stats([_window([0.001] * 100), _window([0.010] * 900)])
    assert merged["p50_ms"] == pytest.approx(10.0)
    # And percentiles of a spread of latencies match those of all requests taken together
    rng = np.random.default_rng(0)
    xs, ys = rng.exponential(0.003, 1500), rng.exponential(0.008, 500)
    merged = merged_stats([_window(list(xs)), _window(list(ys))])
    for q in (50, 95, 99):
        truth = np.percentile(np.concatenate([xs, ys]) * 1000, q)
        assert merged[f"p{q}_ms"] == pytest.approx(truth, rel=0.03), q


def test_series_points_sum_requests_and_show_the_slowest_replica():
    merged = merged_stats(
        [
            {"series": [{"time": 10, "rps": 5, "errors": 1, "p50_ms": 1.0, "p99_ms": 2.0}]},
            {
                "series": [
                    {"time": 10, "rps": 7, "errors": 0, "p50_ms": 3.0, "p99_ms": 4.0},
                    {"time": 11, "rps": 2, "errors": 0, "p50_ms": None, "p99_ms": None},
                ]
            },
        ]
    )
    assert merged["series"] == [
        {"time": 10, "rps": 12, "errors": 1, "p50_ms": 3.0, "p99_ms": 4.0},
        {"time": 11, "rps": 2, "errors": 0, "p50_ms": None, "p99_ms": None},
    ]
    assert merged["p50_ms"] is None and merged["requests_total"] == 0


def test_the_digest_gives_the_same_percentiles_and_the_window_errors():
    r = Rolling()
    rng = np.random.default_rng(1)
    for i, x in enumerate(rng.exponential(0.004, 3000)):
        r.record(float(x), ok=i % 10 != 0)
    plain, digest = r.snapshot(), r.snapshot(digest=True)
    for key in ("p50_ms", "p95_ms", "p99_ms"):
        assert digest[key] == plain[key], key
    assert len(digest["latency_quantiles_ms"]) == 1001 and "latency_quantiles_ms" not in plain
    assert digest["window_errors"] == 300 and digest["window_requests"] == 3000
    # the endpoint's error rate is the errors over the requests of every replica's window
    ok = Rolling()
    for _ in range(1000):
        ok.record(0.001, True)
    assert merged_stats([digest, ok.snapshot(digest=True)])["error_rate"] == 0.075
