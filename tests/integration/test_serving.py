"""The serving runtime as a real server in a subprocess: V2, SageMaker, batching, errors, auth."""

from __future__ import annotations

import http.client
import io
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from nbscale.serving.artifact import sign
from nbscale.serving.capture import read_capture
from tests.support import wait_for
from tests.support.emulators import free_port
from tests.support.serving import (
    AUTH,
    TOKEN,
    Server,
    forward,
    infer_body,
    make_artifact,
)


@pytest.fixture
def serve(tmp_path):
    started: list[Server] = []

    def start(model_dir: Path, *extra: str, env: dict | None = None, ready: bool = True) -> Server:
        server = Server(model_dir, tmp_path, *extra, env=env)
        started.append(server)
        return server.wait_ready() if ready else server

    yield start
    for server in started:
        server.stop()


def test_a_stock_v2_client_works_unchanged(tmp_path, serve):
    import tritonclient.http as triton

    # Given a packaged MLP served by the runtime
    model_dir, model = make_artifact(tmp_path / "art")
    server = serve(model_dir)
    x = np.random.default_rng(0).random((3, 64), dtype=np.float32)
    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    try:
        # Then health, readiness and metadata answer as the spec says
        assert client.is_server_live()
        assert client.is_model_ready("digits", headers=AUTH)
        meta = client.get_model_metadata("digits", headers=AUTH)
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
        assert meta["outputs"][0]["shape"] == [-1, 10]
        # When it infers with binary tensors (tritonclient's default) and with JSON
        for binary in (True, False):
            inp = triton.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            out = triton.InferRequestedOutput("output", binary_data=binary)
            result = client.infer(
                "digits", [inp], outputs=[out], request_id="req-7", headers=dict(AUTH)
            )  # tritonclient writes into the dict
            # Then the predictions equal the model's forward pass and the id is echoed
            np.testing.assert_allclose(
                result.as_numpy("output"), forward(model, x), rtol=1e-5, atol=1e-6
            )
            assert result.get_response()["id"] == "req-7"
    finally:
        client.close()


def test_every_route_but_health_needs_the_token(tmp_path, serve):
    server = serve(make_artifact(tmp_path / "art")[0])
    body = infer_body(np.zeros((1, 64), np.float32))
    for method, path, data in [
        ("POST", "/v2/models/digits/infer", body),
        ("GET", "/v2/models/digits", None),
        ("GET", "/metrics", None),
        ("POST", "/invocations", b"[[0]]"),
        ("GET", "/v2", None),
    ]:
        status, headers, resp = server.request(method, path, data)
        assert status == 401, path
        assert "token" in json.loads(resp)["error"]
        wrong = server.request(method, path, data, {"Authorization": "Bearer nope"})[0]
        assert wrong == 401, path
        # behind a gateway that takes Authorization for its own token, ours goes beside it
        gateway = {"Authorization": "Bearer a-dex-id-token", "X-Nbscale-Token": TOKEN}
        assert server.request(method, path, data, gateway)[0] in (200, 400, 415), path
        gateway["X-Nbscale-Token"] = "nope"
        assert server.request(method, path, data, gateway)[0] == 401, path
    for path in ("/v2/health/live", "/v2/health/ready", "/ping"):
        assert server.request("GET", path)[0] == 200, path


def test_sagemaker_ping_and_invocations_json_and_npy(tmp_path, serve):
    model_dir, model = make_artifact(tmp_path / "art")
    server = serve(model_dir)
    x = np.random.default_rng(1).random((4, 64), dtype=np.float32)
    assert server.request("GET", "/ping")[0] == 200
    status, headers, body = server.request(
        "POST",
        "/invocations",
        json.dumps(x.tolist()).encode(),
        {**AUTH, "Content-Type": "application/json"},
    )
    assert status == 200, body
    np.testing.assert_allclose(
        np.asarray(json.loads(body)), forward(model, x), rtol=1e-5, atol=1e-6
    )
    buf = io.BytesIO()
    np.save(buf, x)
    status, headers, body = server.request(
        "POST",
        "/invocations",
        buf.getvalue(),
        {**AUTH, "Content-Type": "application/x-npy", "Accept": "application/x-npy"},
    )
    assert status == 200 and headers["content-type"] == "application/x-npy"
    np.testing.assert_allclose(np.load(io.BytesIO(body)), forward(model, x), rtol=1e-5, atol=1e-6)


