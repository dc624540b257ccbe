"""The local endpoint: one port on 127.0.0.1 in front of replica processes.

``python -m nbscale.serving.router NAME`` (started detached by
``nbscale.backends.local_endpoints``) reads the endpoint's row, listens on
its port, and proxies each request to the ready replica with the fewest
requests in flight. Replicas are ``python -m nbscale.serving`` processes on
private loopback ports. Like Knative's activator and autoscaler it:

- scales between min and max replicas on the average number of requests in
  flight per replica (``target_concurrency``); down only after
  ``scale_down_delay_s`` of lower demand,
- scales to zero after ``idle_timeout_s`` without requests when min is 0, and
  holds the next request while a replica cold-starts (the time is recorded),
- replaces a replica that dies, and retries a request that hit a dying one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import Gauge, Histogram

from ..store import get_store
from ..store.endpoints import (
    FAILED,
    READY,
    SCALED_TO_ZERO,
    STARTING,
    add_endpoint_event,
    get_endpoint,
    update_endpoint,
)
from .httpserver import Limits, Request, Response, error_response, install_fast_loop, serve
from .jsoncodec import dumps, loads
from .metrics import ServerMetrics

ENDPOINT_ENV = "NBSCALE_ENDPOINT"
FORWARD_HEADERS = ("authorization", "content-type", "accept", "inference-header-content-length")
KEEP_RESPONSE_HEADERS = ("inference-header-content-length", "retry-after", "www-authenticate")
COLD_START_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Replica:
    id: int
    port: int
    proc: subprocess.Popen
    started: float
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    inflight: int = 0
    draining: bool = False
    idle: list = field(default_factory=list)  # pooled (reader, writer) keep-alive connections
    ready_after: float | None = None

    def to_dict(self) -> dict[str, Any]:
        state = "draining" if self.draining else ("ready" if self.ready.is_set() else "starting")
        return {
            "id": self.id,
            "pid": self.proc.pid,
            "port": self.port,
            "state": state,
            "inflight": self.inflight,
            "started": self.started,
            "start_seconds": self.ready_after,
        }


class Router:
    def __init__(self, name: str):
        self.name = name
        self.store = get_store()
        rec = get_endpoint(self.store, name)
        self.rec = rec
        self.dir = Path(rec.config["dir"])
        self.token_file = self.dir / "token"
        self.token = f"Bearer {self.token_file.read_text().strip()}"
        cfg = rec.config
        self.min, self.max = rec.min_replicas, rec.max_replicas
        self.target = float(cfg.get("target_concurrency", 4))
        self.down_delay = float(cfg.get("scale_down_delay_s", 30))
        self.idle_timeout = float(cfg.get("idle_timeout_s", 60))
        self.replicas: list[Replica] = []
        self.next_id = 0
        self.inflight = 0
        self.last_request = time.monotonic()
        self.samples: deque[tuple[float, int]] = deque()
        self.low_since: float | None = None
        self.restarts = rec.restarts
        self.cold_starts: list[dict[str, float]] = []
        self.metrics = ServerMetrics(name)
        reg = self.metrics.registry
        self.g_replicas = Gauge(
            "nbscale_endpoint_replicas", "Replicas by state", ["model", "state"], registry=reg
        )
        self.h_cold = Histogram(
            "nbscale_endpoint_cold_start_seconds",
            "Time from request to a ready replica",
            ["model"],
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 120),
            registry=reg,
        )
        self.stopping = False
        self.deaths: deque[float] = deque()
        self.respawn_at = 0.0

    # -- replicas ------------------------------------------------------------
    def _spawn(self) -> Replica:
        cfg = self.rec.config
        rid, port = self.next_id, free_port()
        self.next_id += 1
        cmd = [
            sys.executable,
            "-m",
            "nbscale.serving",
            "--model-dir",
            self.rec.model_dir,
            "--port",
            str(port),
            "--token-file",
            str(self.token_file),
            "--replica",
            str(rid),
            "--max-batch-size",
            str(cfg.get("max_batch_size", 32)),
            "--max-batch-delay-ms",
            str(cfg.get("max_batch_delay_ms", 2.0)),
            "--max-queue",
            str(cfg.get("max_queue", 1024)),
        ]
        if cfg.get("capture_dir"):
            cmd += [
                "--capture-dir",
                cfg["capture_dir"],
                "--capture-rate",
                str(cfg.get("capture_rate", 1.0)),
            ]
        env = {**os.environ, ENDPOINT_ENV: self.name, "PYTHONUNBUFFERED": "1"}
        env.setdefault("OMP_NUM_THREADS", "1")
        log = open(self.dir / f"replica-{rid}.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
        log.close()
        rep = Replica(rid, port, proc, time.time())
        self.replicas.append(rep)
        asyncio.get_running_loop().create_task(self._await_ready(rep))
        return rep

    async def _await_ready(self, rep: Replica) -> None:
        start = time.monotonic()
        while rep.proc.poll() is None and not rep.draining:
            try:
                r, w = await asyncio.open_connection("127.0.0.1", rep.port)
                w.write(b"GET /v2/health/ready HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
                status, _, _ = await _read_response(r)
                if status == 200:
                    rep.idle.append((r, w))
                    rep.ready_after = round(time.monotonic() - start, 3)
                    rep.ready.set()
                    self._record()
                    return
                w.close()
            except (OSError, asyncio.IncompleteReadError):
                pass
            await asyncio.sleep(0.05)

    def _stop_replica(self, rep: Replica) -> None:
        rep.draining = True
        with contextlib.suppress(ProcessLookupError):
            rep.proc.send_signal(signal.SIGTERM)  # the replica finishes what it holds, then exits

    def _active(self) -> list[Replica]:
        return [r for r in self.replicas if not r.draining]

    def _record(self, event: str | None = None) -> None:
        ready = sum(1 for r in self._active() if r.ready.is_set())
        status = (READY if ready else STARTING) if self._active() else SCALED_TO_ZERO
        self.g_replicas.labels(self.name, "ready").set(ready)
        self.g_replicas.labels(self.name, "starting").set(len(self._active()) - ready)
        update_endpoint(
            self.store,
            self.name,
            event,
            status=status,
            replicas=len(self._active()),
            restarts=self.restarts,
            error=None,
        )

    async def _ensure_replica(self) -> Replica:
        """A ready replica with the fewest requests in flight; cold-starts one if there is none."""
        ready = [r for r in self.replicas if r.ready.is_set() and not r.draining]
        if ready:
            return min(ready, key=lambda r: r.inflight)
        starting = [r for r in self._active() if r.proc.poll() is None]
        cold = time.monotonic()
        if not starting:
            starting = [self._spawn()]
            self._record("scaled")
        waiters = [asyncio.ensure_future(r.ready.wait()) for r in starting]
        done, pending = await asyncio.wait(
            waiters, timeout=COLD_START_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
        )
        for p in pending:
            p.cancel()
        if not done:
            raise TimeoutError("no replica became ready within 120 s; see the replica logs")
        seconds = time.monotonic() - cold
        if seconds > 0.05:
            self.cold_starts.append({"time": time.time(), "seconds": round(seconds, 3)})
            self.h_cold.labels(self.name).observe(seconds)
        return await self._ensure_replica()

    # -- the control loop ----------------------------------------------------
    async def control(self) -> None:
        while not self.stopping:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            for rep in list(self.replicas):
                if rep.proc.poll() is None:
                    continue
                self.replicas.remove(rep)
                for _, w in rep.idle:
                    w.close()
                if not rep.draining:
                    self.restarts += 1
                    self.deaths.append(now)
                    while self.deaths and self.deaths[0] < now - 60:
                        self.deaths.popleft()
                    # a replica that keeps dying is restarted with growing pauses, not in a tight loop
                    if len(self.deaths) >= 3:
                        self.respawn_at = now + min(30.0, 2.0 ** (len(self.deaths) - 2))
                    add_endpoint_event(
                        self.store,
                        self.name,
                        "replica_died",
                        {"replica": rep.id, "pid": rep.proc.pid, "returncode": rep.proc.returncode},
                    )
                self._record("replica_exit")
            self.samples.append((now, self.inflight))
            while self.samples and self.samples[0][0] < now - 2.0:
                self.samples.popleft()
            self._autoscale(now)

    def _autoscale(self, now: float) -> None:
        active = self._active()
        avg = sum(n for _, n in self.samples) / max(1, len(self.samples))
        want = math.ceil(avg / self.target) if avg > 0 else 0
        if self.min == 0 and not self.inflight and now - self.last_request >= self.idle_timeout:
            want = 0
        else:
            want = max(want, self.min, 1 if active else 0)
        want = min(want, self.max)
        if want > len(active) and now >= self.respawn_at:
            self.low_since = None
            for _ in range(want - len(active)):
                self._spawn()
            self._record("scaled")
        elif want < len(active):
            self.low_since = self.low_since or now
            if now - self.low_since >= self.down_delay or want == 0:
                victim = min(active, key=lambda r: (r.inflight, -r.id))
                self._stop_replica(victim)
                self.low_since = now
                self._record("scaled")
        else:
            self.low_since = None

    # -- HTTP ----------------------------------------------------------------
    async def __call__(self, req: Request) -> Response:
        path = req.path
        if path == "/v2/health/live":
            return Response(200, b'{"live":true}')
        if path in ("/v2/health/ready", "/ping"):
            ok = any(r.ready.is_set() for r in self._active()) or self.min == 0
            return Response(200 if ok else 503, dumps({"ready": ok}) if path != "/ping" else b"")
        if not hmac.compare_digest(
            req.headers.get("authorization", "").encode(), self.token.encode()
        ):
            return error_response(
                401,
                "missing or wrong bearer token (nbscale's clients send it for you)",
                {"www-authenticate": "Bearer"},
            )
        if path == "/nbscale/stats":
            return Response(200, dumps(self.stats()))
        if path == "/nbscale/scale" and req.method == "POST":
            return self.scale(req)
        if path == "/metrics":
            body, ctype = self.metrics.exposition()
            return Response(200, body, ctype)
        return await self.proxy(req)

    def scale(self, req: Request) -> Response:
        try:
            data = loads(req.body)
            lo, hi = int(data["min"]), int(data["max"])
            if not 0 <= lo <= hi or hi < 1:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return error_response(
                400, 'send {"min": MIN, "max": MAX} with 0 <= MIN <= MAX and MAX >= 1'
            )
        self.min, self.max = lo, hi
        update_endpoint(self.store, self.name, "scale", min_replicas=lo, max_replicas=hi)
        active = self._active()
        for rep in sorted(active, key=lambda r: r.inflight)[: max(0, len(active) - hi)]:
            self._stop_replica(rep)
        self._autoscale(time.monotonic())
        return Response(200, dumps({"min": lo, "max": hi}))

    async def proxy(self, req: Request) -> Response:
        start = time.perf_counter()
        self.inflight += 1
        self.last_request = time.monotonic()
        route = (
            "infer"
            if req.path.endswith("/infer")
            else "invocations"
            if req.path == "/invocations"
            else "other"
        )
        model_s = 0.0  # time in the replica that answered (ModelLatency)
        try:
            resp = None
            for _attempt in range(3):  # a replica killed mid-request: try another one
                rep = await self._ensure_replica()
                try:
                    sent = time.perf_counter()
                    resp = await self._forward(rep, req)
                    model_s = time.perf_counter() - sent
                    break
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    await asyncio.sleep(0.05)  # lets the control loop see a dead replica
                    if rep.proc.poll() is not None:
                        rep.ready.clear()
            if resp is None:
                resp = error_response(
                    502, "every replica failed this request; see the replica logs"
                )
        except TimeoutError as exc:
            resp = error_response(503, str(exc), {"retry-after": "5"})
        finally:
            self.inflight -= 1
        total = time.perf_counter() - start
        self.metrics.observe_request(route, resp.status, total)
        if route != "other":
            self.metrics.observe_split(route, model_s, total - model_s)
        return resp

    async def _forward(self, rep: Replica, req: Request) -> Response:
        rep.inflight += 1
        try:
            if rep.idle:
                r, w = rep.idle.pop()
            else:
                r, w = await asyncio.open_connection("127.0.0.1", rep.port)
            target = req.path + ("?" + req.query if req.query else "")
            head = [
                f"{req.method} {target} HTTP/1.1",
                "host: replica",
                f"content-length: {len(req.body)}",
            ]
            head += [f"{k}: {req.headers[k]}" for k in FORWARD_HEADERS if k in req.headers]
            try:
                w.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + req.body)
                status, headers, body = await _read_response(r)
            except BaseException:
                w.close()
                raise
            if headers.get("connection") == "close":
                w.close()
            else:
                rep.idle.append((r, w))
            extra = {k: headers[k] for k in KEEP_RESPONSE_HEADERS if k in headers}
            return Response(status, body, headers.get("content-type", "application/json"), extra)
        finally:
            rep.inflight -= 1

    def stats(self) -> dict[str, Any]:
        active = self._active()
        snap = self.metrics.rolling.snapshot({"replicas": len(active), "inflight": self.inflight})
        snap.update(
            name=self.name,
            inflight=self.inflight,
            restarts=self.restarts,
            replicas={
                "current": len(active),
                "ready": sum(1 for r in active if r.ready.is_set()),
                "min": self.min,
                "max": self.max,
            },
            replica_list=[r.to_dict() for r in self.replicas],
            cold_starts=self.cold_starts[-20:],
            target_concurrency=self.target,
        )
        return snap

    async def run(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.rec.port))
        server = await serve(
            self,
            "127.0.0.1",
            self.rec.port,
            Limits(max_body=int(self.rec.config.get("max_body_mb", 16) * (1 << 20))),
            sock=sock,
        )
        update_endpoint(self.store, self.name, None, pid=os.getpid())
        for _ in range(self.min):
            self._spawn()
        self._record("started")
        deadline = time.monotonic() + COLD_START_TIMEOUT_S
        while (
            self.min
            and not all(r.ready.is_set() for r in self.replicas)
            and time.monotonic() < deadline
        ):
            dead = next((r for r in self.replicas if r.proc.poll() is not None), None)
            if (
                dead is not None
            ):  # a broken artifact: fail the deploy now, with the replica's own words
                log = (
                    (self.dir / f"replica-{dead.id}.log")
                    .read_text(errors="replace")
                    .strip()
                    .splitlines()
                )
                raise RuntimeError(
                    f"replica exited with code {dead.proc.returncode} before it was ready: "
                    + " | ".join(log[-3:])
                )
            await asyncio.sleep(0.05)
        self._record("ready")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        control = loop.create_task(self.control())
        await stop.wait()
        self.stopping = True
        control.cancel()
        await server.shutdown(timeout=10)
        for rep in self.replicas:
            self._stop_replica(rep)
        deadline = time.monotonic() + 15
        while any(r.proc.poll() is None for r in self.replicas) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for rep in self.replicas:
            if rep.proc.poll() is None:
                rep.proc.kill()
                rep.proc.wait()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        k, sep, v = line.partition(":")
        if sep:
            headers[k.strip().lower()] = v.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nbscale.serving.router")
    p.add_argument("name")
    p.add_argument(
        "--daemonize", action="store_true", help="fork once more so no caller is our parent"
    )
    args = p.parse_args(argv)
    if args.daemonize and os.fork() > 0:
        os._exit(0)
    install_fast_loop()
    router = None
    try:
        router = Router(args.name)
        asyncio.run(router.run())
    except Exception as exc:
        with contextlib.suppress(Exception):
            update_endpoint(
                get_store(),
                args.name,
                "failed",
                status=FAILED,
                error=f"{type(exc).__name__}: {exc}",
            )
        if router:
            for rep in router.replicas:
                with contextlib.suppress(Exception):
                    rep.proc.kill()
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
