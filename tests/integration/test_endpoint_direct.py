"""An endpoint of one replica served by that replica on the endpoint's socket: the router only
supervises, and every behaviour the router gave (auth, metrics, stats, capture, scaling,
restarts) still holds."""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import psutil
import pytest

from nbscale.backends.local.endpoints import ENDPOINT_ENV, endpoint_dir, port_free
from nbscale.backends.local.processes import tagged_processes
from nbscale.endpoints import deploy, endpoints
from nbscale.serving.capture import read_capture
from nbscale.serving.loadfile import LoadReader, LoadWriter
from nbscale.store import get_store
from tests.support import wait_for
from tests.support.serving import deploy_elastic, forward, mlp


@pytest.fixture
def cleanup():
    yield
    for ep in endpoints():
        ep.delete()


def _serving(ep) -> str:
    return ep.metrics()["serving"]


def _none_lost(errors: list, results: list, model, x: np.ndarray) -> None:
    """No request failed, and the last answers are what the model computes."""
    assert not errors, errors[:3]
    for r in results[-3:]:
        np.testing.assert_allclose(r, forward(model, x), rtol=1e-5, atol=1e-6)


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
    # Given an endpoint deployed with --proxy (direct false), while it runs one replica
    model = mlp()
    ep = deploy(model, name="grow", replicas=(1, 1), options={"direct": False})
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
        # When it runs a second replica, Then the router takes the socket back and proxies
        ep.scale(2, 2)
        wait_for(lambda: _serving(ep) == "router", 30, interval=0.05, what="taken back")
        assert not any(r["serves_socket"] for r in ep.metrics()["replica_list"])
        n = len(results)
        wait_for(lambda: len(results) > n + 20, 30, what="requests through the router")
        # When it is one replica again, Then that replica serves the socket again
        ep.scale(1, 1)
        wait_for(lambda: _serving(ep) == "replica", 30, interval=0.05, what="handed over again")
        # When the replica serving the socket is killed, Then a new one takes over (the one
        # scaled down may still be draining beside it)
        [rep] = [r for r in ep.metrics()["replica_list"] if r["serves_socket"]]
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
    _none_lost(errors, results, model, x)


def test_scaling_scale_to_zero_and_ttl_endpoints_are_served_by_their_lone_replica(
    cleanup, monkeypatch
):
    # Given endpoints that scale between replicas, to zero, or are torn down after an idle
    # TTL: the router counts their requests from the replica's load file, not on the way through
    x = np.ones((1, 64), np.float32)
    for name, kwargs in (
        ("ranged", {"replicas": (1, 2)}),
        ("zero", {"replicas": (0, 1), "idle_timeout_s": 60}),
        ("ttl", {"replicas": (1, 1), "idle_ttl": 600}),
    ):
        ep = deploy(mlp(), name=name, **kwargs)
        ep.predict(x)  # wakes the standby of "zero"
        # Then while one replica runs, it serves the socket itself
        wait_for(lambda ep=ep: _serving(ep) == "replica", 30, interval=0.05, what=name)
        [rep] = [r for r in ep.metrics()["replica_list"] if r["state"] == "ready"]
        assert rep["serves_socket"] is True
        load = endpoint_dir(name) / f"replica-{rep['id']}.load"
        assert load.stat().st_mode & 0o777 == 0o600
        # And the router sees the requests it no longer proxies
        for _ in range(5):
            ep.predict(x)
        m = ep.metrics()
        assert m["serving"] == "replica" and m["idle_s"] < 5, (name, m["idle_s"])
        ep.delete()
    # And NBSCALE_DIRECT=0 keeps the router in front of a lone replica, whatever the scaling
    monkeypatch.setenv("NBSCALE_DIRECT", "0")
    for name, kwargs in (
        ("proxied", {"replicas": (1, 1)}),
        ("proxied-ranged", {"replicas": (1, 2)}),
    ):
        ep = deploy(mlp(), name=name, **kwargs)
        ep.predict(x)
        assert _serving(ep) == "router"
        ep.delete()
    monkeypatch.delenv("NBSCALE_DIRECT")
    # And an endpoint fixed at two replicas is served by both of them (direct, the default)
    ep = deploy(mlp(), name="pair", replicas=(2, 2))
    wait_for(lambda: _serving(ep) == "replicas", 30, interval=0.05, what="both replicas")
    assert all(r["serves_socket"] for r in ep.metrics()["replica_list"])
    ep.predict(x)
    ep.delete()
    # And deployed with --proxy it keeps the router (it retries a request that hit a replica
    # killed under it), even while one of them is being replaced
    ep = deploy(mlp(), name="pair-proxied", replicas=(2, 2), options={"direct": False})
    ep.predict(x)
    assert _serving(ep) == "router"
    os.kill(ep.metrics()["replica_list"][0]["pid"], signal.SIGKILL)
    for _ in range(20):
        ep.predict(x)
        assert _serving(ep) == "router"


