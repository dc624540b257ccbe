"""The HTTP/1.1 server of the serving runtime and the router: llhttp framing, asyncio protocols.

Framing is parsed by ``httptools`` (llhttp, the parser of Node.js and
uvicorn), which rejects the request-smuggling shapes: duplicate or
malformed ``Content-Length``, ``Content-Length`` beside
``Transfer-Encoding``, bad versions, bad header tokens. On top of it this
module enforces what RFC 9112 leaves to the server (one ``Host`` on
HTTP/1.1, only the ``chunked`` coding: others get 501) and the limits in
``Limits``: head size (at any read size), header count, body size, the time
a request may take to arrive, the keep-alive idle time, the number of
connections (503 beyond it) and the requests read ahead on one connection.
Reading pauses while responses are unread or too many requests wait
(transport flow control, as uvicorn does), so a client that pipelines and
never reads holds a bounded amount of memory. Chunked request bodies work
(llhttp decodes them) within the same body limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httptools

from .busypoll import BusyPoll

log = logging.getLogger("nbscale.serving")

CLOSE_LINE = "connection: close\r\n"
REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}
BACKLOG = 1024  # connections the kernel holds for the next accept
DRAIN_GRACE_S = 0.5  # a stopping server's idle keep-alive connection waits this for a request
LINGER_S = 2.0  # after an error, read and drop what the client still sends, so it sees the answer


# what one process can honour: beyond these a setting is a typo, not a plan
_LIMIT_MAX = {
    "max_head": 1 << 20,
    "max_headers": 10_000,
    "max_body": 4 << 30,
    "read_timeout": 86400.0,
    "idle_timeout": 86400.0,
    "max_connections": 1_000_000,
    "max_pipeline": 10_000,
    "write_buffer": 1 << 30,
}


@dataclass(frozen=True)
class Limits:
    """What one server accepts; every field is a command-line option of the runtime and the router."""

    max_head: int = 64 * 1024  # request line and headers, bytes
    max_headers: int = 100
    max_body: int = 16 << 20
    read_timeout: float = 30.0  # a request must arrive completely this long after its first byte
    idle_timeout: float = 15.0  # keep-alive: a connection with nothing to do is closed after this
    max_connections: int = 1024
    max_pipeline: int = 32  # requests read ahead of their responses on one connection
    write_buffer: int = 256 * 1024  # unsent response bytes before reading pauses

    def __post_init__(self):
        for name in self.__dataclass_fields__:
            value, high = getattr(self, name), _LIMIT_MAX[name]
            if not math.isfinite(value) or not 0 < value <= high:
                raise ValueError(f"{name} must be more than 0 and at most {high:g}, got {value!r}")


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
        extra = "".join([f"{k}: {v}\r\n" for k, v in self.headers.items()]) if self.headers else ""
        return (
            f"HTTP/1.1 {self.status} {REASONS.get(self.status, 'Status')}\r\n"
            f"content-type: {self.content_type}\r\ncontent-length: {len(self.body)}\r\n"
            f"{extra}{'' if keep_alive else CLOSE_LINE}\r\n"
        ).encode("latin-1") + self.body


Handler = Callable[[Request], Awaitable[Response]]


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    from .jsoncodec import dumps

    return Response(status, dumps({"error": message}), headers=headers or {})


def internal_error(exc: BaseException, where: str) -> Response:
    """A 500 that tells the client only an id; the server log has the id and the traceback."""
    eid = secrets.token_hex(6)
    log.error("internal error %s in %s", eid, where, exc_info=exc)
    return error_response(500, f"internal error (id {eid}); the server log has the details")


class _Refuse(Exception):
    """Raised inside a parser callback: stop parsing and answer ``status``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class Listener:
    """A listening socket whose pending connections are all accepted each time it is ready.

    uvloop (libuv) accepts one connection per loop turn, and a turn of a busy server runs
    every request that has arrived: with 64 clients connecting at once, the n-th waited n
    turns for its first answer (about 0.3-0.6 s for the last ones, against ~10 ms for a
    request on a connection already open), which is where the runtime's p99 at 64
    connections came from. Here, as asyncio's own loop does, every pending connection is
    accepted in one turn, and the transports are uvloop's (``connect_accepted_socket``).

    ``shared_poll``: the socket is one other processes accept on too, and this process
    busy-polls with it (``busypoll``): while it polls, its accept waits for the polling to end.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        factory,
        backlog: int,
        shared_poll: BusyPoll | None = None,
    ):
        self.loop = loop
        self.factory = factory
        self.backlog = backlog
        self.shared_poll = shared_poll
        self.sockets = [sock]
        self.closed = False
        self.pending: set[asyncio.Task] = set()
        sock.listen(backlog)
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._ready)

    def _ready(self) -> None:
        sock = self.sockets[0]
        if self.shared_poll is not None and self.shared_poll.polling:
            # the replicas the kernel woke for this connection take it; this one, polling,
            # would see every new connection first and take them all
            self.loop.remove_reader(sock.fileno())
            self.shared_poll.defer(self._resume)
            return
        for _ in range(self.backlog):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:  # out of descriptors or buffers: pause, as asyncio does
                log.warning("accepting a connection failed (%s); pausing accept for 1 s", exc)
                self.loop.remove_reader(sock.fileno())
                self.loop.call_later(1.0, self._resume)
                return
            conn.setblocking(False)
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = self.loop.create_task(self._connect(conn))
            self.pending.add(task)
            task.add_done_callback(self.pending.discard)

    def _resume(self) -> None:
        if not self.closed:
            self.loop.add_reader(self.sockets[0].fileno(), self._ready)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(self.factory, conn)
        except OSError:  # the client went away before its transport was made
            conn.close()

    def close(self) -> None:
        """Stop accepting; the connections already accepted are the server's to finish."""
        if not self.closed:
            self.closed = True
            sock = self.sockets[0]
            self.loop.remove_reader(sock.fileno())
            sock.close()


