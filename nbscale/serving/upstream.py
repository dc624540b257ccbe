"""The router's HTTP client to its replicas: llhttp-parsed responses, bounded, with timeouts.

A response head larger than ``max_head``, a body larger than ``max_body``, a
malformed response or one that does not arrive within the timeout raises
``UpstreamError``; the router answers 502 or 504 and closes that connection.
Idle keep-alive connections are pooled per replica and dropped after
``POOL_IDLE_S`` (replicas keep them twice as long), and a pooled connection
that the replica closed before answering is replaced by a fresh one once.
"""

from __future__ import annotations

import asyncio
import time

import httptools

POOL_IDLE_S = 60.0  # replicas run with --keepalive-timeout 120
CONNECT_TIMEOUT_S = 5.0


class UpstreamError(Exception):
    """The replica's answer could not be had; ``status`` is what the router answers instead."""

    def __init__(self, status: int, message: str, answered: bool = True):
        super().__init__(message)
        self.status = status
        self.message = message
        self.answered = answered  # False: not a byte came back (a closed pooled connection)


class _Parsed:
    def __init__(self, max_head: int, max_body: int):
        self.max_head = max_head
        self.max_body = max_body
        self.head = 0
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.size = 0
        self.headers_done = False
        self.done = False
        self.keep_alive = False
        self.parser: httptools.HttpResponseParser | None = None

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head += len(name) + len(value) + 4
        if self.head > self.max_head:
            raise UpstreamError(502, f"the replica's response head is over {self.max_head} bytes")
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1").strip()

    def on_headers_complete(self) -> None:
        self.headers_done = True
        # asked here: once the message is complete llhttp has reset and always answers False
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_body:
            raise UpstreamError(502, f"the replica's response body is over {self.max_body} bytes")
        self.body.append(data)

    def on_message_complete(self) -> None:
        self.done = True


async def read_response(
    reader: asyncio.StreamReader, max_head: int, max_body: int
) -> tuple[int, dict[str, str], bytes, bool]:
    """One response: status, lower-case headers, body, and whether the connection stays open."""
    got = _Parsed(max_head, max_body)
    parser = got.parser = httptools.HttpResponseParser(got)
    raw_head = 0
    received = False
    while not got.done:
        data = await reader.read(65536)
        if not data:
            raise UpstreamError(
                502, "the replica closed the connection before it answered", answered=received
            )
        received = True
        if not got.headers_done:
            raw_head += len(data)
        try:
            parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, UpstreamError):
                raise exc.__context__ from None
            raise UpstreamError(502, f"malformed response from the replica: {exc}") from None
        except httptools.HttpParserError as exc:
            raise UpstreamError(502, f"malformed response from the replica: {exc}") from None
        if not got.headers_done and raw_head > max_head:
            raise UpstreamError(502, f"the replica's response head is over {max_head} bytes")
    body = got.body[0] if len(got.body) == 1 else b"".join(got.body)
    return parser.get_status_code(), got.headers, body, got.keep_alive


class Pool:
    """Idle keep-alive connections to one replica."""

    def __init__(self):
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []

    def take(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        now = time.monotonic()
        while self.idle:
            r, w, since = self.idle.pop()
            if now - since < POOL_IDLE_S and not w.is_closing():
                return r, w
            w.close()
        return None

    def give(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.idle.append((r, w, time.monotonic()))

    def close(self) -> None:
        for _, w, _ in self.idle:
            w.close()
        self.idle.clear()


async def exchange(
    port: int,
    pool: Pool,
    head: bytes,
    body: bytes,
    timeout: float,
    max_head: int,
    max_body: int,
) -> tuple[int, dict[str, str], bytes]:
    """Send one request to the replica on ``port``; a pooled connection it closed is retried fresh."""
    for _attempt in range(2):
        conn = pool.take()
        reused = conn is not None
        if conn is None:
            try:
                conn = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port), CONNECT_TIMEOUT_S
                )
            except TimeoutError:
                raise UpstreamError(
                    504, f"the replica did not accept a connection within {CONNECT_TIMEOUT_S:g} s"
                ) from None
            except OSError as exc:  # refused: the replica is gone; the router tries another
                raise UpstreamError(502, f"cannot connect to the replica: {exc}", False) from None
        r, w = conn
        try:
            w.write(head + body if len(body) < 65536 else head)
            if len(body) >= 65536:
                w.write(body)
            status, headers, data, keep = await asyncio.wait_for(
                read_response(r, max_head, max_body), timeout
            )
        except TimeoutError:
            w.close()
            raise UpstreamError(504, f"the replica did not answer within {timeout:g} s") from None
        except UpstreamError as exc:
            w.close()
            if reused and not exc.answered:
                continue  # the replica had closed this idle connection: once more on a new one
            raise
        except OSError as exc:
            w.close()
            if reused:
                continue
            raise UpstreamError(502, f"the replica connection failed: {exc}", False) from None
        except BaseException:
            w.close()
            raise
        if keep:
            pool.give(r, w)
        else:
            w.close()
        return status, headers, data
    raise UpstreamError(502, "the replica closed two connections without answering", False)
