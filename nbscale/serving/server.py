"""Run one serving process: ``python -m nbscale.serving --model-dir DIR``.

Inside a SageMaker container (``serve`` argument or ``SAGEMAKER_BIND_TO_PORT``)
it reads ``/opt/ml/model``, binds 0.0.0.0:8080 and leaves authentication to
the platform, as the SageMaker hosting contract expects. Anywhere else it
binds 127.0.0.1 and needs a token (``--token-file`` or
``NBSCALE_SERVING_TOKEN``) unless ``--insecure-no-auth`` says the caller has
put an authenticating proxy in front (a KServe ingress).

``--metrics-port`` adds a second listener that answers only ``GET /metrics``,
without the token: the port Prometheus scrapes in a KServe pod and that
``Endpoint.metrics()`` reads through the API server's pod proxy (which keeps
the caller's credentials to itself). It is not the port the ingress routes
to, so callers from outside never see it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path

from .app import ServingApp
from .busypoll import WINDOW_ENV, WINDOW_US, BusyPoll, window_us
from .capture import DataCapture
from .handler import ModelHandler
from .httpserver import (
    HttpServer,
    Limits,
    Request,
    Response,
    add_limit_arguments,
    error_response,
    install_fast_loop,
    limits_from_args,
    serve,
)
from .loadfile import LoadWriter
from .upstream import Pool, UpstreamError, exchange


class MetricsOnly:
    """The metrics listener: ``GET /metrics`` of ``app``, nothing else, no token."""

    def __init__(self, app: ServingApp):
        self.app = app

    async def __call__(self, req: Request) -> Response:
        if req.path != "/metrics":
            return error_response(404, f"this port serves only /metrics, not {req.path}")
        if req.method != "GET":
            return error_response(405, f"{req.method} is not allowed on /metrics")
        return await self.app.prometheus(req)


class SharedFront:
    """The endpoint's own listening socket, served by its only replica (no proxy hop).

    The router hands the socket over with SIGUSR1 once this replica is the endpoint's only
    one and ready (or, for an endpoint deployed with ``direct``, once it is ready: every
    replica then accepts on the socket; SIGUSR1 while serving it lets this replica's
    connections go, for the kernel to spread them over one that joined), and takes it back
    with SIGUSR2 before it scales up
    (not with ``direct``), scales this replica down, scales to zero or tears
    the endpoint down after its idle TTL: then this replica stops
    accepting on it, finishes what it holds and closes its idle keep-alive connections (their
    clients reconnect, to the router). Inference, health and metadata are this replica's own
    routes; what belongs to the router (``/nbscale/*``, ``/metrics``) is passed on to it.

    The requests the router would have counted (every authorized one but the health probes
    and the router's own routes) are counted in ``load`` (``nbscale.serving.loadfile``), with
    whether this replica serves the socket now: the router autoscales, scales to zero and
    applies the idle TTL on them, and pauses or stops this replica only once it has given the
    socket back and holds no request or connection from it.
    """

    ROUTER_PATHS = ("/nbscale/", "/metrics")

    def __init__(
        self,
        app: ServingApp,
        own: HttpServer,
        listen_fd: int,
        router_port_file: str,
        limits: Limits | None,
        load: LoadWriter | None = None,
    ):
        self.app = app
        self.load = load
        self.own = own
        self.listen_fd = listen_fd
        self.router_port_file = Path(router_port_file)
        self.limits = limits or Limits()
        self.server: HttpServer | None = None
        self.pool = Pool()
        self.pool_port = 0
        self.want = False
        self.busy = False

    def request(self, serve_it: bool) -> None:
        """From a signal handler: serve the shared socket (True) or give it back (False).
        Asked to serve while it already does (another replica joined it on the socket, with
        ``direct``), it lets its connections go, so that their clients connect again and the
        kernel spreads them over every replica serving the socket."""
        if serve_it and self.want and self.server is not None and not self.busy:
            released = self.server.release()
            print(f"another replica serves the socket: let {released} connections go", flush=True)
            return
        self.want = serve_it
        if not self.busy:
            asyncio.get_running_loop().create_task(self._apply())

    async def _apply(self) -> None:
        self.busy = True
        try:
            while (self.server is None) == self.want:  # a change of mind meanwhile is applied too
                if self.want:
                    if self.load is not None:  # before the first accept: the router must wait
                        self.load.set_serving(True)
                    sock = socket.socket(fileno=os.dup(self.listen_fd))
                    self.server = await serve(
                        self,
                        "",
                        0,
                        self.limits,
                        sock=sock,
                        on_count=self.app.on_connection,
                        busy_poll=self.own.busy_poll,
                    )
                    self.app.http = self.server  # its waiting requests are what batching sees
                    print("serving the endpoint's socket directly", flush=True)
                else:
                    server, self.server = self.server, None
                    self.app.http = self.own
                    await server.shutdown(timeout=10)
                    # no connection from the shared socket is left: the router may pause us
                    if self.load is not None:
                        self.load.set_serving(False)
                    print("gave the endpoint's socket back to the router", flush=True)
        finally:
            self.busy = False

    async def close(self) -> None:
        self.want = False
        if self.server is not None:
            server, self.server = self.server, None
            await server.shutdown(timeout=10)
        if self.load is not None:
            self.load.set_serving(False)
        self.pool.close()

    async def __call__(self, req: Request) -> Response:
        path = req.path
        if path.startswith(self.ROUTER_PATHS):
            return await self._to_router(req)
        route = (
            "infer"
            if path.endswith("/infer")
            else "invocations"
            if path == "/invocations"
            else None
        )
        if route is None:
            return await self.app(req, self.load)
        start = time.perf_counter()
        resp = await self.app(req, self.load)
        # the endpoint's ModelLatency / OverheadLatency, which the router records when it
        # proxies: here the whole request is the model container's, with no hop added
        self.app.metrics.observe_split(route, time.perf_counter() - start, 0.0)
        return resp

    async def _to_router(self, req: Request) -> Response:
        """Pass a request for the router itself on. While the router is being restarted (its
        supervisor starts a new one at once, on a new private port) the request waits for it,
        as a connection to the endpoint's port waits in the listen backlog."""
        target = req.path + ("?" + req.query if req.query else "")
        head = [
            f"{req.method} {target} HTTP/1.1",
            "host: router",
            f"content-length: {len(req.body)}",
        ]
        head += [f"{k}: {v}" for k, v in req.headers.items() if k in FORWARD_HEADERS]
        encoded = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ROUTER_WAIT_S
        while True:
            try:
                port = int(self.router_port_file.read_text())
            except (OSError, ValueError):
                port = 0
            if port and port != self.pool_port:  # a new router: the old one's connections are gone
                self.pool.close()
                self.pool, self.pool_port = Pool(), port
            try:
                if not port:
                    raise UpstreamError(502, "the router has not said its port", False)
                status, headers, body = await exchange(
                    port, self.pool, encoded, req.body, 60.0, 64 * 1024, 256 << 20
                )
                break
            except UpstreamError as exc:
                if exc.answered or loop.time() > deadline:
                    return error_response(exc.status, f"the router: {exc.message}")
                await asyncio.sleep(0.05)  # not reached: a router restarting
        extra = {k: headers[k] for k in ("www-authenticate", "retry-after") if k in headers}
        return Response(status, body, headers.get("content-type", "application/json"), extra)


FORWARD_HEADERS = ("authorization", "content-type", "accept")
ROUTER_WAIT_S = 30.0  # how long a request for the router waits for a restarted one


def _port(text: str) -> int:
    """A TCP port number, or one usage line saying what a port is."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port: give 0 to 65535")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m nbscale.serving", description="nbscale serving runtime"
    )
    p.add_argument("mode", nargs="?", choices=["serve"], help="'serve': SageMaker container mode")
    p.add_argument(
        "--model-dir",
        help="artifact directory, or the URI of its model.tar.gz (s3://...); "
        "default /opt/ml/model in a container",
    )
    p.add_argument("--host", help="address to bind (default 127.0.0.1; 0.0.0.0 in a container)")
    p.add_argument(
        "--port",
        type=_port,
        help="port (default $SAGEMAKER_BIND_TO_PORT or 8080; 0: any free port)",
    )
    p.add_argument("--port-file", help="write the bound port here once listening (with --port 0)")
    p.add_argument("--token-file", help="file holding the bearer token clients must send")
    p.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="serve without a token (behind an authenticating proxy)",
    )
    p.add_argument(
        "--metrics-port",
        type=_port,
        help="also answer GET /metrics, without the token, on this port (KServe: 8095)",
    )
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-batch-delay-ms", type=float, default=2.0)
    p.add_argument(
        "--max-queue", type=int, default=1024, help="rows waiting before requests get 503"
    )
    p.add_argument(
        "--latency-target-ms",
        type=float,
        default=25.0,
        help="batch run time the batch size adapts to",
    )
    add_limit_arguments(p)
    p.add_argument(
        "--busy-poll-us",
        help=f"after an answer, poll for the next request this long before sleeping, when the "
        f"last one came that quickly (default ${WINDOW_ENV} or {WINDOW_US:g}; 0: off)",
    )
    p.add_argument("--capture-dir", help="write a sampled JSONL of inputs and outputs here")
    p.add_argument("--capture-rate", type=float, default=1.0)
    p.add_argument("--replica", default="0", help="replica id (names capture files)")
    p.add_argument(
        "--listen-fd",
        type=int,
        help="a local endpoint's listening socket (inherited): served from SIGUSR1 to SIGUSR2, "
        "while this is the endpoint's only replica and its router only supervises",
    )
    p.add_argument(
        "--router-port-file",
        help="with --listen-fd: the file naming the router's private port, where requests for "
        "the router itself (/nbscale/*, /metrics) arriving on the shared socket are sent",
    )
    p.add_argument(
        "--front-limits",
        default="{}",
        help="with --listen-fd: the endpoint's HTTP limits (JSON of Limits fields) for the "
        "shared socket",
    )
    p.add_argument(
        "--load-file",
        help="with --listen-fd: publish the requests served on the shared socket (in flight, "
        "last one's time) and whether it is served now in this file, for the router",
    )
    return p.parse_args(argv)


def fetch_model(uri: str) -> str:
    """``s3://.../model.tar.gz`` (or ``file://``): download (size and, for a content-addressed
    URI, sha256 checked), unpack without links or paths leaving the folder, return the folder.
    The artifact's own signature is checked afterwards, as for a local folder."""
    import tarfile
    import tempfile

    from ..storage import fetch, store_for

    work = Path(tempfile.mkdtemp(prefix="nbscale-model-"))
    archive = fetch(uri, work / "model.tar.gz", store=store_for(uri))
    target = work / "model"
    target.mkdir()
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    archive.unlink()
    return str(target)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    container = args.mode == "serve" or "SAGEMAKER_BIND_TO_PORT" in os.environ
    model_dir = args.model_dir or ("/opt/ml/model" if container else None)
    if not model_dir:
        print("nbscale.serving: error: --model-dir is required", file=sys.stderr)
        return 2
    if "://" in model_dir:
        try:
            model_dir = fetch_model(model_dir)
        except Exception as exc:  # noqa: BLE001 - one line, then exit
            print(f"nbscale.serving: error: cannot fetch {model_dir}: {exc}", file=sys.stderr)
            return 2
    token = os.environ.pop("NBSCALE_SERVING_TOKEN", None)
    if args.token_file:
        token = Path(args.token_file).read_text().strip()
    if not token and not (container or args.insecure_no_auth):
        print(
            "nbscale.serving: error: no token; give --token-file, set NBSCALE_SERVING_TOKEN, "
            "or pass --insecure-no-auth behind an authenticating proxy",
            file=sys.stderr,
        )
        return 2
    host = args.host or ("0.0.0.0" if container else "127.0.0.1")
    port = (
        args.port
        if args.port is not None
        else int(os.environ.get("SAGEMAKER_BIND_TO_PORT", "8080"))
    )
    try:
        limits = limits_from_args(args)
        front_limits = Limits(**json.loads(args.front_limits))
        poll_us = (
            window_us(os.environ.get(WINDOW_ENV))
            if args.busy_poll_us is None
            else window_us(args.busy_poll_us, "--busy-poll-us")
        )
        if args.listen_fd is not None and not args.router_port_file:
            raise ValueError("--listen-fd needs --router-port-file")
    except (ValueError, TypeError) as exc:
        print(f"nbscale.serving: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    install_fast_loop()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run(args, model_dir, token, host, port, limits, front_limits, poll_us))
    return 0


async def _run(
    args: argparse.Namespace,
    model_dir: str,
    token: str | None,
    host: str,
    port: int,
    limits: Limits,
    front_limits: Limits | None = None,
    poll_us: float = 0.0,
) -> None:
    handler = ModelHandler(model_dir)
    capture = (
        DataCapture(args.capture_dir, args.capture_rate, replica=args.replica)
        if args.capture_dir
        else None
    )
    app = ServingApp(
        handler,
        token,
        args.max_batch_size,
        args.max_batch_delay_ms,
        args.max_queue,
        args.latency_target_ms,
        capture,
    )
    poll = BusyPoll(poll_us / 1e6) if poll_us > 0 else None
    server = await serve(app, host, port, limits, on_count=app.on_connection, busy_poll=poll)
    app.http = server
    metrics_server = (
        await serve(MetricsOnly(app), host, args.metrics_port, limits)
        if args.metrics_port is not None
        else None
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    front = None
    if args.listen_fd is not None:
        load = LoadWriter(args.load_file) if args.load_file else None
        front = SharedFront(app, server, args.listen_fd, args.router_port_file, front_limits, load)
        loop.add_signal_handler(signal.SIGUSR1, front.request, True)
        loop.add_signal_handler(signal.SIGUSR2, front.request, False)
    port = server.port
    if args.port_file:  # the port is the replica's own pick (port 0): no pick-and-release race
        tmp = Path(f"{args.port_file}.tmp")
        tmp.write_text(str(port))
        tmp.replace(args.port_file)
    print(f"nbscale serving {handler.name!r} on http://{host}:{port}", flush=True)
    if metrics_server is not None:
        print(f"metrics (no token) on http://{host}:{metrics_server.port}/metrics", flush=True)
    await app.start()
    loaded = getattr(handler.model, "loaded", None)
    print(
        f"ready after {handler.load_seconds:.2f}s" + (f"; model loaded {loaded}" if loaded else ""),
        flush=True,
    )
    await stop.wait()
    # in-flight requests finish before the process ends: a scale-down drops nothing
    if front is not None:
        await front.close()
    await server.shutdown(timeout=10)
    if metrics_server is not None:
        await metrics_server.shutdown(timeout=1)
    if capture:
        capture.flush()
    await app.batcher.stop()