def test_bad_requests_get_a_clear_4xx_and_the_server_carries_on(tmp_path, serve):
    server = serve(make_artifact(tmp_path / "art")[0], "--max-body-mb", "0.01")
    ok = infer_body(np.zeros((1, 64), np.float32))
    cases = [
        ("/v2/models/digits/infer", b"{not json", 400, "not valid JSON"),
        (
            "/v2/models/digits/infer",
            infer_body(np.zeros((1, 63), np.float32)),
            400,
            "shape [1, 63]",
        ),
        (
            "/v2/models/digits/infer",
            infer_body(np.zeros((1, 64), np.float32), datatype="INT64"),
            400,
            "datatype",
        ),
        (
            "/v2/models/digits/infer",
            infer_body(np.zeros((1, 64), np.float32), name="x"),
            400,
            "unknown input 'x'",
        ),
        (
            "/v2/models/digits/infer",
            json.dumps(
                {
                    "inputs": [
                        {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [1, 2]}
                    ]
                }
            ).encode(),
            400,
            "2 values",
        ),
        ("/v2/models/digits/infer", json.dumps({"inputs": []}).encode(), 400, "non-empty 'inputs'"),
        ("/v2/models/other/infer", ok, 404, "unknown model 'other'"),
        (
            "/v2/models/digits/infer",
            infer_body(np.full((1, 64), 300), datatype="FP32").replace(b"300", b"1e300"),
            400,
            "out of range for FP32",
        ),
        ("/v2/models/digits/infer", b"[" + b"0," * 20000 + b"0]", 413, "at most"),
        ("/invocations", b"[[1, 2]]", 400, "shape [1, 2]"),
    ]
    for path, body, code, needle in cases:
        status, _, resp = server.request(
            "POST", path, body, {**AUTH, "Content-Type": "application/json"}
        )
        assert status == code, (path, resp)
        assert needle in json.loads(resp)["error"], resp
    status, _, resp = server.request(
        "POST", "/invocations", b"x", {**AUTH, "Content-Type": "text/csv"}
    )
    assert status == 415 and "application/x-npy" in json.loads(resp)["error"]
    # a chunked body is decoded (llhttp) and served like one with a Content-Length
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        half = len(ok) // 2
        s.sendall(
            b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            + f"Authorization: Bearer {TOKEN}\r\n\r\n".encode()
            + b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (half, ok[:half], len(ok) - half, ok[half:])
        )
        assert s.recv(65536).startswith(b"HTTP/1.1 200 ")
    assert server.request("POST", "/v2/models/digits/infer", ok, AUTH)[0] == 200


def _batch_hist(server: Server) -> tuple[float, float]:
    text = server.request("GET", "/metrics", headers=AUTH)[2].decode()
    values = {}
    for line in text.splitlines():
        for key in ("nbscale_batch_size_sum", "nbscale_batch_size_count"):
            if line.startswith(key + "{"):
                values[key] = float(line.rsplit(" ", 1)[1])
    return values["nbscale_batch_size_sum"], values["nbscale_batch_size_count"]


