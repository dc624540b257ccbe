"""HTTP conformance and hostile traffic against the real runtime and the real router.

The conformance table holds the request-smuggling and framing cases of RFC
9112 (and those of llhttp's and uvicorn's suites that apply to a server that
takes Content-Length and chunked bodies); each row is sent as raw bytes over
a socket to the serving runtime and to a deployed endpoint's router, and the
status codes that come back are compared with the expected ones.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket
import threading
import time

import httptools
import numpy as np
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nbscale.serving.artifact import sign
from nbscale.serving.protocol import DTYPES
from tests.support import wait_for
from tests.support.npy import npy_bytes, npy_header
from tests.support.serving import AUTH, TOKEN, Server, infer_body, make_artifact

LIMITS = (
    "--max-head-kb",
    "16",
    "--max-headers",
    "50",
    "--max-body-mb",
    "4",
    "--read-timeout",
    "2",
    "--keepalive-timeout",
    "2",
    "--max-connections",
    "1010",
    "--max-pipeline",
    "8",
)


FDS_NEEDED = 2400  # 1,100 connections on each side, plus what the processes hold


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    import resource

    # the connection tests hold ~1,100 sockets in this process and in the server (which inherits this)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < FDS_NEEDED and (hard == resource.RLIM_INFINITY or hard >= FDS_NEEDED):
        resource.setrlimit(resource.RLIMIT_NOFILE, (FDS_NEEDED, hard))
    tmp = tmp_path_factory.mktemp("http")
    model_dir, _ = make_artifact(tmp / "art")
    server = Server(model_dir, tmp, *LIMITS)
    try:
        yield server.wait_ready()
    finally:
        server.stop()


@pytest.fixture
def one_server(tmp_path):
    started: list[Server] = []

    def start(model_dir, *extra: str, env: dict | None = None) -> Server:
        server = Server(model_dir, tmp_path, *extra, env=env)
        started.append(server)
        return server.wait_ready()

    yield start
    for server in started:
        server.stop()


# -- raw HTTP -------------------------------------------------------------------------


class _Responses:
    def __init__(self):
        self.parser = httptools.HttpResponseParser(self)
        self.statuses: list[int] = []
        self.bodies: list[bytes] = []
        self._body = b""

    def on_headers_complete(self) -> None:
        self.statuses.append(self.parser.get_status_code())

    def on_body(self, data: bytes) -> None:
        self._body += data

    def on_message_complete(self) -> None:
        self.bodies.append(self._body)
        self._body = b""


def raw_exchange(port: int, data: bytes, expect: int, timeout: float = 10.0):
    """Send ``data``; read until ``expect`` responses came or the server closed. Returns (statuses, bodies, closed)."""
    got = _Responses()
    closed = False
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        # the server may answer and close before taking everything; its answer is read below
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(data)
        deadline = time.monotonic() + timeout
        while len(got.bodies) < expect and time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                closed = True
                break
            except TimeoutError:
                break
            if not chunk:
                closed = True
                break
            got.parser.feed_data(chunk)
    return got.statuses[: len(got.bodies)], got.bodies, closed


H = b"Host: x\r\n"
LIVE = b"GET /v2/health/live HTTP/1.1\r\n" + H


def _infer(model: str, extra: bytes, body: bytes, token: str = TOKEN) -> bytes:
    return (
        f"POST /v2/models/{model}/infer HTTP/1.1\r\n".encode()
        + H
        + f"Authorization: Bearer {token}\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )


def conformance_cases(model: str, token: str) -> list[tuple[str, bytes, list[int]]]:
    ok = infer_body(np.zeros((1, 64), np.float32))
    auth = f"Authorization: Bearer {token}\r\n".encode()
    post = b"POST /v2/models/" + model.encode() + b"/infer HTTP/1.1\r\n" + H + auth
    chunked = b"Transfer-Encoding: chunked\r\n\r\n"
    half = len(ok) // 2
    chunks = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (half, ok[:half], len(ok) - half, ok[half:])
    return [
        ("valid request", LIVE + b"\r\n", [200]),
        ("HTTP/1.0 without Host", b"GET /v2/health/live HTTP/1.0\r\n\r\n", [200]),
        ("two pipelined requests", LIVE + b"\r\n" + LIVE + b"\r\n", [200, 200]),
        (
            "Content-Length body",
            _infer(model, b"Content-Length: %d\r\n" % len(ok), ok, token),
            [200],
        ),
        ("chunked body", post + chunked + chunks, [200]),
        (
            "chunked body with extension",
            post + chunked + chunks.replace(b"\r\n", b";x=y\r\n", 1),
            [200],
        ),
        (
            "duplicate Content-Length, different",
            post + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            [400],
        ),
        (
            "duplicate Content-Length, same",
            post + b"Content-Length: 4\r\nContent-Length: 4\r\n\r\nabcd",
            [400],
        ),
        ("Content-Length list", post + b"Content-Length: 4, 4\r\n\r\nabcd", [400]),
        ("Content-Length +3", post + b"Content-Length: +3\r\n\r\nabc", [400]),
        ("Content-Length 1_0", post + b"Content-Length: 1_0\r\n\r\nabcdefghij", [400]),
        ("Content-Length -1", post + b"Content-Length: -1\r\n\r\n", [400]),
        ("Content-Length 0x3", post + b"Content-Length: 0x3\r\n\r\nabc", [400]),
        ("Content-Length 1 0", post + b"Content-Length: 1 0\r\n\r\nabcdefghij", [400]),
        (
            "Content-Length overflow",
            post + b"Content-Length: 99999999999999999999999\r\n\r\n",
            [400],
        ),
        ("space before colon", post + b"Content-Length : 3\r\n\r\nabc", [400]),
        ("tab before colon", post + b"Content-Length\t: 3\r\n\r\nabc", [400]),
        ("chunked and Content-Length", post + b"Content-Length: 3\r\n" + chunked + chunks, [400]),
        (
            "chunked, identity and Content-Length",
            post + b"Transfer-Encoding: chunked, identity\r\nContent-Length: 3\r\n\r\nabc",
            [400],
        ),
        (
            "Transfer-Encoding twice",
            post + b"Transfer-Encoding: chunked\r\n" + chunked + chunks,
            [400],
        ),
        ("Transfer-Encoding identity", post + b"Transfer-Encoding: identity\r\n\r\n", [501]),
        (
            "Transfer-Encoding gzip, chunked",
            post + b"Transfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            [501],
        ),
        ("bad chunk size", post + chunked + b"zz\r\nabc\r\n0\r\n\r\n", [400]),
        ("chunk size overflow", post + chunked + b"ffffffffffffffffff\r\nabc\r\n0\r\n\r\n", [400]),
        ("chunk lines without CR", post + chunked + b"3\nabc\n0\n\n", [400]),
        ("HTTP/1.9", b"GET /v2/health/live HTTP/1.9\r\n" + H + b"\r\n", [400]),
        ("HTTP/3.1", b"GET /v2/health/live HTTP/3.1\r\n" + H + b"\r\n", [400]),
        (
            "HTTP/2.0 in an HTTP/1 request line",
            b"GET /v2/health/live HTTP/2.0\r\n" + H + b"\r\n",
            [505],
        ),
        ("lower-case http", b"GET /v2/health/live http/1.1\r\n" + H + b"\r\n", [400]),
        ("no version (HTTP/0.9)", b"GET /v2/health/live\r\n" + H + b"\r\n", [400]),
        ("bare LF line ends", b"GET /v2/health/live HTTP/1.1\nHost: x\n\n", [400]),
        ("obsolete line folding", LIVE + b"X-A: a\r\n b\r\n\r\n", [400]),
        ("invalid method", b"G@T /v2/health/live HTTP/1.1\r\n" + H + b"\r\n", [400]),
        ("NUL in a header value", LIVE + b"X-A: a\x00b\r\n\r\n", [400]),
        ("CR inside a header value", LIVE + b"X-A: a\rb\r\n\r\n", [400]),
        ("space in the target", b"GET /v2/health live HTTP/1.1\r\n" + H + b"\r\n", [400]),
        (
            "whitespace before the first header",
            b"GET /v2/health/live HTTP/1.1\r\n Host: x\r\n\r\n",
            [400],
        ),
        ("empty header name", LIVE + b": x\r\n\r\n", [400]),
        ("HTTP/1.1 without Host", b"GET /v2/health/live HTTP/1.1\r\n\r\n", [400]),
        ("two Host headers", LIVE + b"Host: y\r\n\r\n", [400]),
        ("200 KB head in one write", LIVE + b"X-Big: " + b"a" * 200_000 + b"\r\n\r\n", [431]),
        ("200 KB of one header name, no end", LIVE + b"X" * 200_000, [431]),
        ("150 headers", LIVE + b"".join(b"X-%d: y\r\n" % i for i in range(150)) + b"\r\n", [431]),
        ("body over the limit", post + b"Content-Length: 104857600\r\n\r\n", [413]),
        ("chunked body over the limit", post + chunked + b"1100000\r\n" + b"a" * 0x1100000, [413]),
        ("valid, then garbage", LIVE + b"\r\nGARBAGE\r\n\r\n", [200, 400]),
        ("upgrade is not done", LIVE + b"Connection: upgrade\r\nUpgrade: websocket\r\n\r\n", [200]),
        ("unknown route without a token", b"GET /secret HTTP/1.1\r\n" + H + b"\r\n", [401]),
        (
            "unknown model without a token",
            b"POST /v2/models/zzz/infer HTTP/1.1\r\n" + H + b"Content-Length: 2\r\n\r\n{}",
            [401],
        ),
    ]


def _check_table(port: int, model: str, token: str = TOKEN) -> list[str]:
    wrong = []
    for name, data, expected in conformance_cases(model, token):
        statuses, _, _ = raw_exchange(port, data, len(expected))
        if statuses != expected:
            wrong.append(f"{name}: expected {expected}, got {statuses}")
    return wrong


def test_conformance_table_runtime(runtime):
    assert _check_table(runtime.port, "digits") == []
    assert runtime.request("GET", "/v2/health/ready")[0] == 200


def test_conformance_table_router(tmp_path):
    from nbscale.backends.local.endpoints import token_for
    from nbscale.endpoints import deploy, endpoints

    try:
        ep = deploy(str(make_artifact(tmp_path / "art", name="conform")[0]), name="conform")
        assert _check_table(ep.record.port, "conform", token_for("conform")) == []
        assert ep.predict(np.zeros((1, 64), np.float32)).shape == (1, 10)
    finally:
        for e in endpoints():
            e.delete()


# -- slow and idle clients, connection cap ------------------------------------------------


def test_a_head_sent_one_byte_at_a_time_is_cut_off_at_the_read_timeout(runtime):
    head = LIVE + b"X-Slow: " + b"s" * 200 + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", runtime.port), timeout=30) as s:
        sent = 0
        answer = b""
        for byte in head:
            try:
                s.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 1
            s.settimeout(0.1)
            try:
                answer = s.recv(4096)
            except TimeoutError:
                continue
            break
        # the server answered 408 and closed long before the head was complete
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert sent < len(head)
    assert runtime.request("GET", "/v2/health/live")[0] == 200


def test_expect_100_continue_is_answered_before_the_body(runtime):
    body = infer_body(np.zeros((1, 64), np.float32))
    head = _infer("digits", b"Expect: 100-continue\r\nContent-Length: %d\r\n" % len(body), b"")
    with socket.create_connection(("127.0.0.1", runtime.port), timeout=10) as s:
        s.sendall(head)
        assert s.recv(4096) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(body)
        assert s.recv(65536).startswith(b"HTTP/1.1 200 ")


def _stats(server: Server) -> dict:
    return json.loads(server.request("GET", "/nbscale/stats", headers=AUTH)[2])


def _need_fds() -> None:
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < FDS_NEEDED:
        pytest.skip(f"needs {FDS_NEEDED} open files; the hard limit here allows {soft} (ulimit -n)")


def test_a_thousand_idle_keepalive_connections_are_closed_at_the_idle_timeout(runtime):
    _need_fds()
    socks = []
    sel = selectors.DefaultSelector()
    try:
        for _ in range(1000):
            s = socket.create_connection(("127.0.0.1", runtime.port), timeout=10)
            socks.append(s)
        # every connection made one request and then stays idle
        for s in socks:
            s.sendall(LIVE + b"\r\n")
        for s in socks:
            assert s.recv(4096).startswith(b"HTTP/1.1 200 ")
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
        assert _stats(runtime)["connections"] >= 1000
        open_ = set(socks)
        deadline = time.monotonic() + 60
        while open_ and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1):
                try:
                    data = key.fileobj.recv(4096)
                except ConnectionResetError:
                    data = b""
                if data == b"":
                    sel.unregister(key.fileobj)
                    open_.discard(key.fileobj)
        assert not open_, f"{len(open_)} idle connections were never closed"
        wait_for(lambda: _stats(runtime)["connections"] <= 1, 10, what="server-side count")
    finally:
        sel.close()
        for s in socks:
            s.close()


def test_the_connection_cap_refuses_the_next_one_with_503_and_the_server_carries_on(runtime):
    _need_fds()
    socks = []
    try:
        refused = None
        for _ in range(1100):
            s = socket.create_connection(("127.0.0.1", runtime.port), timeout=10)
            socks.append(s)
            s.sendall(LIVE + b"\r\n")
            answer = s.recv(4096)
            if not answer.startswith(b"HTTP/1.1 200 "):
                refused = answer
                break
        assert refused is not None and refused.startswith(b"HTTP/1.1 503 "), refused
        assert b"maximum of 1010 connections" in refused and b"retry-after: 1" in refused
        assert len(socks) == 1011
    finally:
        for s in socks:
            s.close()
    # once connections close, new ones are served again
    wait_for(lambda: _answers_live(runtime), 30, what="served after the cap")


def _answers_live(server: Server) -> bool:
    try:
        return server.request("GET", "/v2/health/live")[0] == 200
    except OSError:
        return False


# -- a client that pipelines and never reads ------------------------------------------------


def test_two_thousand_pipelined_requests_on_a_connection_that_never_reads(runtime):
    proc = psutil.Process(runtime.proc.pid)
    rows = np.random.default_rng(0).random((100, 64), dtype=np.float32)
    body = infer_body(rows)
    one = _infer("digits", b"Content-Length: %d\r\n" % len(body), body)
    total = 2000 * len(one)
    before = proc.memory_info().rss
    sent = 0
    peak = before

    with socket.create_connection(("127.0.0.1", runtime.port)) as s:
        s.settimeout(3)
        try:
            for _ in range(2000):
                s.sendall(one)  # blocks once the server stops reading
                sent += len(one)
                peak = max(peak, proc.memory_info().rss)
        except TimeoutError:
            pass  # blocked: the server stopped reading
        except (ConnectionResetError, BrokenPipeError):
            pass  # or it dropped a client that left its answers unread for the read timeout
        # Then the server stopped reading: the client could not hand over everything
        assert sent < total, "the server read 2,000 large requests into memory"
        # And its memory stayed bounded
        for _ in range(10):
            peak = max(peak, proc.memory_info().rss)
            time.sleep(0.1)
        assert peak - before < 64 * (1 << 20), f"RSS grew by {(peak - before) >> 20} MiB"
        # And other clients are served meanwhile
        status, _, resp = runtime.request(
            "POST", "/v2/models/digits/infer", infer_body(rows[:1]), AUTH
        )
        assert status == 200, resp
    assert runtime.proc.poll() is None


# -- fuzzing the bodies -----------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=30,
)
dims = st.one_of(
    st.integers(min_value=-3, max_value=130),
    st.sampled_from([2**31, 2**62, 2**63, 2**64 + 1, 10**30]),
    st.booleans(),
    st.floats(allow_nan=True),
    st.text(max_size=3),
)
tensor = st.fixed_dictionaries(
    {
        "name": st.one_of(
            st.just("input"),
            st.text(max_size=5),
            st.integers(),
            st.lists(st.integers(), max_size=2),
        ),
        "shape": st.one_of(st.lists(dims, max_size=4), json_values),
        "datatype": st.one_of(st.sampled_from(sorted(DTYPES)), st.text(max_size=5), st.integers()),
    },
    optional={
        "data": st.one_of(
            st.lists(
                st.one_of(st.floats(), st.integers(), st.booleans(), st.text(max_size=3)),
                max_size=130,
            ),
            st.lists(st.lists(st.floats(width=32), min_size=64, max_size=64), max_size=3),
            json_values,
        ),
        "parameters": st.one_of(
            st.fixed_dictionaries(
                {
                    "binary_data_size": st.one_of(
                        st.integers(min_value=-5, max_value=1000), json_values
                    )
                }
            ),
            json_values,
        ),
    },
)
v2_request = st.one_of(
    st.fixed_dictionaries(
        {"inputs": st.one_of(st.lists(tensor, max_size=3), json_values)},
        optional={
            "id": json_values,
            "parameters": st.one_of(
                st.fixed_dictionaries({"binary_data_output": json_values}), json_values
            ),
            "outputs": st.one_of(
                st.lists(
                    st.fixed_dictionaries(
                        {"name": st.one_of(st.just("output"), json_values)},
                        optional={"parameters": json_values},
                    ),
                    max_size=2,
                ),
                json_values,
            ),
        },
    ),
    json_values,
)
FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)


def _post(server: Server, path: str, body: bytes, headers: dict) -> int:
    status, _, resp = server.request("POST", path, body, {**AUTH, **headers})
    assert status < 500, (status, resp[:300], body[:300])
    if status >= 400:
        assert "error" in json.loads(resp)
    return status


@FUZZ
@given(req=v2_request)
def test_fuzz_v2_json_bodies_never_get_a_5xx(runtime, req):
    _post(
        runtime,
        "/v2/models/digits/infer",
        json.dumps(req).encode(),
        {"Content-Type": "application/json"},
    )


@FUZZ
@given(
    req=v2_request,
    blob=st.binary(max_size=600),
    header_len=st.one_of(
        st.integers(-5, 2000),
        st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=4),
    ),
)
def test_fuzz_v2_binary_bodies_never_get_a_5xx(runtime, req, blob, header_len):
    head = json.dumps(req).encode()
    hl = str(len(head)) if isinstance(header_len, int) and header_len % 3 == 0 else str(header_len)
    _post(
        runtime,
        "/v2/models/digits/infer",
        head + blob,
        {"Inference-Header-Content-Length": hl or "0"},
    )


npy_bodies = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda shape, descr, tail: b"\x93NUMPY\x01\x00" + npy_header(shape, descr) + tail,
        st.lists(st.integers(-2, 2**62), max_size=3),
        st.sampled_from(["<f4", "<f8", "|u1", "<i8", "|O", "<U3", "|b1", "<c8", "zz"]),
        st.binary(max_size=600),
    ),
    st.builds(lambda n: npy_bytes(np.ones((n, 64), np.float32)), st.integers(1, 4)),
    st.builds(lambda n: npy_bytes(np.full((n, 64), 300, np.int64)), st.integers(1, 2)),
)


@FUZZ
@given(
    body=st.one_of(npy_bodies, st.builds(lambda v: json.dumps(v).encode(), json_values)),
    ctype=st.sampled_from(
        ["application/json", "application/x-npy", "application/npy", "text/csv", ""]
    ),
    accept=st.sampled_from(["application/json", "application/x-npy", "*/*", "text/html"]),
)
def test_fuzz_invocations_bodies_never_get_a_5xx(runtime, body, ctype, accept):
    _post(runtime, "/invocations", body, {"Content-Type": ctype, "Accept": accept})


# -- value and shape checks that used to overflow ------------------------------------------------


def test_a_500_says_only_an_id_which_the_server_log_carries(tmp_path, one_server):
    model_dir, _ = make_artifact(tmp_path / "art")
    code = model_dir / "code" / "inference.py"
    code.write_text(
        code.read_text() + "\n_predict = predict_fn\n\n\ndef predict_fn(data, model):\n"
        "    if float(data.sum()) == 7.0:\n        raise RuntimeError('secret path /srv/weights')\n"
        "    return _predict(data, model)\n"
    )
    sign(model_dir)
    server = one_server(model_dir)
    x = np.zeros((1, 64), np.float32)
    x[0, 0] = 7
    status, _, resp = server.request("POST", "/v2/models/digits/infer", infer_body(x), AUTH)
    message = json.loads(resp)["error"]
    assert status == 500 and "secret" not in message and "internal error (id " in message
    eid = message.split("(id ")[1].split(")")[0]
    log = wait_for(lambda: eid in server.log.read_text() and server.log.read_text(), 10, what="log")
    assert "secret path /srv/weights" in log
    assert server.request("POST", "/v2/models/digits/infer", infer_body(x * 0), AUTH)[0] == 200


def _slow_server_with_a_kept_connection(tmp_path, one_server):
    """A server of a 1 s model, after one request (the batcher then knows the model is slow and
    runs it off the event loop), and a keep-alive connection idle after one answer."""
    model_dir, _ = make_artifact(tmp_path / "art", slow=True)
    server = one_server(model_dir, env={"NBSCALE_TEST_SLOW_S": "1.0"})
    body = infer_body(np.zeros((1, 64), np.float32))
    assert server.request("POST", "/v2/models/digits/infer", body, AUTH)[0] == 200
    kept = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    kept.sendall(LIVE + b"\r\n")
    assert kept.recv(4096).startswith(b"HTTP/1.1 200 ")
    return server, body, kept


def test_sigterm_drains_requests_in_flight_and_closes_idle_connections(tmp_path, one_server):
    server, _, idle = _slow_server_with_a_kept_connection(tmp_path, one_server)
    result = {}

    def call():
        result["r"] = server.request(
            "POST", "/v2/models/digits/infer", infer_body(np.zeros((1, 64), np.float32)), AUTH
        )

    t = threading.Thread(target=call)
    t.start()
    wait_for(lambda: _stats(server)["inflight"] >= 1, 10, what="request in flight")
    os.kill(server.proc.pid, 15)
    t.join(30)
    # the request in flight was answered, the idle connection was closed, the process ended
    assert result["r"][0] == 200 and result["r"][1].get("connection") == "close"
    idle.settimeout(10)
    assert idle.recv(4096) == b""
    idle.close()
    assert server.proc.wait(20) == 0


@pytest.mark.parametrize("option", ["--port", "--metrics-port"])
def test_a_port_out_of_range_is_one_usage_line_and_nothing_starts(tmp_path, option):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "nbscale.serving", "--model-dir", str(tmp_path), option, "99999"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip().splitlines()[-1].endswith("'99999' is not a TCP port: give 0 to 65535")
    )


def test_a_request_on_an_idle_keepalive_connection_just_after_sigterm_is_answered(
    tmp_path, one_server
):
    # Given a keep-alive connection idle between two requests, and a slow request in flight
    # elsewhere (the server keeps draining meanwhile)
    server, body, busy = _slow_server_with_a_kept_connection(tmp_path, one_server)
    result = {}
    t = threading.Thread(
        target=lambda: result.update(
            r=server.request("POST", "/v2/models/digits/infer", body, AUTH)
        )
    )
    t.start()
    wait_for(lambda: _stats(server)["inflight"] >= 1, 10, what="request in flight")
    # When the server is told to stop and the busy client's next request follows at once
    os.kill(server.proc.pid, 15)
    time.sleep(0.1)
    busy.sendall(LIVE + b"\r\n")
    # Then it is answered, with Connection: close, not reset or dropped unanswered
    busy.settimeout(10)
    answer = b""
    while chunk := busy.recv(4096):
        answer += chunk
    busy.close()
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 200 "), answer[:200]
    assert b"connection: close" in head
    t.join(30)
    assert result["r"][0] == 200
    assert server.proc.wait(20) == 0
