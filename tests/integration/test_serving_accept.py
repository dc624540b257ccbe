"""Connections that arrive together are all accepted together.

uvloop accepts one connection per loop turn, and a busy turn runs every request already
read, so the n-th of many new connections used to wait n turns for its first answer (the
runtime's p99 at 64 connections). Here the loop is held while one client pipelines 200
requests and 40 others connect and send one each; once the loop runs again, the 40 are
answered within a few of the pipelined requests (an order, not a time).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading

import uvloop

from nbscale.serving.httpserver import HttpServer, Response

PIPELINED = 200
NEWCOMERS = 40


def _serve(order: list[str], entered: threading.Event, release: threading.Event, ready: list):
    loop = uvloop.new_event_loop()

    async def handler(req):
        if req.path == "/hold":
            entered.set()
            release.wait(30)  # the loop is held: everything below queues in the kernel
        else:
            order.append(req.path)
            await asyncio.sleep(0)  # a handler that awaits (the batcher does): one request a turn
        return Response(200, b"{}")

    async def main():
        server = HttpServer(handler)
        await server.start("127.0.0.1", 0)
        ready.append((loop, server))
        while True:
            await asyncio.sleep(3600)

    asyncio.set_event_loop(loop)
    with contextlib.suppress(RuntimeError):  # the loop stopped by the test
        loop.run_until_complete(main())


def _read_answers(sock: socket.socket, n: int) -> None:
    data = b""
    while data.count(b"HTTP/1.1 200") < n:
        chunk = sock.recv(1 << 16)
        assert chunk, "the server closed the connection"
        data += chunk


def test_connections_arriving_together_are_answered_before_a_pipelining_client_runs_ahead():
    order: list[str] = []
    entered, release, ready = threading.Event(), threading.Event(), []
    thread = threading.Thread(target=_serve, args=(order, entered, release, ready), daemon=True)
    thread.start()
    for _ in range(3000):
        if ready or not thread.is_alive():
            break
        threading.Event().wait(0.01)
    assert ready, "the server did not start"
    loop, server = ready[0]
    port = server.port
    socks = []
    try:
        hot = socket.create_connection(("127.0.0.1", port))
        socks.append(hot)
        hot.sendall(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
        assert entered.wait(30)
        hot.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n" * PIPELINED)
        newcomers = []
        for _ in range(NEWCOMERS):
            s = socket.create_connection(("127.0.0.1", port))  # the kernel completes it
            s.sendall(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
            newcomers.append(s)
        socks += newcomers
        release.set()
        _read_answers(hot, PIPELINED + 1)
        for s in newcomers:
            _read_answers(s, 1)
    finally:
        release.set()
        for s in socks:
            s.close()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
    assert order.count("/a") == PIPELINED and order.count("/b") == NEWCOMERS
    before_last_newcomer = order[: max(i for i, p in enumerate(order) if p == "/b")].count("/a")
    # the pipelining client gets one request answered a turn; all 40 newcomers are accepted
    # in the first turn after the hold and answered a few turns later, where one accept a
    # turn put at least 40 of the pipelined requests ahead of the last of them
    assert before_last_newcomer < NEWCOMERS // 2, (
        f"{before_last_newcomer} pipelined requests were answered before the last of "
        f"{NEWCOMERS} connections that were waiting to be accepted"
    )
