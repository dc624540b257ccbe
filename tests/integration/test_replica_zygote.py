"""Replicas forked from the router's zygote: what they must not inherit, what they still check,
and that the zygote never outlives its endpoint."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from nbscale.backends.local.endpoints import ENDPOINT_ENV
from nbscale.backends.local.processes import tagged_processes
from nbscale.endpoints import deploy, endpoints
from nbscale.serving.zygote import Zygote
from tests.support import wait_for
from tests.support.serving import forward, make_artifact, mlp


@pytest.fixture
def cleanup():
    yield
    for ep in endpoints():
        ep.delete()


@pytest.fixture
def zygote(tmp_path):
    z = Zygote(tmp_path / "zygote.log", dict(os.environ))
    assert z.wait_ready(120), (tmp_path / "zygote.log").read_text()
    yield z
    z.close()


def _replica_args(model_dir: Path, tmp: Path, name: str) -> list[str]:
    token = tmp / "token"
    token.write_text("secret-token")
    return [
        "--model-dir",
        str(model_dir),
        "--port",
        "0",
        "--port-file",
        str(tmp / f"{name}.port"),
        "--token-file",
        str(token),
    ]


def _socket_inodes(pid: int) -> set[str]:
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            found.add(target)
    return found


def test_a_forked_replica_refuses_a_tampered_artifact(tmp_path, zygote):
    # Given a signed artifact whose weights were swapped after signing
    model_dir, _ = make_artifact(tmp_path / "art")
    (model_dir / "model.pt2").write_bytes((model_dir / "model.pt2").read_bytes() + b"\0")
    # When the zygote forks a replica for it
    log = tmp_path / "replica.log"
    proc = zygote.spawn(_replica_args(model_dir, tmp_path, "r"), dict(os.environ), log)
    # Then the replica checks the signature itself, refuses, and exits non-zero without serving
    assert proc.wait(60) != 0
    text = log.read_text()
    assert "model.pt2" in text and "changed" in text.lower(), text
    assert not (tmp_path / "r.port").exists()


def test_a_forked_replica_serves_with_its_own_environment_and_none_of_the_zygotes_sockets(
    tmp_path, zygote
):
    model_dir, model = make_artifact(tmp_path / "art")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = zygote.spawn(_replica_args(model_dir, tmp_path, "r"), env, tmp_path / "replica.log")
    try:
        wait_for(lambda: (tmp_path / "r.port").exists(), 60, what="the port file")
        port = int((tmp_path / "r.port").read_text())
        import http.client

        def ready() -> bool:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/v2/health/ready")
            return conn.getresponse().status == 200

        wait_for(ready, 60, what="ready")
        # It answers with the model's numbers, and only with its token
        x = np.ones((1, 64), np.float32)
        body = json.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [1, 64],
                        "datatype": "FP32",
                        "data": x.ravel().tolist(),
                    }
                ]
            }
        )
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("POST", "/v2/models/digits/infer", body, {"Authorization": "Bearer nope"})
        assert conn.getresponse().status == 401
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request(
            "POST", "/v2/models/digits/infer", body, {"Authorization": "Bearer secret-token"}
        )
        resp = conn.getresponse()
        assert resp.status == 200
        out = np.asarray(json.loads(resp.read())["outputs"][0]["data"], np.float32)
        np.testing.assert_allclose(out, forward(model, x).ravel(), rtol=1e-5, atol=1e-6)
        # It is the zygote's child, not a new interpreter
        assert psutil.Process(proc.pid).ppid() == zygote.proc.pid
        # And it holds none of the zygote's sockets: only its own listener and connections
        assert not _socket_inodes(proc.pid) & _socket_inodes(zygote.proc.pid)
        # And the zygote is still a single thread after forking
        assert psutil.Process(zygote.proc.pid).num_threads() == 1
    finally:
        proc.terminate()
        assert proc.wait(30) == 0  # a clean SIGTERM shutdown, reported by the zygote


def test_a_zygote_with_threads_refuses_to_start(tmp_path):
    # Given a zygote whose BLAS was allowed a thread pool (a fork would copy its locks)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(
        [sys.executable, "-m", "nbscale.serving.zygote", str(theirs.fileno()), str(os.getpid())],
        pass_fds=(theirs.fileno(),),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    theirs.close()
    ours.close()
    if os.cpu_count() == 1:
        pytest.skip("one CPU: OpenBLAS starts no pool")
    # Then it says why and exits, so the router starts replicas afresh instead
    assert proc.returncode == 1 and "threads" in proc.stderr, proc.stderr


def test_the_zygote_dies_with_the_process_that_started_it(tmp_path):
    # Given a process that started a zygote (as the router does) and is then SIGKILLed
    script = (
        "import os, sys, time\n"
        "from pathlib import Path\n"
        "from nbscale.serving.zygote import Zygote\n"
        f"z = Zygote(Path({str(tmp_path / 'z.log')!r}), dict(os.environ))\n"
        "assert z.wait_ready(120)\n"
        "print(z.proc.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        zpid = int(parent.stdout.readline())
        zygote = psutil.Process(zpid)
        assert zygote.is_running()
        parent.kill()
        parent.wait()
        # Then the zygote goes too: nothing is left holding torch's memory
        wait_for(
            lambda: not zygote.is_running() or zygote.status() == psutil.STATUS_ZOMBIE,
            10,
            what="the zygote exits",
        )
    finally:
        if parent.poll() is None:
            parent.kill()


def test_endpoint_replicas_come_from_the_zygote_and_no_request_is_lost_while_one_restarts(cleanup):
    model = mlp()
    ep = deploy(model, name="forked", replicas=(1, 2))
    m = ep.metrics()
    zygote = m["zygote_pid"]
    assert zygote and [r["started_by"] for r in m["replica_list"]] == ["zygote"]
    first = m["replica_list"][0]["pid"]
    assert psutil.Process(first).ppid() == zygote
    # Given a client sending requests one after another
    x = np.ones((1, 64), np.float32)
    expected = forward(model, x)
    stop = threading.Event()
    results: list[object] = []

    def client():
        from nbscale.endpoints import endpoint

        c = endpoint("forked")  # a client of its own: one HTTP connection is not for two threads
        while not stop.is_set():
            try:
                results.append(c.predict(x))
            except Exception as exc:  # noqa: BLE001 - recorded: the test fails on any
                results.append(exc)
        c.close()

    t = threading.Thread(target=client)
    t.start()
    try:
        wait_for(lambda: len(results) > 20, 30, what="requests flowing")
        # When its only replica is killed with SIGKILL
        os.kill(first, signal.SIGKILL)
        # Then a new one is forked from the same zygote and serves
        wait_for(
            lambda: any(
                r["pid"] != first and r["state"] == "ready" for r in ep.metrics()["replica_list"]
            ),
            60,
            interval=0.05,
            what="a replacement replica",
        )
        n = len(results)
        wait_for(lambda: len(results) > n + 20, 30, what="requests after the restart")
    finally:
        stop.set()
        t.join(60)
    # And no request was lost meanwhile: every one answered with the model's numbers
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, errors[:3]
    for r in results[-5:]:
        np.testing.assert_allclose(r, expected, rtol=1e-5, atol=1e-6)
    m = ep.metrics()
    assert all(r["started_by"] == "zygote" for r in m["replica_list"])
    assert m["zygote_pid"] == zygote
    # When it is scaled up, Then the new replica is forked too
    ep.scale(2, 2)
    wait_for(lambda: ep.metrics()["replicas"]["ready"] == 2, 60, interval=0.05, what="scale up")
    assert [r["started_by"] for r in ep.metrics()["replica_list"]] == ["zygote", "zygote"]
    # When the endpoint is undeployed, Then the zygote and every replica are gone
    pids = [zygote, *(r["pid"] for r in ep.metrics()["replica_list"])]
    ep.delete()
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert tagged_processes(ENDPOINT_ENV, "forked") == []


def test_a_standby_killed_while_scaled_to_zero_is_replaced_by_a_forked_one(cleanup):
    model = mlp()
    ep = deploy(model, name="sleeper", replicas=(0, 1), idle_timeout_s=1)
    zygote = ep.metrics()["zygote_pid"]
    standby = next(r for r in ep.metrics()["replica_list"] if r["state"] == "paused")
    # Given the standby is gone (SIGKILL), When a request comes
    os.kill(standby["pid"], signal.SIGKILL)
    time.sleep(0.3)
    x = np.ones((1, 64), np.float32)
    np.testing.assert_allclose(ep.predict(x), forward(model, x), rtol=1e-5, atol=1e-6)
    # Then it was answered by a replica forked from the zygote
    reps = [r for r in ep.metrics()["replica_list"] if r["pid"] != standby["pid"]]
    assert reps and all(r["started_by"] == "zygote" for r in reps)
    assert all(psutil.Process(r["pid"]).ppid() == zygote for r in reps)


def test_with_the_zygote_turned_off_replicas_start_as_fresh_processes(cleanup, monkeypatch):
    monkeypatch.setenv("NBSCALE_ZYGOTE", "0")
    ep = deploy(mlp(), name="plain", replicas=(1, 1))
    m = ep.metrics()
    assert m["zygote_pid"] is None
    assert [r["started_by"] for r in m["replica_list"]] == ["fresh"]
    x = np.ones((1, 64), np.float32)
    assert ep.predict(x).shape == (1, 10)


def test_the_idle_ttl_stops_the_zygote_too_and_a_request_brings_both_back(cleanup):
    model = mlp()
    ep = deploy(model, name="napper", replicas=(1, 1), idle_ttl=2)
    zygote = ep.metrics()["zygote_pid"]
    assert zygote
    # When the endpoint has been idle for its TTL, Then no replica and no zygote is left
    wait_for(lambda: ep.refresh().status == "SCALED_TO_ZERO", 60, what="idle TTL")
    wait_for(
        lambda: (
            not psutil.pid_exists(zygote) or psutil.Process(zygote).status() == psutil.STATUS_ZOMBIE
        ),
        10,
        what="the zygote stopped",
    )
    assert ep.metrics()["zygote_pid"] is None
    # When a request comes, Then it is answered by a replica forked from a new zygote
    x = np.ones((1, 64), np.float32)
    np.testing.assert_allclose(ep.predict(x), forward(model, x), rtol=1e-5, atol=1e-6)
    m = ep.metrics()
    assert m["zygote_pid"] not in (None, zygote)
    assert [r["started_by"] for r in m["replica_list"]] == ["zygote"]