def test_the_load_file_carries_the_replicas_requests_to_the_router(tmp_path):
    # Given a replica's load file and the router's view of it
    path = tmp_path / "replica-0.load"
    writer = LoadWriter(str(path))
    reader = LoadReader(str(path))
    assert path.stat().st_mode & 0o777 == 0o600
    first = reader.read()
    assert (first.inflight, first.requests, first.serving) == (0, 0, False)
    assert first.last_request == 0.0 and first.pid == os.getpid()
    # When requests begin and one ends, Then the router reads them in flight and their time
    before = time.monotonic()
    writer.begin()
    writer.begin()
    writer.end()
    writer.set_serving(True)
    now = reader.read()
    assert (now.inflight, now.requests, now.serving) == (1, 2, True)
    assert before <= now.last_request <= time.monotonic()
    writer.end()
    writer.set_serving(False)
    assert (reader.read().inflight, reader.read().serving) == (0, False)
    # And a file that is not a load file is refused with what it is
    (tmp_path / "short.load").write_bytes(b"x")
    with pytest.raises(OSError, match="not a replica load file"):
        LoadReader(str(tmp_path / "short.load"))
    writer.close()
    reader.close()


class Clients:
    """``n`` threads of nbscale's client calling ``name`` until stopped, every answer kept."""

    def __init__(self, name: str, x: np.ndarray, n: int, pause_s: float = 0.0):
        self.name, self.x, self.pause_s = name, x, pause_s
        self.stop = threading.Event()
        self.results: list[object] = []
        self.threads = [threading.Thread(target=self._run) for _ in range(n)]
        for t in self.threads:
            t.start()

    def _run(self) -> None:
        from nbscale.endpoints import endpoint

        c = endpoint(self.name)
        while not self.stop.is_set():
            try:
                self.results.append(c.predict(self.x))
            except Exception as exc:  # noqa: BLE001 - recorded; the test fails on any
                self.results.append(exc)
            if self.pause_s:
                self.stop.wait(self.pause_s)
        c.close()

    def wait(self, more: int, what: str) -> None:
        n = len(self.results)
        wait_for(lambda: len(self.results) >= n + more, 60, what=what)

    def close(self) -> list[Exception]:
        self.stop.set()
        for t in self.threads:
            t.join(60)
        return [r for r in self.results if isinstance(r, Exception)]


def _replicas(name: str) -> list[psutil.Process]:
    """The endpoint's replica processes (not its supervisor, router or zygote)."""
    zygote = None
    for ep in endpoints():
        if ep.name == name:
            zygote = ep.metrics()["zygote_pid"]
    found = []
    for p in tagged_processes(ENDPOINT_ENV, name):
        try:  # one that has just exited (a zombie until reaped) is not running
            if "nbscale.backends.local.router" not in " ".join(p.cmdline()) and p.pid != zygote:
                found.append(p)
        except psutil.Error:
            continue
    return found


