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
from nbscale.scrapes import scrape_local, to_frame
from nbscale.serving.capture import read_capture
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
