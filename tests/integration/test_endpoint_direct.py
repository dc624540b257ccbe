"""An endpoint of one replica served by that replica on the endpoint's socket: the router only
supervises, and every behaviour the router gave (auth, metrics, stats, capture, scaling,
restarts) still holds."""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import urllib.parse

import numpy as np
import pytest

from nbscale.backends.local.endpoints import endpoint_dir, port_free
from nbscale.endpoints import deploy, endpoints
from nbscale.serving.capture import read_capture
from tests.support import wait_for
from tests.support.serving import forward, mlp


@pytest.fixture
def cleanup():
    yield
    for ep in endpoints():
        ep.delete()


def _serving(ep) -> str:
    return ep.metrics()["serving"]


def _request(ep, method: str, path: str, body: bytes = b"", token: str | None = None):
    url = urllib.parse.urlparse(ep.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    conn.request(method, path, body, headers)
    resp = conn.getresponse()
    out = resp.status, resp.read()
    conn.close()
    return out


def _infer_body(x: np.ndarray) -> bytes:
    return json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "data": x.ravel().tolist(),
                }
            ]
        }
    ).encode()


def test_a_lone_replica_serves_the_socket_with_auth_metrics_stats_and_capture(cleanup):
    model = mlp()
    ep = deploy(model, name="lone", replicas=(1, 1), capture_rate=1.0)
    token = (endpoint_dir("lone") / "token").read_text().strip()
    # Given an endpoint of exactly one replica, Then that replica serves the socket itself
    wait_for(lambda: _serving(ep) == "replica", 30, interval=0.05, what="the hand-over")
    [rep] = ep.metrics()["replica_list"]
    assert rep["serves_socket"] is True
    x = np.ones((2, 64), np.float32)
    # And it still answers only with the endpoint's token
    assert _request(ep, "POST", "/v2/models/lone/infer", _infer_body(x))[0] == 401
    assert _request(ep, "POST", "/v2/models/lone/infer", _infer_body(x), "wrong")[0] == 401
    status, body = _request(ep, "POST", "/v2/models/lone/infer", _infer_body(x), token)
    assert status == 200
    out = np.asarray(json.loads(body)["outputs"][0]["data"], np.float32).reshape(2, 10)
    np.testing.assert_allclose(out, forward(model, x), rtol=1e-5, atol=1e-6)
    for _ in range(9):
        ep.predict(x)
    # And the router's routes still answer on the endpoint's port, with its token only
    assert _request(ep, "GET", "/nbscale/stats")[0] == 401
    assert _request(ep, "GET", "/metrics")[0] == 401
    stats = ep.metrics()
    assert stats["requests_total"] >= 10 and stats["replicas"]["current"] == 1
    assert stats["router_pid"] != rep["pid"]
    status, text = _request(ep, "GET", "/metrics", token=token)
    assert status == 200
    lines = text.decode().splitlines()
    served = sum(
        float(line.rsplit(" ", 1)[1])
        for line in lines
        if line.startswith("nbscale_requests_total{") and 'code="200"' in line
    )
    assert served >= 10, lines[:20]
    assert any(line.startswith("nbscale_endpoint_replicas{") for line in lines)
    # And every request was captured by the replica that served it
    captured = wait_for(
        lambda: len(read_capture(endpoint_dir("lone") / "capture")) >= 10 or None,
        10,
        what="captured requests",
    )
    assert captured
    # And idle time is the replica's: it served a request just now
    assert ep.metrics()["idle_s"] < 30
    port = int(ep.url.rsplit(":", 1)[1])
    ep.delete()
    assert port_free(port)


def test_scaling_up_takes_the_socket_back_and_no_request_is_lost(cleanup):
    model = mlp()
    ep = deploy(model, name="grow", replicas=(1, 1))
    wait_for(lambda: _serving(ep) == "replica", 30, interval=0.05, what="the hand-over")
    x = np.ones((1, 64), np.float32)
    stop = threading.Event()
    results: list[object] = []

    def client():
        from nbscale.endpoints import endpoint

        c = endpoint("grow")
        while not stop.is_set():
            try:
                results.append(c.predict(x))
            except Exception as exc:  # noqa: BLE001 - recorded; the test fails on any
                results.append(exc)
        c.close()

    threads = [threading.Thread(target=client) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(results) > 20, 30, what="requests flowing")
        # When it may scale past one replica, Then the router proxies again
        ep.scale(1, 2)
        wait_for(lambda: _serving(ep) == "router", 30, interval=0.05, what="taken back")
        assert not any(r["serves_socket"] for r in ep.metrics()["replica_list"])
        n = len(results)
        wait_for(lambda: len(results) > n + 20, 30, what="requests through the router")
        # When it is one replica again, Then that replica serves the socket again
        ep.scale(1, 1)
        wait_for(lambda: _serving(ep) == "replica", 30, interval=0.05, what="handed over again")
        # When the replica serving the socket is killed, Then a new one takes over
        [rep] = ep.metrics()["replica_list"]
        os.kill(rep["pid"], signal.SIGKILL)
        wait_for(
            lambda: (
                [r["pid"] for r in ep.metrics()["replica_list"] if r["serves_socket"]]
                not in ([], [rep["pid"]])
            ),
            60,
            interval=0.05,
            what="a new replica serving the socket",
        )
        n = len(results)
        wait_for(lambda: len(results) > n + 20, 30, what="requests after the restart")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    # And no request was lost in any of it (nbscale's client retries a connection that was
    # closed under it once, as it always has)
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, errors[:3]
    for r in results[-3:]:
        np.testing.assert_allclose(r, forward(model, x), rtol=1e-5, atol=1e-6)


def test_endpoints_that_need_the_router_to_see_requests_keep_it_in_front(cleanup, monkeypatch):
    # scaling between replicas, scale to zero and the idle TTL all count requests in the router
    for name, kwargs in (
        ("ranged", {"replicas": (1, 2)}),
        ("zero", {"replicas": (0, 1), "idle_timeout_s": 60}),
        ("ttl", {"replicas": (1, 1), "idle_ttl": 600}),
    ):
        ep = deploy(mlp(), name=name, **kwargs)
        ep.predict(np.ones((1, 64), np.float32))
        m = ep.metrics()
        assert m["serving"] == "router", (name, m["serving"])
        assert not any(r["serves_socket"] for r in m["replica_list"])
        ep.delete()
    # And NBSCALE_DIRECT=0 keeps the router in front of a lone replica too
    monkeypatch.setenv("NBSCALE_DIRECT", "0")
    ep = deploy(mlp(), name="proxied", replicas=(1, 1))
    ep.predict(np.ones((1, 64), np.float32))
    assert _serving(ep) == "router"


def test_a_bad_capture_floor_is_refused_at_deploy_and_nothing_is_left(cleanup, monkeypatch):
    # Given a machine whose capture floor setting is not a share of the disk
    monkeypatch.setenv("NBSCALE_CAPTURE_MIN_FREE", "25%")
    # When an endpoint with capture is deployed, the deploy says what to give
    with pytest.raises(Exception, match="NBSCALE_CAPTURE_MIN_FREE='25%'.*from 0 up to"):
        deploy(mlp(), name="floor", replicas=(1, 1), capture_rate=1.0)
    # And no endpoint record or replica was left behind
    assert [ep.name for ep in endpoints()] == []
