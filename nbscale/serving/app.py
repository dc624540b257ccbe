"""The serving runtime's routes: Open Inference Protocol v2, SageMaker, metrics.

Health probes (``/v2/health/*``, ``/ping``) are open because Kubernetes and
SageMaker probe without credentials and they reveal nothing but liveness;
every other route needs ``Authorization: Bearer <token>`` when a token is set, or
``X-Nbscale-Token: <token>`` where a gateway in front takes ``Authorization`` for its
own bearer token (Kubeflow's ingress behind Dex or an auth proxy).
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import time

from ..version import __version__
from .batching import Batcher, Overloaded
from .capture import DataCapture
from .handler import ModelHandler, as_numpy
from .httpserver import Request, Response, error_response, internal_error
from .jsoncodec import dumps
from .loadfile import LoadWriter
from .metrics import ServerMetrics
from .protocol import ProtocolError, check_npy, encode_infer, parse_infer

#: the endpoint token where ``Authorization`` carries a gateway's (lower-case: as parsed)
TOKEN_HEADER = "x-nbscale-token"
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/ping"})
NPY_TYPES = ("application/x-npy", "application/npy")


class ServingApp:
    def __init__(
        self,
        handler: ModelHandler,
        token: str | None,
        max_batch_size: int = 32,
        max_batch_delay_ms: float = 2.0,
        max_queue: int = 1024,
        latency_target_ms: float = 25.0,
        capture: DataCapture | None = None,
    ):
        self.handler = handler
        self.name = handler.name
        self.token = f"Bearer {token}" if token else None
        self.raw_token = token
        self.metrics = ServerMetrics(self.name)
        self.capture = capture
        self.ready = False
        self.inflight = 0
        self.connections = 0
        self.last_request = time.monotonic()
        self.http = None  # the HttpServer serving this app (its count of waiting requests)
        self.batcher = Batcher(
            handler.run,
            max_batch_size,
            max_batch_delay_ms,
            max_queue,
            latency_target_ms,
            on_batch=self.metrics.observe_batch,
        )
        prefix = f"/v2/models/{self.name}"
        self.routes = {
            ("GET", "/v2/health/live"): self.live,
            ("GET", "/v2/health/ready"): self.health_ready,
            ("GET", "/ping"): self.ping,
            ("GET", "/v2"): self.server_metadata,
            ("GET", prefix): self.model_metadata,
            ("GET", prefix + "/versions/1"): self.model_metadata,
            ("GET", prefix + "/ready"): self.model_ready,
            ("GET", prefix + "/versions/1/ready"): self.model_ready,
            ("POST", prefix + "/infer"): self.infer,
            ("POST", prefix + "/versions/1/infer"): self.infer,
            ("POST", "/invocations"): self.invocations,
            ("GET", "/metrics"): self.prometheus,
            ("GET", "/nbscale/stats"): self.stats,
        }

    async def start(self) -> None:
        self.batcher.start()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.handler.load)
        self.metrics.load_time.labels(self.name).set(self.handler.load_seconds)
        # the model and the imported modules live as long as the server: keeping them out of
        # the collector's reach makes full collections (pauses on the request path) short
        gc.collect()
        gc.freeze()
        self.ready = True

    def _token_beside(self, req: Request) -> bool:
        """The endpoint's token in ``X-Nbscale-Token``, where a gateway in front took
        ``Authorization`` for its own."""
        ours = req.headers.get(TOKEN_HEADER, "")
        return bool(ours) and hmac.compare_digest(ours.encode("latin-1"), self.raw_token.encode())

    def authorized(self, req: Request) -> bool:
        """The endpoint's token in ``Authorization`` (or beside it), or no token is needed."""
        if not self.token:
            return True
        given = req.headers.get("authorization", "")
        return hmac.compare_digest(
            given.encode("latin-1"), self.token.encode()
        ) or self._token_beside(req)  # only where Authorization is not ours

    def on_connection(self, delta: int) -> None:
        self.connections += delta

    async def __call__(self, req: Request, load: LoadWriter | None = None) -> Response:
        """Answer ``req``; with ``load`` (a local endpoint's replica serving the endpoint's
        socket), count it there as the router would have: every request with the token but the
        health probes."""
        if req.path in OPEN_PATHS:
            load = None
        # the token first: an anonymous caller learns nothing, not even which routes or models exist
        elif not self.authorized(req):
            return error_response(
                401,
                "missing or wrong bearer token (nbscale's clients send it for you)",
                {"www-authenticate": "Bearer"},
            )
        route = self.routes.get((req.method, req.path))
        if load is None:
            return self._not_found(req) if route is None else await route(req)
        load.begin()
        try:
            return self._not_found(req) if route is None else await route(req)
        finally:
            load.end()

    def _not_found(self, req: Request) -> Response:
        parts = req.path.split("/")
        if len(parts) >= 4 and parts[1:3] == ["v2", "models"] and parts[3] != self.name:
            return error_response(
                404, f"unknown model {parts[3]!r}; this server serves {self.name!r}"
            )
        known_paths = {p for _, p in self.routes}
        if req.path in known_paths:
            return error_response(405, f"{req.method} is not allowed on {req.path}")
        return error_response(404, f"no route {req.method} {req.path}")

    # -- health and metadata -------------------------------------------------
    async def live(self, req: Request) -> Response:
        return Response(200, b'{"live":true}')

    async def health_ready(self, req: Request) -> Response:
        return Response(200 if self.ready else 503, dumps({"ready": self.ready}))

    async def ping(self, req: Request) -> Response:
        return Response(200 if self.ready else 503, b"")

    async def server_metadata(self, req: Request) -> Response:
        return Response(
            200,
            dumps(
                {
                    "name": "nbscale",
                    "version": __version__,
                    "extensions": ["binary_tensor_data", "sagemaker"],
                }
            ),
        )

    async def model_metadata(self, req: Request) -> Response:
        h = self.handler
        return Response(
            200,
            dumps(
                {
                    "name": self.name,
                    "versions": ["1"],
                    "platform": f"pytorch_{h.manifest.get('format', 'custom')}",
                    "inputs": [s.to_dict() for s in h.inputs],
                    "outputs": [s.to_dict() for s in h.outputs],
                }
            ),
        )

    async def model_ready(self, req: Request) -> Response:
        return Response(200 if self.ready else 503, dumps({"name": self.name, "ready": self.ready}))

    async def prometheus(self, req: Request) -> Response:
        self.metrics.queue_depth.labels(self.name).set(self.batcher.depth)
        self.metrics.inflight.labels(self.name).set(self.inflight)
        self.metrics.batch_limit.labels(self.name).set(self.batcher.limit)
        body, ctype = self.metrics.exposition()
        return Response(200, body, ctype)

    async def stats(self, req: Request) -> Response:
        snap = self.metrics.rolling.snapshot(digest="digest=1" in req.query)
        snap.update(
            inflight=self.inflight,
            queue_depth=self.batcher.depth,
            batch_limit=self.batcher.limit,
            load_seconds=self.handler.load_seconds,
            ready=self.ready,
            connections=self.connections,
            idle_s=0.0 if self.inflight else round(time.monotonic() - self.last_request, 1),
        )
        return Response(200, dumps(snap))

    # -- inference -------------------------------------------------------------
    async def _guarded(self, route: str, req: Request, work) -> Response:
        start = time.perf_counter()
        self.inflight += 1
        self.last_request = time.monotonic()
        try:
            if not self.ready:
                resp = error_response(
                    503, "the model is still loading; retry shortly", {"retry-after": "1"}
                )
            else:
                resp = await work(req)
        except ProtocolError as exc:
            resp = error_response(exc.status, exc.message, exc.headers)
        except Overloaded as exc:
            resp = error_response(503, str(exc), {"retry-after": "1"})
        except Exception as exc:
            resp = internal_error(exc, f"{route} of model {self.name!r}")
        finally:
            self.inflight -= 1
        self.metrics.observe_request(route, resp.status, time.perf_counter() - start)
        return resp

    async def infer(self, req: Request) -> Response:
        return await self._guarded("infer", req, self._infer)

    async def _infer(self, req: Request) -> Response:
        header_len = req.headers.get("inference-header-content-length")
        if header_len is not None:
            try:
                header_len = int(header_len)
            except ValueError:
                raise ProtocolError(
                    400, "Inference-Header-Content-Length is not an integer"
                ) from None
        parsed = parse_infer(req.body, header_len, self.handler.inputs)
        rows = parsed.inputs[self.handler.input.name]
        out = await self.batcher.submit(rows, self._alone())
        outputs = {self.handler.outputs[0].name: out}
        body, headers = encode_infer(self.name, "1", parsed, outputs)
        if self.capture:
            self.capture.offer(self.name, parsed.id, parsed.inputs, outputs)
        ctype = "application/octet-stream" if headers else "application/json"
        return Response(200, body, ctype, headers)

    def _alone(self) -> bool:
        """No other request read and waiting for its answer: nothing to batch this one with."""
        return self.http is not None and self.http.waiting <= 1

    async def invocations(self, req: Request) -> Response:
        return await self._guarded("invocations", req, self._invocations)

    async def _invocations(self, req: Request) -> Response:
        h = self.handler
        ctype = req.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        accept = (
            req.headers.get("accept", "application/json")
            .split(",")[0]
            .split(";")[0]
            .strip()
            .lower()
        )
        if accept in ("*/*", ""):
            accept = ctype if ctype in NPY_TYPES else "application/json"
        if ctype not in NPY_TYPES and ctype != "application/json":
            raise ProtocolError(
                415,
                f"content type {ctype!r} is not supported; send application/json or application/x-npy",
            )
        if ctype in NPY_TYPES:  # the header's shape and dtype, checked before anything is allocated
            check_npy(req.body, h.input)
        try:
            data = h.input_fn(req.body, ctype)
        except ProtocolError:
            raise
        except Exception as exc:
            raise ProtocolError(400, f"the body could not be read as {ctype}: {exc}") from None
        rows = h.check_rows(as_numpy(data))
        out = await self.batcher.submit(rows, self._alone())
        body = h.output_fn(out, accept)
        if isinstance(body, str):
            body = body.encode()
        if self.capture:
            self.capture.offer(self.name, None, {h.input.name: rows}, {h.outputs[0].name: out})
        return Response(200, bytes(body), accept if accept in NPY_TYPES else "application/json")