def _connections_on(proc: psutil.Process, port: int) -> list:
    """The TCP connections ``proc`` holds that came from the endpoint's port."""
    return [
        c for c in proc.net_connections(kind="tcp") if c.laddr and c.laddr.port == port and c.raddr
    ]


def test_a_proxied_autoscaling_endpoint_is_direct_at_low_load_proxied_when_scaled_up_and_back(
    cleanup, tmp_path
):
    # Given an endpoint of 1 to 2 replicas of a 50 ms model, scaling at one request in flight,
    # deployed with --proxy (direct false)
    ep, model = deploy_elastic(tmp_path / "art", "elastic", (1, 2), direct=False)
    x = np.ones((1, 64), np.float32)
    # When one client calls it (one request in flight at most), Then its replica serves it
    light = Clients("elastic", x, 1)
    heavy = None
    try:
        wait_for(lambda: _serving(ep) == "replica", 30, interval=0.05, what="the hand-over")
        light.wait(20, "requests served directly")
        m = ep.metrics()
        assert m["serving"] == "replica" and m["replicas"]["current"] == 1
        # And the router sees those requests (its idle time is the replica's)
        assert m["idle_s"] < 2
        # When three more clients hold four requests in flight, Then it scales up and the
        # router takes the socket back to spread them over both replicas
        heavy = Clients("elastic", x, 3)
        wait_for(
            lambda: ep.metrics()["replicas"]["current"] == 2, 60, interval=0.1, what="scale up"
        )
        wait_for(lambda: _serving(ep) == "router", 30, interval=0.05, what="taken back")
        assert not any(r["serves_socket"] for r in ep.metrics()["replica_list"])
        light.wait(10, "requests through the router")
        # When the load falls back to one client, Then it scales down and is direct again
        errors = heavy.close()
        heavy = None
        wait_for(
            lambda: ep.metrics()["replicas"]["current"] == 1, 60, interval=0.1, what="scale down"
        )
        wait_for(lambda: _serving(ep) == "replica", 30, interval=0.05, what="handed over again")
        light.wait(20, "requests served directly again")
    finally:
        if heavy is not None:
            errors = heavy.close()
        errors += light.close()
    # And no request was lost in any of it
    _none_lost(errors, light.results, model, x)


def test_a_scale_to_zero_endpoint_served_directly_pauses_only_a_replica_that_holds_nothing(
    cleanup,
):
    from nbscale.endpoints import endpoint

    model = mlp()
    x = np.ones((1, 64), np.float32)
    expected = forward(model, x)
    ep = deploy(model, name="nap", replicas=(0, 1), idle_timeout_s=2)
    port = int(ep.url.rsplit(":", 1)[1])
    held = endpoint("nap")
    for _ in range(2):
        # Given the standby woken by a request (the second time: on a connection the replica
        # served and closed when it gave the socket back), serving the socket itself
        np.testing.assert_allclose(held.predict(x), expected, rtol=1e-5, atol=1e-6)
        assert ep.metrics()["cold_starts"][-1]["how"] == "resumed"
        wait_for(lambda: _serving(ep) == "replica", 30, interval=0.05, what="the hand-over")
        [replica] = _replicas("nap")
        held.close()
        held = endpoint("nap")  # a keep-alive connection to the replica, idle from now on
        held.predict(x)
        burst = Clients("nap", x, 2)
        burst.wait(20, "requests served directly")
        assert _connections_on(replica, port), "the replica serves the endpoint's connections"
        assert ep.metrics()["replicas"]["current"] == 1  # requests keep it awake
        assert not burst.close()
        # When no request comes for the idle timeout, Then the router takes the socket back
        # and pauses the replica once it holds no request or connection from that socket
        wait_for(
            lambda: ep.metrics()["replicas"]["current"] == 0, 30, interval=0.1, what="scale to 0"
        )
        wait_for(
            lambda r=replica: r.status() == psutil.STATUS_STOPPED, 10, what="the paused standby"
        )
        assert _serving(ep) == "router"
        assert _connections_on(replica, port) == []
        assert ep.refresh().status == "SCALED_TO_ZERO"
    # And the next request (on the connection the paused replica had served) is answered
    np.testing.assert_allclose(held.predict(x), expected, rtol=1e-5, atol=1e-6)
    wait_for(lambda: _serving(ep) == "replica", 30, interval=0.05, what="direct after waking")
    held.close()


