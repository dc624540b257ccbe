"""A small HTTP/1.1 server on asyncio protocols, built for many tiny requests.

A framework (starlette/uvicorn, fastapi) spends more time per request than
a small model's forward pass; this server parses just what the inference
routes need: request line, headers, a Content-Length body, keep-alive.
Chunked request bodies are refused with 411 (every V2 and SageMaker client
sends Content-Length).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

MAX_HEAD = 64 * 1024
REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-case names
    body: bytes


@dataclass(slots=True)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self, keep_alive: bool) -> bytes:
        lines = [
            f"HTTP/1.1 {self.status} {REASONS.get(self.status, 'Status')}",
            f"content-type: {self.content_type}",
            f"content-length: {len(self.body)}",
        ]
        lines.extend(f"{k}: {v}" for k, v in self.headers.items())
        if not keep_alive:
            lines.append("connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


Handler = Callable[[Request], Awaitable[Response]]


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    from .jsoncodec import dumps

    return Response(status, dumps({"error": message}), headers=headers or {})


class HttpProtocol(asyncio.Protocol):
    """One connection; requests on it are answered in order (HTTP/1.1 pipelining works)."""

    __slots__ = ("handler", "max_body", "transport", "buf", "queue", "task", "closed", "on_count")

    def __init__(
        self, handler: Handler, max_body: int, on_count: Callable[[int], None] | None = None
    ):
        self.handler = handler
        self.max_body = max_body
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.queue: list[tuple[Request | Response, bool]] = []
        self.task: asyncio.Task | None = None
        self.closed = False
        self.on_count = on_count

    def connection_made(self, transport):  # type: ignore[override]
        self.transport = transport
        if self.on_count:
            self.on_count(1)

    def connection_lost(self, exc):  # type: ignore[override]
        self.closed = True
        if self.on_count:
            self.on_count(-1)

    def data_received(self, data: bytes) -> None:  # type: ignore[override]
        self.buf += data
        while not self.closed:
            item = self._parse_one()
            if item is None:
                break
            self.queue.append(item)
            if isinstance(item[0], Response):  # a framing error ends the connection
                break
        if self.queue and self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._drain())

    def _parse_one(self) -> tuple[Request | Response, bool] | None:
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD:
                self.buf = bytearray()
                return error_response(431, "request head larger than 64 KiB"), False
            return None
        head = bytes(buf[:end]).decode("latin-1")
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self.buf = bytearray()
            return error_response(400, "malformed HTTP request line"), False
        method, target, version = parts
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                self.buf = bytearray()
                return error_response(400, f"malformed header line {line[:40]!r}"), False
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self.buf = bytearray()
            return error_response(
                411, "chunked request bodies are not supported; send Content-Length"
            ), False
        try:
            length = int(headers.get("content-length", "0"))
            if length < 0:
                raise ValueError
        except ValueError:
            self.buf = bytearray()
            return error_response(400, "Content-Length is not a non-negative integer"), False
        if length > self.max_body:
            self.buf = bytearray()
            return error_response(
                413,
                f"the body is {length} bytes; this server takes at most {self.max_body} (send smaller batches)",
            ), False
        total = end + 4 + length
        if len(buf) < total:
            return None
        body = bytes(buf[end + 4 : total])
        del buf[:total]
        conn = headers.get("connection", "").lower()
        keep = conn != "close" if version == "HTTP/1.1" else conn == "keep-alive"
        path, _, query = target.partition("?")
        return Request(method, path, query, headers, body), keep

    async def _drain(self) -> None:
        try:
            while self.queue and not self.closed:
                item, keep = self.queue.pop(0)
                if isinstance(item, Response):
                    resp, keep = item, False
                else:
                    try:
                        resp = await self.handler(item)
                    except Exception as exc:  # a bug in a handler must not kill the connection loop
                        resp = error_response(500, f"internal error: {type(exc).__name__}: {exc}")
                if self.closed:
                    return
                self.transport.write(resp.encode(keep))
                if not keep:
                    self.closed = True
                    self.transport.close()
                    return
        finally:
            self.task = None


def install_fast_loop() -> None:
    """uvloop when installed: about twice the requests per second of the default loop."""
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def serve(
    handler: Handler,
    host: str,
    port: int,
    max_body: int,
    sock=None,
    on_count: Callable[[int], None] | None = None,
) -> asyncio.AbstractServer:
    loop = asyncio.get_running_loop()

    def factory():
        return HttpProtocol(handler, max_body, on_count)

    if sock is not None:
        return await loop.create_server(factory, sock=sock, backlog=1024)
    return await loop.create_server(factory, host, port, backlog=1024, reuse_address=True)
