"""The HTTP server with busy polling (``nbscale.serving.busypoll``) on a real socket: a client
that comes back at once is read while the loop polls, one that waits longer than the window
never makes it poll, the answers are the same with it as without it (pipelined ones in order),
and after the window the process sleeps again."""

from __future__ import annotations

import math
import os
import socket
import time

from nbscale.serving import busypoll
from nbscale.serving.busypoll import BusyPoll
from nbscale.serving.httpserver import Response
from tests.support.serving import ServerThread


def _request(i: int) -> bytes:
    return f"GET /n/{i} HTTP/1.1\r\nhost: t\r\ncontent-length: 0\r\n\r\n".encode()


def _answers(sock: socket.socket, n: int) -> list[bytes]:
    """``n`` whole answers (each body is its request's path)."""
    data, out = b"", []
    while len(out) < n:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if sep:
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            if len(rest) >= length:
                out.append(rest[:length])
                data = rest[length:]
                continue
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    return out


class Running(ServerThread):
    """A server that answers each request with its path, busy-polling with ``poll``."""

    def __init__(self, poll: BusyPoll | None, **serve_options):
        async def handler(req):
            return Response(200, req.path.encode(), "text/plain")

        super().__init__(handler, busy_poll=poll, **serve_options)

    def connect(self, address=None) -> socket.socket:
        sock = socket.create_connection(address or ("127.0.0.1", self.server.port))
        sock.settimeout(5)
        return sock


def _exchange(run: Running, pause: float) -> list[bytes]:
    sock = run.connect()
    got = []
    try:
        for i in range(20):
            sock.sendall(_request(i))
            got += _answers(sock, 1)
            time.sleep(pause)
        sock.sendall(b"".join(_request(100 + i) for i in range(5)))  # pipelined
        got += _answers(sock, 5)
    finally:
        sock.close()
    return got


def test_a_client_that_comes_back_at_once_is_read_while_the_loop_polls():
    poll = BusyPoll(0.05)
    run, plain = Running(poll), Running(None)
    try:
        # a closed-loop client: its next request comes well within the window
        with_poll = _exchange(run, 0.0)
        assert poll.turns > 0
        assert with_poll == _exchange(plain, 0.0)
        assert with_poll == [f"/n/{i}".encode() for i in range(20)] + [
            f"/n/{100 + i}".encode() for i in range(5)
        ]
        # after the window it stops by itself: the process sleeps in epoll again
        deadline = time.monotonic() + 5
        while poll.polling and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not poll.polling
        turns = poll.turns
        time.sleep(0.2)
        assert poll.turns == turns
        # a client that waits longer than the window between requests never makes it poll
        slow = BusyPoll(0.002)
        paced = Running(slow)
        sock = paced.connect()
        try:
            for i in range(10):
                sock.sendall(_request(i))
                assert _answers(sock, 1) == [f"/n/{i}".encode()]
                time.sleep(0.05)
            assert slow.turns == 0 and not slow.hot
        finally:
            sock.close()
            paced.close()
    finally:
        run.close()
        plain.close()


def test_a_bad_window_in_the_environment_is_refused_at_deploy_and_nothing_starts(
    tmp_path, monkeypatch
):
    import pytest

    from nbscale.endpoints import deploy, endpoints
    from nbscale.errors import SpecError
    from tests.support.serving import make_artifact

    model_dir, _ = make_artifact(tmp_path / "art")
    for bad in ("soon", "-1", "1e9"):
        monkeypatch.setenv("NBSCALE_BUSY_POLL_US", bad)
        # the replicas would inherit it: the deploy names the setting and what to give
        with pytest.raises(SpecError, match=f"NBSCALE_BUSY_POLL_US={bad!r} is not a number"):
            deploy(model_dir, name="polls", replicas=(1, 1))
        assert [ep.name for ep in endpoints()] == []


def test_a_shared_socket_is_not_accepted_from_while_polling(monkeypatch):
    # the client threads of this test share the process: a turn they interrupt must not
    # end the polling here (``CONTENDED_S``)
    monkeypatch.setattr(busypoll, "CONTENDED_S", math.inf)
    # Given the endpoint's socket handed to a server that busy-polls (a replica serving it
    # beside others), and a second server on the same socket that does not poll (one the
    # kernel would wake for a new connection)
    listen = socket.socket()
    listen.bind(("127.0.0.1", 0))
    poll = BusyPoll(0.5)
    running = Running(poll, sock=socket.socket(fileno=os.dup(listen.fileno())))
    try:
        server = running.server
        first = running.connect(listen.getsockname())
        # When it polls after answering quick requests on a kept connection
        for i in range(3):
            first.sendall(_request(i))
            _answers(first, 1)
        deadline = time.monotonic() + 5
        while not poll.polling and time.monotonic() < deadline:
            first.sendall(_request(9))
            _answers(first, 1)
        assert poll.polling
        # Then a new connection is left in the queue for another process while it polls
        second = running.connect(listen.getsockname())
        time.sleep(0.05)
        assert len(server.connections) == 1
        # And once the polling has stopped it is accepted and answered here as before
        second.sendall(_request(1))
        assert _answers(second, 1) == [b"/n/1"]
        assert len(server.connections) == 2
        first.close()
        second.close()
    finally:
        running.close()
        listen.close()