def test_an_idle_ttl_endpoint_served_directly_is_torn_down_after_its_ttl(cleanup):
    model = mlp()
    x = np.ones((1, 64), np.float32)
    ep = deploy(model, name="brief", replicas=(1, 2), idle_ttl=4)
    wait_for(lambda: _serving(ep) == "replica", 30, interval=0.05, what="the hand-over")
    clients = Clients("brief", x, 2)
    try:
        clients.wait(20, "requests served directly")
        # Then requests served directly keep it from the TTL
        time.sleep(5)
        assert ep.refresh().status == "READY" and _serving(ep) == "replica"
        # And so they do for a router started after a kill -9, which adopts the replica and
        # reads the requests it serves from its load file
        before = ep.metrics()
        router, [replica] = before["router_pid"], [r["pid"] for r in before["replica_list"]]
        os.kill(router, signal.SIGKILL)
        wait_for(
            lambda: ep.metrics()["router_pid"] != router, 30, interval=0.1, what="a new router"
        )
        clients.wait(20, "requests served while the router was replaced")
        time.sleep(5)
        m = ep.metrics()
        assert ep.refresh().status == "READY" and m["serving"] == "replica", m["serving"]
        assert m["idle_s"] < 2 and [r["pid"] for r in m["replica_list"]] == [replica]
    finally:
        errors = clients.close()
    assert not errors, errors[:3]
    # When no request comes for the TTL, Then no replica is left
    wait_for(lambda: ep.refresh().status == "SCALED_TO_ZERO", 30, interval=0.1, what="teardown")
    wait_for(lambda: _replicas("brief") == [], 30, what="no replica process left")
    # And the next request starts one, which serves the socket again
    np.testing.assert_allclose(ep.predict(x), forward(model, x), rtol=1e-5, atol=1e-6)
    wait_for(lambda: _serving(ep) == "replica", 30, interval=0.05, what="direct after the TTL")


def test_a_bad_capture_floor_is_refused_at_deploy_and_nothing_is_left(cleanup, monkeypatch):
    # Given a machine whose capture floor setting is not a share of the disk
    monkeypatch.setenv("NBSCALE_CAPTURE_MIN_FREE", "25%")
    # When an endpoint with capture is deployed, the deploy says what to give
    with pytest.raises(Exception, match="NBSCALE_CAPTURE_MIN_FREE='25%'.*from 0 up to"):
        deploy(mlp(), name="floor", replicas=(1, 1), capture_rate=1.0)
    # And no endpoint record or replica was left behind
    assert [ep.name for ep in endpoints()] == []


