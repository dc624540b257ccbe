"""Local endpoints end to end: detached router and replicas, autoscaling, restarts, CLI, magics."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import numpy as np
import psutil
import pytest

from nbscale.backends.local.endpoints import ENDPOINT_ENV, endpoint_dir, port_free
from nbscale.backends.local.processes import tagged_processes
from nbscale.endpoints import deploy, endpoint, endpoints
from nbscale.errors import Conflict, NotFound, SpecError
from nbscale.serving.artifact import sign
from nbscale.serving.capture import read_capture
from tests.support import wait_for
from tests.support.serving import deploy_elastic, forward, make_artifact, mlp


def endpoint_processes(name: str) -> list[psutil.Process]:
    return tagged_processes(ENDPOINT_ENV, name)


@pytest.fixture
def cleanup():
    """Undeploy whatever a test left running, so no process outlives it."""
    yield
    for ep in endpoints():
        ep.delete()


def test_deploy_predict_list_and_undeploy_leave_nothing_behind(cleanup, nbscale_cli):
    # Given a model in the notebook
    model = mlp()
    x = np.random.default_rng(0).random((5, 64), dtype=np.float32)
    # When it is deployed
    ep = deploy(model, name="digits", replicas=(1, 2))
    # Then it predicts what the model computes, over HTTP on loopback
    assert ep.url.startswith("http://127.0.0.1:")
    np.testing.assert_allclose(ep.predict(x), forward(model, x), rtol=1e-5, atol=1e-6)
    assert ep.predict(x[0]).shape == (10,)
    d = ep.to_dict()
    assert d["name"] == "digits" and d["backend"] == "local" and d["status"] == "READY"
    assert d["replicas"] == {"current": 1, "min": 1, "max": 2}
    # And the token is in a 0600 file, not in the store
    token_file = endpoint_dir("digits") / "token"
    assert oct(token_file.stat().st_mode & 0o777) == "0o600"
    from nbscale import paths

    assert token_file.read_text().strip().encode() not in paths.db_path().read_bytes()
    # And the CLI sees it and predicts with it
    listed = json.loads(nbscale_cli("endpoints", "--json", check=True).stdout)
    assert [e["name"] for e in listed] == ["digits"] and listed[0]["url"] == ep.url
    table = nbscale_cli("endpoints", check=True).stdout
    assert "digits" in table and "READY" in table
    out = nbscale_cli("predict", "digits", "--json", json.dumps(x[:2].tolist()), check=True).stdout
    np.testing.assert_allclose(
        np.asarray(json.loads(out)), forward(model, x[:2]), rtol=1e-5, atol=1e-5
    )
    # And metrics report latency, throughput and replicas
    m = ep.metrics()
    assert m["requests_total"] >= 3 and m["p50_ms"] > 0 and m["p99_ms"] >= m["p50_ms"]
    assert m["replicas"]["current"] == 1 and m["error_rate"] == 0.0 and "series" in m
    # When it is undeployed from the CLI
    port = ep.record.port
    assert endpoint_processes("digits")
    nbscale_cli("undeploy", "digits", check=True)
    # Then no process is left, the port is free and the name is gone
    assert endpoint_processes("digits") == []
    assert port_free(port)
    with pytest.raises(NotFound):
        endpoint("digits")
    assert not token_file.exists()


def test_the_endpoint_is_authenticated(cleanup):
    import http.client

    ep = deploy(mlp(), name="secure")
    conn = http.client.HTTPConnection("127.0.0.1", ep.record.port, timeout=10)
    body = json.dumps(
        {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0] * 64}]}
    )
    for path, method, data in [
        ("/v2/models/secure/infer", "POST", body),
        ("/nbscale/stats", "GET", None),
        ("/metrics", "GET", None),
        ("/nbscale/scale", "POST", '{"min":0,"max":5}'),
    ]:
        conn.request(method, path, body=data)
        resp = conn.getresponse()
        assert resp.status == 401, path
        resp.read()
    conn.request("GET", "/v2/health/ready")
    assert conn.getresponse().status == 200
    conn.close()


def test_a_killed_replica_is_replaced(cleanup):
    ep = deploy(mlp(), name="sturdy")
    old = ep.metrics()["replica_list"][0]["pid"]
    os.kill(old, signal.SIGKILL)

    def replaced():
        reps = ep.metrics()["replica_list"]
        return [r for r in reps if r["pid"] != old and r["state"] == "ready"]

    wait_for(replaced, 60, interval=0.2, what="a new replica")
    assert ep.predict(np.zeros((1, 64), np.float32)).shape == (1, 10)
    assert ep.metrics()["restarts"] >= 1


def test_scales_up_under_load_and_down_when_idle(cleanup, tmp_path):
    # Given a 50 ms model, one request per batch, scaling at 1 request in flight per replica
    ep, _ = deploy_elastic(tmp_path / "art", "busy", (1, 3))
    stop = threading.Event()

    def hammer():
        client = endpoint("busy")
        while not stop.is_set():
            client.predict(np.zeros((1, 64), np.float32))
        client.close()

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        # When load holds several requests in flight, Then replicas are added
        wait_for(
            lambda: ep.metrics()["replicas"]["current"] >= 2, 60, interval=0.2, what="scale up"
        )
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    # When the load stops, Then it scales back to the minimum
    wait_for(lambda: ep.metrics()["replicas"]["current"] == 1, 60, interval=0.2, what="scale down")
    # And the stopped replicas' processes are gone: supervisor, router, the zygote the router
    # forks replicas from, and one replica remain
    wait_for(lambda: len(endpoint_processes("busy")) == 4, 30, what="stopped replicas exit")


def _replica_states(name: str) -> list[str]:
    zygote = endpoint(name).metrics()["zygote_pid"]
    return [
        p.status()
        for p in endpoint_processes(name)
        if "nbscale.backends.local.router" not in " ".join(p.cmdline()) and p.pid != zygote
    ]


def test_scale_to_zero_keeps_a_stopped_standby_that_the_next_request_wakes(cleanup):
    model = mlp()
    ep = deploy(model, name="sleepy", replicas=(0, 1), idle_timeout_s=1)
    # Given an endpoint deployed with MIN 0: no replica runs, one is loaded and stopped
    assert ep.to_dict()["replicas"]["current"] == 0
    assert _replica_states("sleepy") == [psutil.STATUS_STOPPED]
    # When the first request comes, Then the standby is woken (not started) and answers
    x = np.ones((1, 64), np.float32)
    np.testing.assert_allclose(ep.predict(x), forward(model, x), rtol=1e-5, atol=1e-6)
    m = ep.metrics()
    assert [c["how"] for c in m["cold_starts"]] == ["resumed"] and m["cold_starts"][0][
        "seconds"
    ] >= 0
    assert m["replicas"]["current"] == 1 and m["replicas"]["standby"] == 0
    assert _replica_states("sleepy") != [psutil.STATUS_STOPPED]
    # And after the idle timeout no replica runs: the one left is stopped again
    wait_for(
        lambda: ep.metrics()["replicas"]["current"] == 0, 30, interval=0.2, what="scale to zero"
    )
    assert _replica_states("sleepy") == [psutil.STATUS_STOPPED]
    assert ep.refresh().status == "SCALED_TO_ZERO"
    # And a standby that died is replaced by a fresh one, which the next request can use
    os.kill(endpoint_processes_by_state("sleepy", psutil.STATUS_STOPPED)[0].pid, signal.SIGKILL)
    np.testing.assert_allclose(ep.predict(x), forward(model, x), rtol=1e-5, atol=1e-6)


def endpoint_processes_by_state(name: str, state: str) -> list[psutil.Process]:
    return [p for p in endpoint_processes(name) if p.status() == state]


def test_scale_changes_the_range(cleanup):
    ep = deploy(mlp(), name="elastic", replicas=(1, 1))
    ep.scale(2, 3)
    wait_for(lambda: ep.metrics()["replicas"]["ready"] == 2, 60, interval=0.2, what="two replicas")
    assert ep.to_dict()["replicas"]["min"] == 2 and ep.to_dict()["replicas"]["max"] == 3
    with pytest.raises(SpecError, match="MIN <= MAX"):
        ep.scale(3, 1)


def test_bad_deploys_say_what_is_wrong(cleanup):
    with pytest.raises(SpecError, match="not a valid endpoint name"):
        deploy(mlp(), name="Bad Name")
    with pytest.raises(SpecError, match="MIN <= MAX"):
        deploy(mlp(), name="x", replicas=(2, 1))
    with pytest.raises(SpecError, match="neither a torch.nn.Module"):
        deploy(object(), name="x")
    with pytest.raises(SpecError, match="is not a directory"):
        deploy("/no/such/dir", name="x")
    with pytest.raises(NotFound, match="no endpoint 'nope'"):
        endpoint("nope")
    ep = deploy(mlp(), name="taken")
    with pytest.raises(Conflict, match="exists"):
        deploy(mlp(), name="taken")
    with pytest.raises(Conflict, match="in use"):
        deploy(mlp(), name="other", port=ep.record.port)
    assert not (endpoint_dir("other") / "models").exists() or not any(
        (endpoint_dir("other") / "models").iterdir()
    )
    assert ep.predict(np.zeros((1, 64), np.float32)).shape == (
        1,
        10,
    )  # the refused deploys left it alone
    with pytest.raises(SpecError, match="shape"):
        ep.predict(np.zeros((1, 3), np.float32))
    assert [e.name for e in endpoints()] == ["taken"]


def test_a_model_that_fails_to_load_fails_the_deploy_with_its_error(cleanup, tmp_path):
    from nbscale.errors import BackendUnavailable

    model_dir, _ = make_artifact(tmp_path / "art", name="broken")
    code = model_dir / "code" / "inference.py"
    code.write_text(
        code.read_text()
        + "\n\ndef model_fn(model_dir):\n    raise RuntimeError('weights are corrupt')\n"
    )
    sign(model_dir)
    with pytest.raises(BackendUnavailable, match="weights are corrupt"):
        deploy(str(model_dir), name="broken")
    assert endpoints() == [] and endpoint_processes("broken") == []


def test_the_cli_reports_errors_in_one_line(nbscale_cli, tmp_path):
    res = nbscale_cli("predict", "ghost", "--json", "[[1]]")
    assert (
        res.returncode == 1
        and "no endpoint 'ghost'" in res.stderr
        and "Traceback" not in res.stderr
    )
    res = nbscale_cli("deploy", str(tmp_path), "--name", "x", "--replicas", "a:b")
    assert res.returncode == 2 and "MIN:MAX" in res.stderr


def test_a_dead_router_is_restarted_on_the_same_port(cleanup):
    ep = deploy(mlp(), name="phoenix")
    port, pid = ep.record.port, ep.record.pid
    os.kill(pid, signal.SIGKILL)
    wait_for(
        lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
        10,
    )
    assert endpoint("phoenix").to_dict()["status"] == "DOWN"
    rec = ep.refresh()
    assert rec.pid != pid and rec.port == port and rec.status == "READY"
    assert ep.predict(np.zeros((1, 64), np.float32)).shape == (1, 10)


def test_magics_deploy_list_and_undeploy(cleanup):
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    try:
        shell.run_line_magic("load_ext", "nbscale.magics")
        shell.user_ns["model"] = mlp()
        ep = shell.run_line_magic(
            "deploy", "model --name magic --max-batch-size 8 --capture-rate 1"
        )
        assert ep.name == "magic" and ep.to_dict()["max_batch_size"] == 8
        x = np.full((1, 64), 0.5, np.float32)
        ep.predict(x)
        captured = wait_for(
            lambda: read_capture(endpoint_dir("magic") / "capture"), 10, what="captured request"
        )
        np.testing.assert_allclose(captured[0]["inputs"]["input"], x)
        table = shell.run_line_magic("endpoints", "")._repr_mimebundle_()
        assert "magic" in table["text/plain"] and "<table>" in table["text/html"]
        shell.run_line_magic("undeploy", "magic")
        assert endpoints() == [] and endpoint_processes("magic") == []
        with pytest.raises(SpecError, match="neither a variable"):
            shell.run_line_magic("deploy", "missing --name m")
    finally:
        InteractiveShell.clear_instance()


class Load:
    """Client threads sending predictions over fresh HTTP/1.1 connections, recording each outcome."""

    def __init__(self, port: int, name: str, threads: int = 3):
        from nbscale.backends.local.endpoints import token_for

        self.port, self.name = port, name
        self.headers = {"Authorization": f"Bearer {token_for(name)}"}
        self.body = json.dumps(
            {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0] * 64}]}
        )
        self.results: list[tuple[float, float, int | str]] = []  # (start, end, status or error)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        import http.client

        conn = None
        while not self.stop.is_set():
            start = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                conn.request("POST", f"/v2/models/{self.name}/infer", self.body, self.headers)
                resp = conn.getresponse()
                resp.read()
                outcome: int | str = resp.status
            except (OSError, http.client.HTTPException) as exc:
                outcome = type(exc).__name__
                conn.close()
                conn = None
            self.results.append((start, time.monotonic(), outcome))
        if conn is not None:
            conn.close()

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def served_after(self, t: float) -> int:
        return sum(1 for s, _, o in self.results if s >= t and o == 200)

    def failed_after(self, t: float) -> list:
        return [r for r in self.results if r[0] >= t and r[2] != 200]


def _answers_infer(port: int, name: str) -> bool:
    import http.client

    load = Load(port, name, threads=0)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", f"/v2/models/{name}/infer", load.body, load.headers)
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except (OSError, http.client.HTTPException):
        return False


def test_a_router_killed_under_load_is_back_on_its_port_by_itself(cleanup):
    # Given an endpoint under load from three clients
    ep = deploy(mlp(), name="phoenix-load")
    port, supervisor = ep.record.port, ep.record.pid
    stats = ep.metrics()
    router, replicas = stats["router_pid"], {r["pid"] for r in stats["replica_list"]}
    with Load(port, "phoenix-load") as load:
        wait_for(lambda: load.served_after(0) >= 20, 30, what="load running")
        # When the router is killed with SIGKILL
        killed_at = time.monotonic()
        os.kill(router, signal.SIGKILL)
        # Then, with no request to the store and no CLI call, a new router answers on the same port
        wait_for(
            lambda: _answers_infer(port, "phoenix-load"), 30, interval=0.01, what="router back"
        )
        back = time.monotonic()
        wait_for(lambda: load.served_after(back) >= 50, 30, what="load served again")
    print(f"router back {back - killed_at:.2f} s after SIGKILL")
    # And no request that started after it was back failed
    assert load.failed_after(back) == []
    # And the supervisor kept the port, started a new router and that router adopted the replicas
    stats = ep.metrics()
    assert stats["router_pid"] != router and ep.refresh().pid == supervisor
    assert {r["pid"] for r in stats["replica_list"]} == replicas
    # (a lone replica serves the socket itself, so the load may be served again before the new
    # router has finished adopting it: READY follows within moments)
    wait_for(lambda: ep.refresh().status == "READY", 30, what="READY after the adoption")
    assert ep.record.port == port


def test_a_replica_killed_under_load_loses_no_request(cleanup):
    # Given two replicas under load, behind the router (--proxy: the router retries)
    ep = deploy(mlp(), name="sturdy-load", replicas=(2, 2), options={"direct": False})
    wait_for(lambda: ep.metrics()["replicas"]["ready"] == 2, 60, interval=0.2, what="two replicas")
    victim = ep.metrics()["replica_list"][0]["pid"]
    with Load(ep.record.port, "sturdy-load") as load:
        wait_for(lambda: load.served_after(0) >= 20, 30, what="load running")
        # When one replica is killed with SIGKILL
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(lambda: load.served_after(killed_at) >= 100, 60, what="load after the kill")

        # Then a replacement comes up
        def replaced():
            reps = ep.metrics()["replica_list"]
            return sum(1 for r in reps if r["pid"] != victim and r["state"] == "ready") == 2

        wait_for(replaced, 60, interval=0.2, what="a replacement replica")
    # And every request was answered: those on the dead replica were retried on the other
    assert [r for r in load.results if r[2] != 200] == []


def test_undeploy_stops_only_this_homes_endpoint_of_that_name(cleanup, tmp_path, monkeypatch):
    # Given two nbscale homes, each with an endpoint called "twin"
    model = mlp()
    x = np.random.default_rng(1).random((2, 64), dtype=np.float32)
    first = deploy(model, name="twin", replicas=(1, 1))
    first_home = os.environ["NBSCALE_HOME"]
    monkeypatch.setenv("NBSCALE_HOME", str(tmp_path / "other-home"))
    second = deploy(model, name="twin", replicas=(1, 1))
    assert second.url != first.url
    # When the second home undeploys its "twin"
    second.delete()
    # Then the first home's "twin" still answers, with every one of its processes alive
    monkeypatch.setenv("NBSCALE_HOME", first_home)
    np.testing.assert_allclose(first.predict(x), forward(model, x), rtol=1e-5, atol=1e-6)
    assert len(endpoint_processes("twin")) >= 2  # its router and replica (and supervisor)
