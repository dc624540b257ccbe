"""Endpoint monitoring: SageMaker-named metrics from histograms, drift on a real endpoint, capture guard."""

from __future__ import annotations

import http.client
import json
import threading
import time

import numpy as np
import pytest

from nbscale.backends.local.endpoints import endpoint_dir, token_for
from nbscale.endpoints import deploy, endpoints
from nbscale.scrapes import NAMES, histogram_quantile, parse, row, scrape_local, to_frame
from nbscale.serving.capture import read_capture
from nbscale.serving.metrics import ServerMetrics
from nbscale.store import get_store
from nbscale.store.events import DRIFT, list_events
from tests.support import wait_for
from tests.support.serving import mlp


@pytest.fixture
def cleanup():
    yield
    for ep in endpoints():
        ep.delete()


def _post(port: int, path: str, body: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body.encode(), {"Authorization": f"Bearer {token_for('mon')}"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


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


def test_local_endpoint_metrics_under_load_and_drift_with_alert(cleanup, nbscale_cli):
    # Given a model deployed with a baseline of its training data (capture on by default then)
    rng = np.random.default_rng(0)
    train = rng.normal(size=(5000, 64)).astype(np.float32)
    ep = deploy(mlp(), name="mon", baseline=train)
    assert (endpoint_dir("mon") / "baseline.json").is_file()
    first = ep.metrics()  # everything since the router started
    # When 40 good requests of 20 rows and 5 malformed ones arrive
    t0 = time.time()
    for _ in range(40):
        ep.predict(rng.normal(size=(20, 64)).astype(np.float32))
    bad = json.dumps(
        {"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    )
    for _ in range(5):
        assert _post(ep.record.port, "/v2/models/mon/infer", bad) == 400
    m = ep.metrics()
    # Then the interval row counts exactly those requests, under SageMaker's names
    assert m["Invocations"] == 45 and m["Invocation4XXErrors"] == 5
    assert m["Invocation5XXErrors"] == 0 and m["Instances"] == 1
    assert m["InvocationsPerInstance"] == 45
    assert m["ModelLatency_p50"] > 0 and m["ModelLatency_p99"] >= m["ModelLatency_p50"]
    assert m["OverheadLatency_p50"] is not None and m["OverheadLatency_p50"] >= 0
    assert len(m["sagemaker_series"]) == len(first["sagemaker_series"]) + 1
    frame = to_frame(m)
    assert list(frame["Invocations"])[-1] == 45
    # And the router's /metrics needs the token
    with pytest.raises(Exception, match="401"):
        scrape_local(ep.record.port, "wrong")
    assert scrape_local(ep.record.port, token_for("mon")).requests
    # And the captured inputs of that traffic do not drift
    wait_for(lambda: len(read_capture(endpoint_dir("mon") / "capture", since=t0)) >= 40, 30)
    calm = ep.drift(window="1d", since=t0)
    assert calm.captured_rows == 800 and calm.drifting == [] and calm.alerts == 0
    # When feature 5 shifts by half a standard deviation
    t1 = time.time()
    for _ in range(30):
        x = rng.normal(size=(20, 64)).astype(np.float32)
        x[:, 5] += 0.5
        ep.predict(x)
    wait_for(lambda: len(read_capture(endpoint_dir("mon") / "capture", since=t1)) >= 30, 30)
    report = ep.drift(window="1d", since=t1)
    # Then f5 is named first, and an alert event is stored
    assert report.captured_rows == 600 and report.drifting[0] == "f5"
    assert report.alerts == 1
    alerts = list_events(get_store(), kind="endpoint", ref="mon", types=[DRIFT])
    assert alerts and alerts[0]["data"]["features"][0]["feature"] == "f5"
    # And the CLI says the same
    out = nbscale_cli("drift", "mon", "--window", "1d", "--since", "1h", check=True).stdout
    assert "f5: KS" in out
    table = nbscale_cli("metrics", "mon", check=True).stdout
    assert "ModelLatency_p99" in table and "InvocationsPerInstance" in table
    assert "microseconds" in table
    proc = nbscale_cli("metrics", "mon", "--json", check=True)
    assert json.loads(proc.stdout)["Invocations"] == 75  # a new process: since the router started


def test_magics_deploy_with_baseline_watch_and_drift(cleanup, capsys):
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    try:
        shell.run_line_magic("load_ext", "nbscale.magics")
        rng = np.random.default_rng(1)
        shell.user_ns["model"] = mlp()
        shell.user_ns["X_train"] = rng.normal(size=(3000, 64)).astype(np.float32)
        ep = shell.run_line_magic(
            "deploy", "model --name watched --baseline X_train --idle-ttl 10m"
        )
        assert ep.record.config["idle_ttl_s"] == 600 and ep.record.config["capture_rate"] == 1.0
        for _ in range(10):
            ep.predict(rng.normal(size=(20, 64)).astype(np.float32))
        assert shell.run_line_magic("endpoints", "watched --watch --count 2 --interval 0.1") is None
        shown = capsys.readouterr().out
        assert "watched: Invocations 10" in shown and "ModelLatency_p50" in shown
        wait_for(lambda: len(read_capture(endpoint_dir("watched") / "capture")) >= 10, 30)
        view = shell.run_line_magic("drift", "watched --window 1d")
        bundle = view._repr_mimebundle_()
        assert "drifting: none" in bundle["text/html"] and "200 rows" in bundle["text/plain"]
        with pytest.raises(Exception, match="neither a variable"):
            shell.run_line_magic("deploy", "model --name other --baseline nothing_here")
    finally:
        InteractiveShell.clear_instance()


def test_metrics_count_exactly_under_concurrent_load_on_two_replicas(cleanup):
    # Given an endpoint with two ready replicas
    ep = deploy(mlp(), name="busy", replicas=(2, 2))
    wait_for(lambda: ep.metrics()["replicas"]["ready"] == 2, 60, interval=0.2, what="two replicas")
    ep.metrics()  # the interval starts here
    x = np.random.default_rng(2).random((4, 64), dtype=np.float32)

    def client(n: int) -> None:
        from nbscale.endpoints import endpoint

        mine = endpoint("busy")  # a connection of its own
        for _ in range(n):
            mine.predict(x)
        mine.close()

    # When four clients send 40 requests each at the same time
    threads = [threading.Thread(target=client, args=(40,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    m = ep.metrics()
    # Then every request is counted once, per instance too, and the percentiles are ordered
    assert m["Invocations"] == 160 and m["Invocation5XXErrors"] == 0
    assert m["Instances"] == 2 and m["InvocationsPerInstance"] == 80
    assert 0 < m["ModelLatency_p50"] <= m["ModelLatency_p95"] <= m["ModelLatency_p99"]
    assert 0 <= m["OverheadLatency_p50"] <= m["OverheadLatency_p99"]
