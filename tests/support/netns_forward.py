"""A byte forwarder between TCP and a Unix socket (for tests/support/kube_netns.py).

    python netns_forward.py tcp-to-unix HOST PORT SOCKET   # listen on TCP, connect to SOCKET
    python netns_forward.py unix-to-tcp SOCKET HOST PORT   # listen on SOCKET, connect to TCP

Prints ``ready`` once listening; runs until terminated.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError):
            writer.close()


async def _handle(reader, writer, connect) -> None:
    try:
        up_reader, up_writer = await connect()
    except OSError:
        writer.close()
        return
    await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def main(argv: list[str]) -> None:
    mode = argv[0]
    if mode == "tcp-to-unix":
        host, port, sock = argv[1:4]
        server = await asyncio.start_server(
            lambda r, w: _handle(r, w, lambda: asyncio.open_unix_connection(sock)), host, int(port)
        )
    elif mode == "unix-to-tcp":
        sock, host, port = argv[1:4]
        server = await asyncio.start_unix_server(
            lambda r, w: _handle(r, w, lambda: asyncio.open_connection(host, int(port))), sock
        )
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(sys.argv[1:]))
