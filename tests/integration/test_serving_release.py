"""A server serving a shared socket lets its connections go when another process joins it
(``HttpServer.release``): each client is told to connect again, and no request is cut off."""

from __future__ import annotations

import asyncio
import socket
import threading

from nbscale.serving.httpserver import Response, serve

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
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder = {}

    async def handler(req):
        return Response(200, b"ok", "text/plain")

    async def main():
        holder["server"] = await serve(handler, "127.0.0.1", 0)
        started.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(main()), loop.run_forever()))
    thread.start()
    try:
        assert started.wait(10)
        server = holder["server"]
        busy, idle = (socket.create_connection(("127.0.0.1", server.port)) for _ in range(2))
        for s in (busy, idle):
            s.settimeout(5)
            s.sendall(REQUEST)
            assert b"connection: close" not in _answer(s)  # kept alive so far
        # When the server lets its connections go
        released = asyncio.run_coroutine_threadsafe(_release(server), loop).result(5)
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
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


async def _release(server) -> int:
    return server.release()