class HttpServer:
    """One listening socket, its connections, the limits and a graceful shutdown."""

    def __init__(
        self,
        handler: Handler,
        limits: Limits | None = None,
        on_count: Callable[[int], None] | None = None,
        busy_poll: BusyPoll | None = None,
    ):
        self.handler = handler
        self.limits = limits or Limits()
        self.on_count = on_count
        self.busy_poll = busy_poll  # polls the loop a moment after an answer (``busypoll``)
        if busy_poll is not None:
            busy_poll.add(self)
        self.connections: set[HttpProtocol] = set()
        self.refused = 0
        self.waiting = 0  # requests read, on every connection, and not answered yet
        self.stopping = False
        self.server: Listener | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0, sock=None) -> Listener:
        shared = sock is not None  # a socket handed in: other processes may accept on it too
        if sock is None:
            family, kind, proto, _, addr = socket.getaddrinfo(
                host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            sock = socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(addr)
            except OSError:
                sock.close()
                raise
        self.server = Listener(
            asyncio.get_running_loop(),
            sock,
            self._factory,
            BACKLOG,
            self.busy_poll if shared else None,
        )
        return self.server

    @property
    def port(self) -> int:
        return self.server.sockets[0].getsockname()[1]

    def _factory(self) -> HttpProtocol:
        return HttpProtocol(self)

    def release(self) -> int:
        """Let every connection go (``HttpProtocol.retire``); returns how many."""
        conns = list(self.connections)
        for conn in conns:
            conn.retire()
        return len(conns)

    async def shutdown(self, timeout: float = 10.0) -> None:
        """Stop accepting; finish the requests already read; close idle keep-alive connections."""
        self.stopping = True
        if self.busy_poll is not None:
            self.busy_poll.remove(self)
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            conn.retire()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.connections and loop.time() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            conn.transport.abort()


class HttpProtocol(asyncio.Protocol):
    """One connection; its requests are answered in order (pipelining works, within limits)."""

    def __init__(self, server: HttpServer):
        self.server = server
        self.limits = server.limits
        self.handler = server.handler
        self.poll = server.busy_poll
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.queue: deque[tuple[Request | Response, bool]] = deque()
        self.queued_bytes = 0
        self.task: asyncio.Task | None = None
        self.counted = False
        self.closing = False  # nothing more is read: an error, Connection: close, or shutdown
        self.retiring = False  # let go (``retire``): its answers close it from now on
        self.closed = False
        self.lingering = False
        self.read_paused = False
        self.writable = asyncio.Event()
        self.writable.set()
        # one deadline at a time (idle, read, drain or linger), checked by one timer handle that
        # is moved only when a deadline comes sooner: a request re-arms it by writing two
        # attributes, not by cancelling and scheduling a handle twice
        self.timer: asyncio.TimerHandle | None = None
        self.deadline = 0.0
        self.on_expiry: Callable[[], None] | None = None
        # the message being read
        self.in_message = False
        self.in_head = True
        self.raw_head = 0
        self.head_size = 0
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.body_size = 0

    # -- connection ------------------------------------------------------------
    def connection_made(self, transport):  # type: ignore[override]
        self.transport = transport
        srv = self.server
        if len(srv.connections) >= self.limits.max_connections or srv.stopping:
            srv.refused += 1
            self.closing = True
            transport.write(
                error_response(
                    503,
                    f"the server holds its maximum of {self.limits.max_connections} connections; retry shortly",
                    {"retry-after": "1"},
                ).encode(False)
            )
            self._linger()
            return
        srv.connections.add(self)
        self.counted = True
        if srv.on_count:
            srv.on_count(1)
        transport.set_write_buffer_limits(high=self.limits.write_buffer)
        self._arm(self.limits.idle_timeout)

    def connection_lost(self, exc):  # type: ignore[override]
        self.closed = True
        self.writable.set()
        self._disarm()
        if self.timer is not None:  # nothing is left for it to do
            self.timer.cancel()
            self.timer = None
        if self.counted:
            self.counted = False
            self.server.connections.discard(self)
            if self.server.on_count:
                self.server.on_count(-1)
        if self.task is not None:
            self.task.cancel()
        unread = sum(1 for item, _ in self.queue if isinstance(item, Request))
        self.server.waiting -= unread
        self.queue.clear()

    def pause_writing(self) -> None:  # type: ignore[override]
        self.writable.clear()

    def resume_writing(self) -> None:  # type: ignore[override]
        self.writable.set()

    def retire(self) -> None:
        """Let this connection go: the server stops (``HttpServer.shutdown``), or its client
        should connect again so that the kernel may hand the new connection to another
        process serving the same socket (``HttpServer.release``). What was read, or is being
        read, is answered with Connection: close. An idle connection stays open for
        ``DRAIN_GRACE_S``: a busy client's next request may already be on its way, and closing
        under it would reset that request (a client that does not retry a POST loses it); it
        is answered, with Connection: close, too."""
        if self.closed or self.closing:
            return
        self.retiring = True
        if self.task is None and not self.queue and not self.in_message:
            self._arm(DRAIN_GRACE_S)

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            self._disarm()
            self.transport.close()

    def _linger(self) -> None:
        """Half-close after an error and drop what still arrives, so the client reads the answer."""
        self._disarm()
        self.lingering = True
        if self.transport.can_write_eof():
            with contextlib.suppress(OSError, RuntimeError):
                self.transport.write_eof()
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self._arm(LINGER_S, self.transport.close)

    # -- timers ------------------------------------------------------------------
    def _arm(self, seconds: float, on_expiry: Callable[[], None] | None = None) -> None:
        """``on_expiry`` (the idle timeout's by default) in ``seconds``, instead of any other."""
        self.deadline = deadline = self.loop.time() + seconds
        self.on_expiry = on_expiry or self._idle_expired
        timer = self.timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self.timer = self.loop.call_at(deadline, self._expire)

    def _disarm(self) -> None:
        self.on_expiry = None  # the handle, if one is scheduled, finds nothing to do

    def _expire(self) -> None:
        self.timer = None
        on_expiry = self.on_expiry
        if on_expiry is None or self.closed:
            return
        if self.loop.time() < self.deadline:  # re-armed later since it was scheduled
            self.timer = self.loop.call_at(self.deadline, self._expire)
            return
        self.on_expiry = None
        on_expiry()

    def _idle_expired(self) -> None:
        if self.task is None and not self.queue and not self.in_message:
            self._close()

    def _read_expired(self) -> None:
        if self.in_message and not self.closing:
            self._refuse(
                408,
                f"the request did not arrive within {self.limits.read_timeout:g} s",
            )

    # -- reading -------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:  # type: ignore[override]
        if self.closing:
            return  # after an error or Connection: close, the rest is dropped
        if not self.in_message:
            self._disarm()  # the idle timer; the read timer starts with the message
        if self.in_head:
            self.raw_head += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Upgrade and CONNECT are not served: the request is answered, then the connection closes
            self.closing = True
            if self.queue:
                req, _ = self.queue[-1]
                self.queue[-1] = (req, False)
        except httptools.HttpParserError as exc:
            if not self.closing:
                cause = exc.__context__
                if isinstance(cause, _Refuse):
                    self._refuse(cause.status, cause.message)
                else:
                    self._refuse(400, f"malformed HTTP request: {exc}")
        else:
            if self.in_head and self.raw_head > self.limits.max_head:
                self._refuse(431, self._head_message())
        self._flow()

    def _head_message(self) -> str:
        return f"the request head is larger than {self.limits.max_head} bytes"

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` after the requests already read, then close; nothing more is read."""
        self.closing = True
        self.in_message = False
        self._disarm()
        self.queue.append((error_response(status, message), False))
        self._flow()

    def _flow(self) -> None:
        """Start answering; pause reading while too much is queued or unsent."""
        if self.queue and self.task is None and not self.closed:
            self.task = self.loop.create_task(self._answer())
        if self.closing or self.closed:
            return
        full = (
            len(self.queue) >= self.limits.max_pipeline
            or self.queued_bytes >= self.limits.max_body
            or not self.writable.is_set()
        )
        if full and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()
            if self.in_message:
                self._disarm()  # our own back-pressure does not count against the client
        elif not full and self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
            if self.in_message:
                self._arm(self.limits.read_timeout, self._read_expired)

    # -- llhttp callbacks --------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.poll is not None:
            self.poll.arrived()
        self.in_message = True
        self.in_head = True
        self.head_size = 0
        self.url = b""
        self.headers = {}
        self.body = []
        self.body_size = 0
        self._arm(self.limits.read_timeout, self._read_expired)

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_size += len(url)
        if self.head_size > self.limits.max_head:
            raise _Refuse(431, self._head_message())

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_size += len(name) + len(value) + 4
        if self.head_size > self.limits.max_head:
            raise _Refuse(431, self._head_message())
        if len(self.headers) >= self.limits.max_headers:
            raise _Refuse(431, f"the request has more than {self.limits.max_headers} headers")
        if not self.in_head:
            return  # a chunked body's trailer fields: counted, not used
        key = name.decode("latin-1").lower()
        val = value.decode("latin-1").strip()
        old = self.headers.get(key)
        if old is None:
            self.headers[key] = val
        elif key in ("host", "content-length", "transfer-encoding", "authorization"):
            raise _Refuse(400, f"the request has more than one {key} header")
        else:
            self.headers[key] = f"{old}, {val}"

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.raw_head = 0
        version = self.parser.get_http_version()
        if version not in ("1.1", "1.0"):
            if version.startswith("2") or version.startswith("3"):
                raise _Refuse(505, f"HTTP/{version} is not supported; use HTTP/1.1")
            raise _Refuse(400, f"HTTP/{version} is not supported; use HTTP/1.1")
        h = self.headers
        if version == "1.1" and "host" not in h:
            raise _Refuse(400, "an HTTP/1.1 request needs a Host header")
        te = h.get("transfer-encoding")
        if te is not None and te.lower() != "chunked":
            # RFC 9112 6.1: a transfer coding the server does not understand is answered 501
            raise _Refuse(
                501,
                f"this server takes only chunked bodies, not transfer coding {te!r}; "
                "send chunked or Content-Length",
            )
        length = h.get("content-length")
        if length is not None and int(length) > self.limits.max_body:
            raise _Refuse(
                413,
                f"the body is {length} bytes; this server takes at most {self.limits.max_body} "
                "(send smaller batches)",
            )
        if (
            h.get("expect", "").lower() == "100-continue"
            and version == "1.1"
            and not self.queue
            and self.task is None
        ):  # curl and others wait for this before sending a body (a second, otherwise)
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, data: bytes) -> None:
        self.body_size += len(data)
        if self.body_size > self.limits.max_body:
            raise _Refuse(
                413,
                f"the body is larger than {self.limits.max_body} bytes, the most this server takes "
                "(send smaller batches)",
            )
        self.body.append(data)

    def on_message_complete(self) -> None:
        self.in_message = False
        self.in_head = True
        self.raw_head = 0
        self._disarm()
        keep = self.parser.should_keep_alive() and not self.retiring
        target = self.url.decode("latin-1")
        path, _, query = target.partition("?")
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        self.body = []
        self.queued_bytes += len(body)
        method = self.parser.get_method().decode("latin-1")
        self.queue.append((Request(method, path, query, self.headers, body), keep))
        self.server.waiting += 1
        if not keep:
            self.closing = True  # what follows a Connection: close request is not read

    # -- answering -----------------------------------------------------------------
    async def _answer(self) -> None:
        try:
            while self.queue and not self.closed:
                item, keep = self.queue.popleft()
                if isinstance(item, Response):
                    resp, keep = item, False
                else:
                    self.queued_bytes -= len(item.body)
                    self._flow()
                    try:
                        resp = await self.handler(item)
                    except Exception as exc:  # a bug in a handler must not kill the connection
                        resp = internal_error(exc, f"{item.method} {item.path}")
                    finally:
                        self.server.waiting -= 1
                if self.closed:
                    return
                if self.retiring and not self.queue:
                    keep = False
                self.transport.write(resp.encode(keep))
                if not keep:
                    if resp.status >= 400 and self.closing:
                        self._linger()
                    else:
                        self._close()
                    return
                if not self.writable.is_set():
                    self._flow()
                    try:
                        await asyncio.wait_for(self.writable.wait(), self.limits.read_timeout)
                    except TimeoutError:  # a client that does not read its answers is dropped
                        self.transport.abort()
                        return
        finally:
            self.task = None
        if not self.closed and not self.lingering:
            if self.closing and not self.queue and self.server.stopping:
                self._close()
            elif not self.in_message and not self.queue:
                self._arm(DRAIN_GRACE_S if self.retiring else self.limits.idle_timeout)
                if self.poll is not None:
                    self.poll.answered_now(self.loop)
            self._flow()


def install_fast_loop() -> None:
    """uvloop: about twice the requests per second of the default loop."""
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def serve(
    handler: Handler,
    host: str,
    port: int,
    limits: Limits | None = None,
    sock=None,
    on_count: Callable[[int], None] | None = None,
    busy_poll: BusyPoll | None = None,
) -> HttpServer:
    server = HttpServer(handler, limits, on_count, busy_poll)
    await server.start(host, port, sock)
    return server


def add_limit_arguments(parser) -> None:
    """The ``Limits`` as command-line options (runtime and router)."""
    d = Limits()
    g = parser.add_argument_group("HTTP limits")
    g.add_argument("--max-body-mb", type=float, default=d.max_body / (1 << 20))
    g.add_argument(
        "--max-head-kb", type=float, default=d.max_head / 1024, help="request line and headers"
    )
    g.add_argument("--max-headers", type=int, default=d.max_headers)
    g.add_argument(
        "--read-timeout",
        type=float,
        default=d.read_timeout,
        help="seconds a request may take to arrive once it has begun (408 after)",
    )
    g.add_argument(
        "--keepalive-timeout",
        type=float,
        default=d.idle_timeout,
        help="seconds an idle keep-alive connection is kept",
    )
    g.add_argument(
        "--max-connections",
        type=int,
        default=d.max_connections,
        help="open connections; the next one gets 503",
    )
    g.add_argument(
        "--max-pipeline",
        type=int,
        default=d.max_pipeline,
        help="requests read ahead of their answers on one connection",
    )


def limits_from_args(args) -> Limits:
    return Limits(
        max_head=int(args.max_head_kb * 1024),
        max_headers=args.max_headers,
        max_body=int(args.max_body_mb * (1 << 20)),
        read_timeout=args.read_timeout,
        idle_timeout=args.keepalive_timeout,
        max_connections=args.max_connections,
        max_pipeline=args.max_pipeline,
    )