def _concurrently(n: int, fn) -> list:
    results: list = [None] * n
    barrier = threading.Barrier(n)

    def run(i):
        barrier.wait()
        results[i] = fn(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_concurrent_requests_are_batched_and_match_unbatched_results(tmp_path, serve):
    # Given a model whose forward takes 50 ms, so requests pile up while it runs
    model_dir, model = make_artifact(tmp_path / "art", slow=True)
    server = serve(model_dir, "--max-batch-size", "16", "--max-batch-delay-ms", "20")
    xs = np.random.default_rng(2).random((24, 64), dtype=np.float32)
    base_sum, base_count = _batch_hist(server)

    # When 24 callers send one row each at once
    def call(i):
        status, _, body = server.request(
            "POST", "/v2/models/digits/infer", infer_body(xs[i : i + 1], rid=str(i)), AUTH
        )
        assert status == 200, body
        data = json.loads(body)
        return data["id"], np.asarray(data["outputs"][0]["data"], np.float32).reshape(1, 10)

    results = _concurrently(24, call)
    # Then each caller gets its own row's prediction
    for i, (rid, out) in enumerate(results):
        assert rid == str(i)
        np.testing.assert_allclose(out, forward(model, xs[i : i + 1]), rtol=1e-5, atol=1e-6)
    # And the batch-size histogram shows batches larger than one
    rows, batches = _batch_hist(server)
    rows, batches = rows - base_sum, batches - base_count
    assert rows == 24
    assert batches < 24, f"{batches} batches for 24 rows: nothing was batched"


def test_overload_answers_503_with_retry_after_and_recovers(tmp_path, serve):
    model_dir, _ = make_artifact(tmp_path / "art", slow=True)
    server = serve(
        model_dir, "--max-queue", "2", "--max-batch-size", "1", env={"NBSCALE_TEST_SLOW_S": "0.3"}
    )
    body = infer_body(np.zeros((1, 64), np.float32))
    results = _concurrently(
        12, lambda i: server.request("POST", "/v2/models/digits/infer", body, AUTH)
    )
    codes = sorted(r[0] for r in results)
    assert 200 in codes and 503 in codes, codes
    refused = next(r for r in results if r[0] == 503)
    assert refused[1]["retry-after"] == "1" and "queue is full" in json.loads(refused[2])["error"]
    assert server.request("POST", "/v2/models/digits/infer", body, AUTH)[0] == 200
    assert server.proc.poll() is None


def test_ready_only_after_the_model_is_loaded(tmp_path, serve):
    model_dir, _ = make_artifact(tmp_path / "art")
    code = model_dir / "code" / "inference.py"
    code.write_text(
        code.read_text() + "\n_load = model_fn\n\n\ndef model_fn(model_dir):\n"
        "    import time\n    time.sleep(3)\n    return _load(model_dir)\n"
    )
    sign(model_dir)
    server = serve(model_dir, ready=False)
    wait_for(lambda: _answers(server, "/v2/health/live"), 30, what="live")
    assert server.request("GET", "/v2/health/ready")[0] == 503
    assert server.request("GET", "/ping")[0] == 503
    status, headers, body = server.request(
        "POST", "/v2/models/digits/infer", infer_body(np.zeros((1, 64), np.float32)), AUTH
    )
    assert status == 503 and "loading" in json.loads(body)["error"]
    server.wait_ready()
    assert (
        server.request(
            "POST", "/v2/models/digits/infer", infer_body(np.zeros((1, 64), np.float32)), AUTH
        )[0]
        == 200
    )


def _answers(server: Server, path: str) -> bool:
    try:
        return server.request("GET", path)[0] == 200
    except OSError:
        return False


def test_data_capture_writes_sampled_jsonl(tmp_path, serve):
    model_dir, model = make_artifact(tmp_path / "art")
    server = serve(model_dir, "--capture-dir", str(tmp_path / "cap"))
    x = np.random.default_rng(3).random((2, 64), dtype=np.float32)
    assert (
        server.request("POST", "/v2/models/digits/infer", infer_body(x, rid="c1"), AUTH)[0] == 200
    )
    lines = wait_for(
        lambda: read_capture(tmp_path / "cap") if (tmp_path / "cap").exists() else None,
        10,
        what="capture",
    )
    assert lines[0]["id"] == "c1" and lines[0]["model"] == "digits"
    np.testing.assert_allclose(lines[0]["inputs"]["input"], x, rtol=1e-6)
    np.testing.assert_allclose(
        lines[0]["outputs"]["output"], forward(model, x), rtol=1e-5, atol=1e-6
    )


def test_sagemaker_container_mode_serves_opt_ml_model_contract(tmp_path):
    # Given the command and environment SageMaker gives the container (loopback here, not 0.0.0.0)
    model_dir, model = make_artifact(tmp_path / "art")
    port = free_port()
    log = (tmp_path / "sm.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nbscale.serving",
            "serve",
            "--model-dir",
            str(model_dir),
            "--host",
            "127.0.0.1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "SAGEMAKER_BIND_TO_PORT": str(port)},
    )
    try:
        conn_ok = lambda: _get(port, "/ping") == 200  # noqa: E731
        wait_for(conn_ok, 60, what="/ping")
        # Then /invocations answers without a token: the platform authenticates callers
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        x = np.ones((2, 64), np.float32)
        conn.request(
            "POST", "/invocations", json.dumps(x.tolist()), {"Content-Type": "application/json"}
        )
        resp = conn.getresponse()
        assert resp.status == 200
        np.testing.assert_allclose(
            np.asarray(json.loads(resp.read())), forward(model, x), rtol=1e-5, atol=1e-6
        )
        conn.close()
    finally:
        proc.terminate()
        proc.wait(10)


def _get(port: int, path: str) -> int:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", path)
        status = conn.getresponse().status
        conn.close()
        return status
    except OSError:
        return 0


def test_outside_a_container_the_server_refuses_to_run_without_a_token(tmp_path):
    model_dir, _ = make_artifact(tmp_path / "art")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("SAGEMAKER_BIND_TO_PORT", "NBSCALE_SERVING_TOKEN")
    }
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "nbscale.serving",
            "--model-dir",
            str(model_dir),
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert res.returncode == 2 and "no token" in res.stderr
