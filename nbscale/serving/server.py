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
import logging
import os
import signal
import sys
from pathlib import Path

from .app import ServingApp
from .capture import DataCapture
from .handler import ModelHandler
from .httpserver import (
    Limits,
    Request,
    Response,
    add_limit_arguments,
    error_response,
    install_fast_loop,
    limits_from_args,
    serve,
)


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
    p.add_argument("--capture-dir", help="write a sampled JSONL of inputs and outputs here")
    p.add_argument("--capture-rate", type=float, default=1.0)
    p.add_argument("--replica", default="0", help="replica id (names capture files)")
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
    except ValueError as exc:
        print(f"nbscale.serving: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    install_fast_loop()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run(args, model_dir, token, host, port, limits))
    return 0


async def _run(
    args: argparse.Namespace,
    model_dir: str,
    token: str | None,
    host: str,
    port: int,
    limits: Limits,
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
    server = await serve(app, host, port, limits, on_count=app.on_connection)
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
    port = server.port
    if args.port_file:  # the port is the replica's own pick (port 0): no pick-and-release race
        tmp = Path(f"{args.port_file}.tmp")
        tmp.write_text(str(port))
        tmp.replace(args.port_file)
    print(f"nbscale serving {handler.name!r} on http://{host}:{port}", flush=True)
    if metrics_server is not None:
        print(f"metrics (no token) on http://{host}:{metrics_server.port}/metrics", flush=True)
    await app.start()
    print(f"ready after {handler.load_seconds:.2f}s", flush=True)
    await stop.wait()
    # in-flight requests finish before the process ends: a scale-down drops nothing
    await server.shutdown(timeout=10)
    if metrics_server is not None:
        await metrics_server.shutdown(timeout=1)
    if capture:
        capture.flush()
    await app.batcher.stop()
