"""The router's client to its replicas keeps its connections: one TCP connection serves many requests."""

from __future__ import annotations

import asyncio

from nbscale.serving.httpserver import HttpServer, Response
from nbscale.serving.upstream import Pool, exchange


def test_keep_alive_connections_are_pooled_and_reused():
    async def scenario():
        accepted = []

        async def handler(req):
            return Response(200, b'{"ok":true}')

        server = HttpServer(handler, on_count=lambda d: accepted.append(d) if d > 0 else None)
        await server.start("127.0.0.1", 0)
        pool = Pool()
        head = b"POST /x HTTP/1.1\r\nhost: replica\r\ncontent-length: 2\r\n\r\n"
        try:
            for _ in range(20):
                status, _, body = await exchange(server.port, pool, head, b"{}", 5, 65536, 65536)
                assert status == 200 and body == b'{"ok":true}'
            # twenty requests one after another: one connection, back in the pool after each
            assert len(accepted) == 1 and len(pool.idle) == 1
            # a connection the replica answers with "connection: close" is not pooled
            close = head.replace(b"host: replica", b"host: replica\r\nconnection: close")
            await exchange(server.port, pool, close, b"{}", 5, 65536, 65536)
            assert len(pool.idle) == 0
        finally:
            pool.close()
            await server.shutdown(1)

    asyncio.run(scenario())
