"""A server serving a shared socket lets its connections go when another process joins it
(``HttpServer.release``): each client is told to connect again, and no request is cut off."""

from __future__ import annotations

import socket

from nbscale.serving.httpserver import Response
from tests.support.serving import ServerThread

REQUEST = b"GET /x HTTP/1.1\r\nhost: t\r\ncontent-length: 0\r\n\r\n"


def _answer(sock: socket.socket) -> bytes:
    """One whole answer (its body is 2 bytes)."""
    data = b""
    while not data.endswith(b"\r\n\r\nok"):
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    return data


def test_released_connections_are_closed_after_their_next_answer_or_when_idle():
    async def handler(req):
        return Response(200, b"ok", "text/plain")

    running = ServerThread(handler)
    try:
        server = running.server
        busy, idle = (socket.create_connection(("127.0.0.1", server.port)) for _ in range(2))
        for s in (busy, idle):
            s.settimeout(5)
            s.sendall(REQUEST)
            assert b"connection: close" not in _answer(s)  # kept alive so far
        # When the server lets its connections go
        released = running.call(_release(server))
        assert released == 2
        # Then a request on one of them is still answered, with Connection: close, and the
        # connection ends there
        busy.sendall(REQUEST)
        answer = _answer(busy)
        assert answer.startswith(b"HTTP/1.1 200") and b"connection: close" in answer
        assert busy.recv(4096) == b""
        # And an idle one is closed after the drain grace, with nothing lost
        assert idle.recv(4096) == b""
        # And a client that connects again is kept alive as before
        again = socket.create_connection(("127.0.0.1", server.port))
        again.settimeout(5)
        for _ in range(2):
            again.sendall(REQUEST)
            assert b"connection: close" not in _answer(again)
        for s in (busy, idle, again):
            s.close()
    finally:
        running.close()


async def _release(server) -> int:
    return server.release()