def _served_by(ep, token: str) -> dict[int, int]:
    """{replica id: requests it counted}, asked of each replica on its own port."""
    out = {}
    for r in ep.metrics()["replica_list"]:
        if r["state"] != "ready":
            continue
        conn = http.client.HTTPConnection("127.0.0.1", r["port"], timeout=10)
        conn.request("GET", "/nbscale/stats", headers={"Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        out[r["id"]] = json.loads(resp.read())["requests_total"]
        conn.close()
    return out


def test_a_direct_endpoint_of_two_replicas_is_served_by_both_with_no_hop(cleanup):
    # Given an endpoint fixed at two replicas, deployed with direct
    model = mlp()
    ep = deploy(model, name="both", replicas=(2, 2), options={"direct": True})
    token = (endpoint_dir("both") / "token").read_text().strip()
    # Then both replicas serve the endpoint's socket, and the router proxies nothing
    wait_for(lambda: _serving(ep) == "replicas", 30, interval=0.05, what="both serving")
    reps = ep.metrics()["replica_list"]
    assert len(reps) == 2 and all(r["serves_socket"] for r in reps), reps
    x = np.ones((3, 64), np.float32)
    assert _request(ep, "POST", "/v2/models/both/infer", _infer_body(x))[0] == 401

    def one_call(_):
        status, body = _request(ep, "POST", "/v2/models/both/infer", _infer_body(x), token)
        assert status == 200, body
        return np.asarray(json.loads(body)["outputs"][0]["data"], np.float32).reshape(3, 10)

    # When clients open new connections, Then the kernel hands them to both replicas
    sent = 0

    def both_served() -> bool:
        nonlocal sent
        with ThreadPoolExecutor(4) as pool:
            for out in pool.map(one_call, range(8)):
                np.testing.assert_allclose(out, forward(model, x), rtol=1e-5, atol=1e-6)
        sent += 8
        counts = _served_by(ep, token)
        return len(counts) == 2 and all(counts.values())

    wait_for(both_served, 60, interval=0, what="both replicas serving connections")
    # And the endpoint's figures are the replicas' together: every request once
    counts = _served_by(ep, token)
    assert sum(counts.values()) == sent, (counts, sent)
    stats = ep.metrics()
    assert stats["serving"] == "replicas" and stats["requests_total"] == sent
    status, text = _request(ep, "GET", "/metrics", token=token)
    assert status == 200
    served = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.decode().splitlines()
        if line.startswith("nbscale_requests_total{") and 'code="200"' in line
    )
    assert served == sent
    # When one replica is killed, Then the other goes on answering new connections, and a
    # new replica joins it on the socket
    victim = reps[0]
    os.kill(victim["pid"], signal.SIGKILL)
    for _ in range(10):
        one_call(None)

    def survivor_and_new_one() -> bool:
        pids = [r["pid"] for r in ep.metrics()["replica_list"] if r["serves_socket"]]
        return len(pids) == 2 and victim["pid"] not in pids and reps[1]["pid"] in pids

    wait_for(survivor_and_new_one, 60, what="a new replica serving beside the survivor")
    assert ep.metrics()["restarts"] >= 1
    port = int(ep.url.rsplit(":", 1)[1])
    ep.delete()
    assert port_free(port)


def test_a_replica_killed_under_nbscale_clients_of_a_default_endpoint_loses_none_of_theirs(
    cleanup,
):
    # Given an endpoint fixed at two replicas, deployed with nothing said about the hop (both
    # serve the socket), called by three of nbscale's clients all along
    model = mlp()
    ep = deploy(model, name="steady", replicas=(2, 2))
    wait_for(lambda: _serving(ep) == "replicas", 30, interval=0.05, what="both serving")
    victim = ep.metrics()["replica_list"][0]
    x = np.ones((1, 64), np.float32)
    clients = Clients("steady", x, 3)
    try:
        clients.wait(30, "requests flowing")
        # When one replica is SIGKILLed under them
        os.kill(victim["pid"], signal.SIGKILL)
        clients.wait(30, "requests after the kill")

        # Then a replacement joins the survivor on the socket
        def replaced() -> bool:
            pids = [r["pid"] for r in ep.metrics()["replica_list"] if r["serves_socket"]]
            return len(pids) == 2 and victim["pid"] not in pids

        wait_for(replaced, 60, interval=0.1, what="a replacement serving the socket")
        clients.wait(30, "requests to both again")
    finally:
        errors = clients.close()
    # And no request of theirs was lost: a connection the dead replica held was retried once
    # by the client, on a new connection that a live replica took
    _none_lost(errors, clients.results, model, x)


def test_a_direct_endpoint_scales_down_and_up_without_losing_a_request(cleanup):
    # Given a direct endpoint of two replicas, called by two clients all along
    model = mlp()
    ep = deploy(model, name="tide", replicas=(2, 2), options={"direct": True})
    wait_for(lambda: _serving(ep) == "replicas", 30, interval=0.05, what="both serving")
    x = np.ones((1, 64), np.float32)
    clients = Clients("tide", x, 2)
    try:
        clients.wait(20, "requests flowing")
        # When it scales down to one, Then the one leaving gives the socket back and the other
        # serves on, without the router stepping in
        kept = ep.metrics()["replica_list"]
        ep.scale(1, 1)
        wait_for(lambda: _serving(ep) == "replica", 60, interval=0.05, what="one left serving")
        [rep] = [r for r in ep.metrics()["replica_list"] if r["serves_socket"]]
        assert rep["pid"] in [r["pid"] for r in kept]
        clients.wait(20, "requests to the one left")
        # When it scales up to two again, Then the socket is not taken back from the one
        # serving it: the new replica joins it
        scaled_up = time.time()
        ep.scale(2, 2)
        wait_for(lambda: _serving(ep) == "replicas", 60, interval=0.05, what="two serving again")
        taken_back = get_store().query(
            "SELECT data FROM events WHERE kind = 'endpoint' AND ref = 'tide' AND type = "
            "'proxying' AND time >= ?",
            (scaled_up,),
        )
        assert not taken_back, [row["data"] for row in taken_back]
        assert rep["pid"] in [r["pid"] for r in ep.metrics()["replica_list"] if r["serves_socket"]]
        clients.wait(20, "requests to both")
    finally:
        errors = clients.close()
    # And no request was lost in any of it
    _none_lost(errors, clients.results, model, x)


def test_a_direct_autoscaling_endpoint_spreads_kept_connections_over_the_replica_it_adds(
    cleanup, tmp_path
):
    # Given a direct endpoint of 1 to 2 replicas of a 50 ms model, scaling at one in flight
    ep, model = deploy_elastic(tmp_path / "art", "spread", (1, 2), direct=True)
    token = (endpoint_dir("spread") / "token").read_text().strip()
    x = np.ones((1, 64), np.float32)
    light = Clients("spread", x, 1)
    heavy = None
    errors: list[Exception] = []
    try:
        light.wait(10, "requests to the lone replica")
        # When three more clients connect to the lone replica and keep their connections,
        # Then it scales up, and the new replica joins it on the socket
        heavy = Clients("spread", x, 3)
        heavy.wait(10, "the heavy clients' requests")
        wait_for(lambda: _serving(ep) == "replicas", 60, interval=0.1, what="two serving")
        # And the replica serving first lets its connections go, so that the kernel hands
        # some of them to the new one: both serve clients that were connected before it came
        before = _served_by(ep, token)

        def both_busier() -> bool:
            now = _served_by(ep, token)
            return len(now) == 2 and all(now[i] >= before.get(i, 0) + 5 for i in now)

        wait_for(both_busier, 30, interval=0.2, what="both replicas serving kept clients")
        # When the router is killed, Then its successor adopts both, and both go on serving
        router = ep.metrics()["router_pid"]
        os.kill(router, signal.SIGKILL)
        wait_for(
            lambda: ep.metrics()["router_pid"] != router, 30, interval=0.1, what="a new router"
        )
        light.wait(10, "requests while the router was replaced")
        m = ep.metrics()
        assert m["serving"] == "replicas" and m["replicas"]["current"] == 2, m["serving"]
        # When the load falls back to one client, Then one replica is left, serving alone
        errors += heavy.close()
        heavy = None
        wait_for(lambda: ep.metrics()["replicas"]["current"] == 1, 60, what="scale down")
        wait_for(lambda: _serving(ep) == "replica", 30, interval=0.05, what="one serving")
        light.wait(10, "requests to the one left")
    finally:
        if heavy is not None:
            errors += heavy.close()
        errors += light.close()
    # And no request was lost in any of it
    _none_lost(errors, light.results, model, x)
