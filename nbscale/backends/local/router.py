"""The local endpoint: one port on 127.0.0.1 in front of replica processes.

``python -m nbscale.backends.local.router NAME --daemonize`` (started by
``nbscale.backends.local.endpoints``) becomes the endpoint's supervisor
(``supervisor.py``), which owns the port and runs this router with the
listening socket, restarting it if it dies. Replicas are ``python -m
nbscale.serving`` processes that bind a free loopback port themselves and
report it in a port file. Like Knative's activator and autoscaler the router:

- scales between min and max replicas on the average number of requests in
  flight per replica (``target_concurrency``); down only after
  ``scale_down_delay_s`` of lower demand,
- scales to zero after ``idle_timeout_s`` without requests when min is 0: the
  last replica is kept stopped (SIGSTOP, model loaded, no CPU) and the next
  request wakes it (SIGCONT) in milliseconds; a fresh start is only needed
  when there is no such standby (the wait is recorded either way),
- replaces a replica that dies,
- times out replica calls (504) and refuses oversized or malformed replica
  answers (502), and keeps its control loop running through failures, and
- writes its replicas to ``replicas.json`` so a router started after a crash
  adopts them instead of starting new ones.

By default (``direct``) every ready replica serves the endpoint's socket
itself, at any replica count, gunicorn's prefork way: the kernel hands each
new connection to one of them, and the router only supervises and scales.
Each replica publishes the requests it serves in ``replica-<id>.load``
(``nbscale.serving.loadfile``), which the router reads every tick to
autoscale, scale to zero and apply the idle TTL. A replica joins once it is
ready (those already serving then let their connections go, so that
keep-alive clients connect again and are spread over it too) and leaves (it
gives the socket back, finishes what it holds) before it is stopped by a
scale-down; the router takes the socket back only to scale to zero or apply
the idle TTL, and pauses or stops a replica only once it holds nothing from
the socket. The price: a replica that dies drops the connections it held, and
nothing retries their requests. ``/metrics`` and ``/nbscale/stats`` then merge
the replicas' own figures (``replica_figures``).

Deployed with ``direct`` false (``--proxy``), the router proxies each request
to the ready replica with the fewest in flight whenever two or more replicas
run, and retries a request that hit a dying one on another; a lone replica
(but one of an endpoint fixed at two or more) still serves the socket, and the
router takes the socket back before it scales up. ``NBSCALE_DIRECT=0`` keeps
the router in front of every request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import math
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest

from ...serving.httpserver import (
    Limits,
    Request,
    Response,
    error_response,
    install_fast_loop,
    serve,
)
from ...serving.jsoncodec import dumps, loads
from ...serving.loadfile import LoadReader
from ...serving.metrics import ServerMetrics
from ...serving.upstream import POOL_IDLE_S, Pool, UpstreamError, exchange
from ...serving.zygote import WatchedProcess, Zygote, ZygoteError, claim_warm, warm_dir
from ...store import get_store
from ...store.endpoints import (
    FAILED,
    READY,
    SCALED_TO_ZERO,
    STARTING,
    add_endpoint_event,
    get_endpoint,
    update_endpoint,
)
from . import gpus
from .cpu_room import ROOM_FOR_A_REPLICA, CpuRoom
from .hop import proxy_every_request
from .processes import alive, create_time
from .replica_figures import merged_exposition, merged_stats

ENDPOINT_ENV = "NBSCALE_ENDPOINT"
TAG_ENV = "NBSCALE_ENDPOINT_TAG"  # set by endpoints.py: the home-qualified tag
FORWARD_HEADERS = ("authorization", "content-type", "accept", "inference-header-content-length")
KEEP_RESPONSE_HEADERS = ("inference-header-content-length", "retry-after", "www-authenticate")
COLD_START_TIMEOUT_S = 120.0
REPLICA_KEEPALIVE_S = 2 * POOL_IDLE_S
MAX_RESPONSE_HEAD = 64 * 1024
ZYGOTE_ENV = "NBSCALE_ZYGOTE"  # 0: every replica starts as a fresh Python process
ZYGOTE_WAIT_S = 60.0  # how long a deploy waits for the zygote before starting replicas afresh
ZYGOTE_RETRY_S = 10.0
log = logging.getLogger("nbscale.backends.local.router")


class StartupError(Exception):
    """The endpoint cannot start (a replica that dies before it is ready): the deploy fails."""


class Adopted(WatchedProcess):
    """A replica started by an earlier router of this endpoint: watched by pid, not waited on."""

    def __init__(self, pid: int, created: float):
        super().__init__(pid)
        self.created = created

    def gone(self) -> bool:
        return not alive(self.pid, self.created)


@dataclass(eq=False)  # one replica is one process: compared by identity
class Replica:
    id: int
    port: int  # 0 until the replica has bound its own port and written it to its port file
    proc: Any  # subprocess.Popen, or Adopted after a router restart
    started: float
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    inflight: int = 0
    draining: bool = False
    paused: bool = False  # SIGSTOPped standby of an endpoint scaled to zero
    to_standby: bool = False  # starting, to be paused as the standby once ready
    pool: Pool = field(default_factory=Pool)
    ready_after: float | None = None
    created: float = 0.0
    how: str = "adopted"  # fresh (a new Python process), zygote (forked), adopted (after a restart)
    can_direct: bool = False  # holds the endpoint's socket: can serve it without the router
    direct: bool = False  # serves the endpoint's socket itself (SIGUSR1 sent, no SIGUSR2 since)
    load: LoadReader | None = None  # its replica-<id>.load: what it serves on the shared socket
    shared_inflight: int = 0  # requests in flight on the shared socket, at the last read
    shared_serving: bool = False  # it may still hold connections from the shared socket
    leaving: bool = False  # chosen to go by a scale-down: it gives the socket back first

    def state(self) -> str:
        if self.draining:
            return "draining"
        if self.paused:
            return "paused"
        return "ready" if self.ready.is_set() else "starting"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "pid": self.proc.pid,
            "port": self.port,
            "state": self.state(),
            "inflight": self.inflight + self.shared_inflight,
            "started": self.started,
            "start_seconds": self.ready_after,
            "started_by": self.how,
            "serves_socket": self.direct,
        }


class Router:
    def __init__(self, name: str):
        self.name = name
        self.store = get_store()
        rec = get_endpoint(self.store, name)
        self.rec = rec
        self.dir = Path(rec.config["dir"])
        self.token_file = self.dir / "token"
        self.state_file = self.dir / "replicas.json"
        self.token = f"Bearer {self.token_file.read_text().strip()}"
        cfg = rec.config
        self.min, self.max = rec.min_replicas, rec.max_replicas
        self.target = float(cfg.get("target_concurrency", 4))
        self.down_delay = float(cfg.get("scale_down_delay_s", 30))
        self.idle_timeout = float(cfg.get("idle_timeout_s", 60))
        self.request_timeout = float(cfg.get("request_timeout_s", 60))
        self.limits = Limits(
            max_body=int(cfg.get("max_body_mb", 16) * (1 << 20)), **cfg.get("http_limits", {})
        )
        self.max_response = int(cfg.get("max_response_mb", 256) * (1 << 20))
        self.replicas: list[Replica] = []
        self.next_id = 0
        self.inflight = 0  # requests this router is proxying
        self.shared_inflight = 0  # requests replicas serve on the endpoint's socket themselves
        self.last_request = time.monotonic()
        self.samples: deque[tuple[float, int]] = deque()
        self.low_since: float | None = None
        self.cpu = CpuRoom()  # what the router and its replicas use of the CPUs they may run on
        self.cpu_held = False  # a scale-up for load is held: no CPU left for another replica
        self.restarts = rec.restarts
        self.cold_starts: list[dict[str, Any]] = []
        self.control_errors = 0
        self.metrics = ServerMetrics(name)
        # the router's own families, apart from the request metrics: while a lone replica serves
        # the socket, /metrics is that replica's request metrics and these
        self.own_registry = reg = CollectorRegistry()
        self.g_replicas = Gauge(
            "nbscale_endpoint_replicas", "Replicas by state", ["model", "state"], registry=reg
        )
        self.h_cold = Histogram(
            "nbscale_endpoint_cold_start_seconds",
            "Time from request to a ready replica",
            ["model"],
            buckets=(0.001, 0.01, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120),
            registry=reg,
        )
        self.stopping = False
        self.booting = True
        self.deaths: deque[float] = deque()
        self.respawn_at = 0.0
        self.zygote: Zygote | None = None
        self.zygote_started = 0.0
        self.use_zygote = os.environ.get(ZYGOTE_ENV, "1") != "0"
        self.zygote_parked = False  # stopped with the replicas by the idle TTL, until a request
        self.zygote_wake: asyncio.Future | None = None
        self.direct_allowed = not proxy_every_request()
        # direct (how every endpoint is deployed unless asked otherwise): every ready replica
        # serves the endpoint's socket, not only a lone one (a replica that dies drops the
        # connections it held: nothing retries them). A record without it was deployed before
        # that was the default, and keeps the router in front of two or more replicas.
        self.all_direct = bool(cfg.get("direct"))
        self.listen_fd: int | None = None
        self.public = None  # the HttpServer on the endpoint's socket; None while a replica has it
        self.control_server = None  # the router's private port, for what a replica passes on
        self.router_port_file = self.dir / "router.port"
        self.direct_reps: list[Replica] = []  # the replicas serving the socket themselves

    # -- the zygote ----------------------------------------------------------
    def _start_zygote(self, claim: bool = True) -> None:
        """A fork server with torch and the runtime imported: replicas start in a fraction of a
        second instead of a fresh interpreter's several (see ``nbscale.serving.zygote``)."""
        if not self.use_zygote:
            return
        self.zygote_started = time.monotonic()
        env = {**os.environ, ENDPOINT_ENV: self.name, "PYTHONUNBUFFERED": "1"}
        tags = {k: env[k] for k in (ENDPOINT_ENV, TAG_ENV) if k in env}
        try:  # the warm zygote of this home, when there is one: no Python or torch start
            self.zygote = claim_warm(warm_dir(), tags, self.dir / "zygote.log") if claim else None
        except OSError as exc:
            log.warning("cannot claim the warm zygote (%s); starting one", exc)
            self.zygote = None
        if self.zygote is not None:
            return
        try:
            self.zygote = Zygote(self.dir / "zygote.log", env)
        except OSError as exc:
            log.warning("cannot start the zygote (%s); replicas start as fresh processes", exc)
            self.zygote = None

    async def _wait_zygote(self) -> None:
        """Until the zygote can fork (a replica forked then is ready well before a fresh one)."""
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + ZYGOTE_WAIT_S
        z = self.zygote
        stuck = None
        while z is not None and not z.ready and z.alive() and time.monotonic() < deadline:
            await loop.run_in_executor(None, select.select, [z.chan], [], [], 0.05)
            z.pump()
            stuck = z.claim_stuck()
            if stuck:
                break
        if z is not None and z.claimed and not z.ready and z is self.zygote:
            # the warm zygote went away before it forked ours (its TTL, a kill), is stopped, or
            # does not answer: start our own instead of waiting on it
            why = stuck or "the warm zygote went away before it answered the claim"
            log.warning("%s; starting a zygote", why)
            add_endpoint_event(self.store, self.name, "warm_zygote_skipped", {"why": why})
            z.close(timeout=1)
            self._start_zygote(claim=False)
            if self.zygote is not None:
                await self._wait_zygote()

    def _park_zygote(self) -> None:
        """The idle TTL frees the zygote's memory with the replicas'; a request restarts it."""
        if self.zygote is not None:
            self.zygote.close(timeout=1)
            self.zygote = None
            self.zygote_parked = self.use_zygote

    async def _zygote_back(self) -> None:
        if self.zygote_parked:
            self.zygote_parked = False
            self._start_zygote()
            self.zygote_wake = asyncio.ensure_future(self._wait_zygote())
        if self.zygote_wake is not None and not self.zygote_wake.done():
            await asyncio.shield(self.zygote_wake)  # concurrent requests wait for the same one

    def _watch_zygote(self, now: float) -> None:
        """Restart a zygote that died, at most every ``ZYGOTE_RETRY_S``; replicas start afresh
        meanwhile."""
        z = self.zygote
        if not self.use_zygote or self.zygote_parked or (z is not None and z.alive()):
            if z is not None and not z.ready:
                z.pump()
            return
        if now - self.zygote_started < ZYGOTE_RETRY_S:
            return
        if z is not None:
            code = z.proc.returncode if z.proc is not None else None
            add_endpoint_event(self.store, self.name, "zygote_died", {"returncode": code})
            z.close(timeout=1)
        self._start_zygote()

    # -- replicas ------------------------------------------------------------
    def _spawn(self, to_standby: bool = False) -> Replica:
        cfg = self.rec.config
        rid = self.next_id
        self.next_id += 1
        port_file = self.dir / f"replica-{rid}.port"
        port_file.unlink(missing_ok=True)
        self._load_path(rid).unlink(missing_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "nbscale.serving",
            "--model-dir",
            self.rec.model_dir,
            "--port",
            "0",  # the replica binds a free port itself and reports it: no pick-and-release race
            "--port-file",
            str(port_file),
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
            "--max-body-mb",
            str(cfg.get("max_body_mb", 16)),
            "--keepalive-timeout",
            str(REPLICA_KEEPALIVE_S),
        ]
        direct = self.listen_fd is not None and self.direct_allowed
        if direct:
            cmd += [
                "--listen-fd",
                str(self.listen_fd),
                "--router-port-file",
                str(self.router_port_file),
                "--front-limits",
                json.dumps(dataclasses.asdict(self.limits)),
                "--load-file",
                str(self._load_path(rid)),
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
        gpu_holder = f"endpoint:{self.name}:{rid}"  # a GPU of its own, never a job's
        env.update(gpus.replica_env(self.store, gpu_holder))
        log_path = self.dir / f"replica-{rid}.log"
        proc, how = None, "fresh"
        # a replica with a GPU of its own starts as a fresh process: CUDA state is never forked
        if "CUDA_DEVICE_ORDER" not in env and self.zygote is not None and self.zygote.ready:
            try:
                proc = self.zygote.spawn(
                    cmd[3:], env, log_path, listen_fd=self.listen_fd if direct else None
                )
                how = "zygote"
            except ZygoteError as exc:
                log.warning(
                    "the zygote could not start replica %d (%s); starting it afresh", rid, exc
                )
        if proc is None:
            with open(log_path, "ab") as out:
                proc = subprocess.Popen(
                    cmd,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    pass_fds=(self.listen_fd,) if direct else (),
                )
        rep = Replica(rid, 0, proc, time.time(), to_standby=to_standby, how=how, can_direct=direct)
        with contextlib.suppress(Exception):
            rep.created = create_time(proc.pid)
        if "CUDA_DEVICE_ORDER" in env:
            gpus.bind_replica(self.store, gpu_holder, proc.pid, rep.created or None)
        self.replicas.append(rep)
        asyncio.get_running_loop().create_task(self._await_ready(rep, port_file))
        return rep

    async def _await_ready(self, rep: Replica, port_file: Path | None) -> None:
        start = time.monotonic()
        while rep.port == 0 and rep.proc.poll() is None and not rep.draining:
            with contextlib.suppress(OSError, ValueError):
                rep.port = int(port_file.read_text())
            if rep.port == 0:  # written once the model is loaded and the port bound
                await asyncio.sleep(0.005 if time.monotonic() - start < 5 else 0.02)
        while rep.proc.poll() is None and not rep.draining:
            try:
                status, _, _ = await exchange(
                    rep.port,
                    rep.pool,
                    b"GET /v2/health/ready HTTP/1.1\r\nhost: replica\r\ncontent-length: 0\r\n\r\n",
                    b"",
                    5.0,
                    MAX_RESPONSE_HEAD,
                    1 << 16,
                )
                if status == 200:
                    rep.ready_after = round(time.monotonic() - start, 3)
                    rep.ready.set()
                    if rep.to_standby and not rep.inflight:
                        self._pause(rep)
                    self._record()
                    return
            except UpstreamError:
                pass
            await asyncio.sleep(0.05)

    def _pause(self, rep: Replica) -> None:
        """Keep ``rep`` stopped (SIGSTOP) as the standby of an endpoint scaled to zero."""
        rep.pool.close()
        try:
            rep.proc.send_signal(signal.SIGSTOP)
        except ProcessLookupError:
            return
        rep.paused, rep.to_standby = True, False

    def _resume(self, rep: Replica) -> None:
        with contextlib.suppress(ProcessLookupError):
            rep.proc.send_signal(signal.SIGCONT)
        rep.paused = False

    def _stop_replica(self, rep: Replica) -> None:
        rep.draining = True
        rep.pool.close()
        with contextlib.suppress(ProcessLookupError):
            rep.proc.send_signal(signal.SIGTERM)  # the replica finishes what it holds, then exits
            if rep.paused:
                rep.proc.send_signal(signal.SIGCONT)  # a stopped process acts on SIGTERM once woken

    def _active(self) -> list[Replica]:
        return [r for r in self.replicas if not (r.draining or r.paused or r.to_standby)]

    def _standby(self) -> Replica | None:
        return next((r for r in self.replicas if r.paused and not r.draining), None)

    def _record(self, event: str | None = None) -> None:
        ready = sum(1 for r in self._active() if r.ready.is_set())
        status = (READY if ready else STARTING) if self._active() else SCALED_TO_ZERO
        if self.booting:
            status = STARTING  # until the first replicas (or the standby) are ready
        self.g_replicas.labels(self.name, "ready").set(ready)
        self.g_replicas.labels(self.name, "starting").set(len(self._active()) - ready)
        self.g_replicas.labels(self.name, "paused").set(1 if self._standby() else 0)
        update_endpoint(
            self.store,
            self.name,
            event,
            status=status,
            replicas=len(self._active()),
            restarts=self.restarts,
            error=None,
        )
        self._save_state()

    def _save_state(self) -> None:
        """The replicas, for the next router of this endpoint to adopt if this one dies."""
        state = {
            "next_id": self.next_id,
            "replicas": [
                {
                    "id": r.id,
                    "pid": r.proc.pid,
                    "created": r.created,
                    "port": r.port,
                    "paused": r.paused,
                    "can_direct": r.can_direct,
                    "direct": r.direct,
                }
                for r in self.replicas
                if not r.draining and r.port and r.ready.is_set()
            ],
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.state_file)

    def _adopt(self) -> None:
        """Take over the replicas a dead router left running (they kept serving meanwhile)."""
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return
        self.next_id = int(state.get("next_id", 0))
        for r in state.get("replicas", []):
            if not alive(r["pid"], r["created"] or None):
                continue
            rep = Replica(
                int(r["id"]), int(r["port"]), Adopted(r["pid"], r["created"]), time.time()
            )
            rep.created = r["created"]
            rep.paused = bool(r.get("paused"))
            rep.can_direct = bool(r.get("can_direct"))
            rep.direct = bool(r.get("direct"))
            self.replicas.append(rep)
            if rep.direct:
                self.direct_reps.append(rep)  # kept, or given back at the first update
            if rep.paused:
                rep.ready.set()
            else:
                asyncio.get_running_loop().create_task(self._await_ready(rep, None))
        if self.replicas:
            log.info("adopted replicas %s", [r.id for r in self.replicas])

    async def _ensure_replica(self) -> Replica:
        """A ready replica with the fewest requests in flight; wakes or starts one if there is none."""
        ready = [r for r in self._active() if r.ready.is_set()]
        if ready:
            return min(ready, key=lambda r: r.inflight)
        cold = time.monotonic()
        standby = self._standby()
        if standby is not None and standby.proc.poll() is None:
            self._resume(standby)  # the standby has the model loaded: a wake-up, not a start
            self._note_cold_start(time.monotonic() - cold, "resumed")
            self._record("scaled")
            return standby
        starting = [
            r for r in self.replicas if not (r.draining or r.paused) and r.proc.poll() is None
        ]
        if not starting:
            await self._zygote_back()
            starting = [
                r for r in self.replicas if not (r.draining or r.paused) and r.proc.poll() is None
            ]
        if not starting:
            z = self.zygote
            if z is not None and not z.ready and z.alive():
                await self._wait_zygote()  # forking soon beats a new interpreter's imports
            starting = [self._spawn()]
            self._record("scaled")
        for r in starting:
            r.to_standby = False  # a request is waiting for it
        waiters = [asyncio.ensure_future(r.ready.wait()) for r in starting]
        done, pending = await asyncio.wait(
            waiters, timeout=COLD_START_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
        )
        for p in pending:
            p.cancel()
        if not done:
            raise TimeoutError("no replica became ready within 120 s; see the replica logs")
        self._note_cold_start(time.monotonic() - cold, "started")
        return await self._ensure_replica()

    def _note_cold_start(self, seconds: float, how: str) -> None:
        self.cold_starts.append({"time": time.time(), "seconds": round(seconds, 4), "how": how})
        del self.cold_starts[:-100]
        self.h_cold.labels(self.name).observe(seconds)

    # -- the control loop ----------------------------------------------------
    async def control(self) -> None:
        """Replace dead replicas and autoscale; a failure is logged and the loop goes on."""
        while not self.stopping:
            try:
                await self._control_loop()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.control_errors += 1
                log.exception("control loop failed (%d so far); restarting it", self.control_errors)
                with contextlib.suppress(Exception):
                    add_endpoint_event(
                        self.store,
                        self.name,
                        "control_error",
                        {"error": f"{type(exc).__name__}: {exc}"},
                    )
                await asyncio.sleep(0.5)

    async def _control_loop(self) -> None:
        while not self.stopping:
            await asyncio.sleep(0.1)
            self._tick(time.monotonic())
            await self._update_direct()

    # -- a lone replica serving the endpoint's socket itself --------------------
    def _load_path(self, rid: int) -> Path:
        return self.dir / f"replica-{rid}.load"

    def _read_load(self, rep: Replica) -> None:
        """``rep``'s figures from its load file (opened the first time it is there)."""
        if rep.load is None:
            if not rep.can_direct:
                return
            try:
                rep.load = LoadReader(str(self._load_path(rep.id)))
            except OSError:
                return  # not written yet (or a replica from before load files)
        load = rep.load.read()
        rep.shared_inflight, rep.shared_serving = max(0, load.inflight), load.serving
        self.last_request = max(self.last_request, load.last_request)

    def _read_loads(self) -> None:
        """The requests replicas serve on the endpoint's socket themselves, into the router's
        view: in flight (autoscaling, the victim of a scale-down) and the last one's time (the
        idle timeout and TTL)."""
        total = 0
        for rep in self.replicas:
            if rep.can_direct and rep.proc.poll() is None:
                self._read_load(rep)
                total += rep.shared_inflight
        self.shared_inflight = total

    def _idle_s(self, now: float) -> float:
        return 0.0 if self.inflight or self.shared_inflight else now - self.last_request

    def _going_idle(self, now: float) -> bool:
        """Idle long enough to scale to zero or be torn down by the idle TTL."""
        idle = self._idle_s(now)
        ttl = self.rec.config.get("idle_ttl_s")
        return (self.min == 0 and idle >= self.idle_timeout) or bool(ttl and idle >= ttl)

    def _quiet(self, rep: Replica) -> bool:
        """``rep`` neither serves the endpoint's socket nor holds a request or connection from
        it: it may be paused or stopped (a paused one holding a client's connection would hang
        that client)."""
        if rep in self.direct_reps or rep.direct:
            return False
        if rep.load is not None and rep.proc.poll() is None:
            self._read_load(rep)
            return not rep.shared_serving and rep.shared_inflight == 0
        return True

    def _can_serve(self, rep: Replica) -> bool:
        return (
            rep.can_direct
            and rep.ready.is_set()
            and not (rep.paused or rep.to_standby or rep.draining or rep.leaving)
            and rep.proc.poll() is None
        )

    def _direct_candidates(self) -> list[Replica]:
        """The replicas that may serve the endpoint's socket without the proxy hop: ready,
        holding the socket and neither paused, starting nor leaving. With ``direct`` (the
        default) every such replica; deployed with it false (``--proxy``), only the endpoint's
        lone live replica (none starting, draining aside, no paused standby) and never one of
        an endpoint fixed at two or more, whose router retries a request that hit a dead
        replica. An autoscaling, scale-to-zero or
        idle-TTL endpoint needs their load files (the router reads its requests there) and is
        not about to go idle."""
        if self.stopping:
            return []
        live = [r for r in self.replicas if not r.draining]
        if self.all_direct:
            reps = [r for r in live if self._can_serve(r)]
        elif self.min == self.max >= 2 or len(live) != 1:
            return []
        else:
            reps = live if self._can_serve(live[0]) else []
        if not reps or (self.min == self.max and not self.rec.config.get("idle_ttl_s")):
            return reps  # nothing is decided on their requests
        for rep in reps:
            self._read_load(rep)
        if self._going_idle(time.monotonic()):
            return []  # the socket is taken back to pause or stop them
        return [r for r in reps if r.load is not None]  # no unseen requests

    async def _update_direct(self) -> None:
        want = self._direct_candidates()
        if {r.id for r in want} == {r.id for r in self.direct_reps}:
            return  # every tick: nothing to signal or save
        if not want:  # take the socket back before anything else changes
            await self._listen()
        for old in [r for r in self.direct_reps if r not in want]:
            self.direct_reps.remove(old)
            if old.proc.poll() is None and old.direct:
                with contextlib.suppress(ProcessLookupError):
                    old.proc.send_signal(signal.SIGUSR2)
            old.direct = False
            add_endpoint_event(self.store, self.name, "proxying", {"replica": old.id})
        joining = [r for r in want if r not in self.direct_reps]
        if joining:
            # those already serving let their connections go: their clients connect again and
            # the kernel spreads them over the newcomers too (keep-alive clients would otherwise
            # stay on the replicas they first reached)
            for old in self.direct_reps:
                with contextlib.suppress(ProcessLookupError):
                    old.proc.send_signal(signal.SIGUSR1)
        for new in joining:
            if not new.direct:
                try:
                    new.proc.send_signal(signal.SIGUSR1)
                except ProcessLookupError:
                    continue
                new.direct = True
            self.direct_reps.append(new)
            add_endpoint_event(self.store, self.name, "serving_directly", {"replica": new.id})
        if self.direct_reps and self.public is not None:
            # stop accepting (connections already accepted stay and are still proxied);
            # the socket itself stays open: the supervisor and the replicas hold it too
            self.public.server.close()
            self.public = None
        self._save_state()

    async def _listen(self) -> None:
        if self.public is None and self.listen_fd is not None:
            sock = socket.socket(fileno=os.dup(self.listen_fd))
            self.public = await serve(self, "127.0.0.1", self.rec.port, self.limits, sock=sock)

    def _tick(self, now: float) -> None:
        self._watch_zygote(now)
        for rep in list(self.replicas):
            if rep.proc.poll() is None:
                continue
            self.replicas.remove(rep)
            rep.pool.close()
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
            if rep.load is not None:
                rep.load.close()
            self._load_path(rep.id).unlink(missing_ok=True)
            self._record("replica_exit")
        self._read_loads()
        self.cpu.sample(now, [os.getpid(), *(r.proc.pid for r in self.replicas)])
        self.samples.append((now, self.inflight + self.shared_inflight))
        while self.samples and self.samples[0][0] < now - 2.0:
            self.samples.popleft()
        self._autoscale(now)

    def _autoscale(self, now: float) -> None:
        active = self._active()
        avg = sum(n for _, n in self.samples) / max(1, len(self.samples))
        want = math.ceil(avg / self.target) if avg > 0 else 0
        if want > len(active):
            # more replicas only for load that is still there: once a burst ends, its 2 s
            # average would otherwise add replicas for requests that are gone
            now_in = self.inflight + self.shared_inflight
            want = max(len(active), min(want, math.ceil(now_in / self.target)))
        idle_s = self._idle_s(now)
        ttl = self.rec.config.get("idle_ttl_s")
        if ttl and idle_s >= ttl:  # --idle-ttl: torn down to no process, even above min
            left = [r for r in self.replicas if not r.draining]
            if not all(self._quiet(r) for r in left):
                return  # the socket is being taken back from the replica serving it
            if left:
                for r in left:
                    self._stop_replica(r)
                self._park_zygote()
                add_endpoint_event(
                    self.store, self.name, "idle_scaled_to_zero", {"idle_s": round(idle_s, 1)}
                )
                self._record("scaled")
            return
        if self.zygote_wake is not None and not self.zygote_wake.done():
            return  # the zygote is starting again after the idle TTL: replicas are forked then
        if self.min == 0 and idle_s >= self.idle_timeout:
            want = 0
        else:
            want = max(want, self.min, 1 if active else 0)
        want = min(want, self.max)
        want = self._cpu_bound(want, len(active))
        if want >= len(active):
            for r in active:
                r.leaving = False  # the load is back: a replica on its way out stays
        pending = [r for r in self.replicas if r.to_standby and not r.draining]
        if want and pending:
            for r in pending:
                r.to_standby = False  # wanted now: it serves instead of waiting paused
            self._record("scaled")
            return
        if want > len(active) and now >= self.respawn_at:
            self.low_since = None
            missing = want - len(active)
            standby = self._standby()
            if standby is not None:
                self._resume(standby)
                missing -= 1
            for _ in range(missing):
                self._spawn()
            self._record("scaled")
        elif want < len(active):
            self.low_since = self.low_since or now
            if now - self.low_since >= self.down_delay or want == 0:
                victim = next((r for r in active if r.leaving), None) or min(
                    active, key=lambda r: (r.inflight + r.shared_inflight, -r.id)
                )
                if not self._quiet(victim):
                    # it gives the socket back first: taken back as the load fell, or (direct)
                    # from this replica alone while the others go on serving it
                    victim.leaving = self.all_direct and want > 0
                    return
                if (
                    want == 0
                    and len(active) == 1
                    and self._standby() is None
                    and not victim.inflight
                ):
                    self._pause(victim)  # scaled to zero: kept stopped, the next request wakes it
                else:
                    self._stop_replica(victim)
                self.low_since = now
                self._record("scaled")
        else:
            self.low_since = None
            if (
                self.min == 0
                and not active
                and not pending
                and self._standby() is None
                and now >= self.respawn_at
            ):
                self._spawn(to_standby=True)  # a standby for the next cold start

    def _cpu_bound(self, want: int, current: int) -> int:
        """``want``, or fewer where the replicas added for load would get no CPU of their own
        (``cpu_room``): never fewer than ``min_replicas`` or those running."""
        floor = max(current, self.min)
        if want <= floor or not current:
            self.cpu_held = False
            return want
        room = self.cpu.room()
        if room is None:  # a router that just started: not measured yet (a few ticks)
            return floor
        if room >= ROOM_FOR_A_REPLICA:
            self.cpu_held = False
            return want
        if not self.cpu_held:
            self.cpu_held = True
            add_endpoint_event(
                self.store,
                self.name,
                "scale_up_held",
                {
                    "want": want,
                    "replicas": current,
                    "cpus": self.cpu.cpus,
                    "cpu_used": round(self.cpu.cpus - room, 2),
                },
            )
        return floor

    # -- HTTP ----------------------------------------------------------------
    async def __call__(self, req: Request) -> Response:
        path = req.path
        if path == "/v2/health/live":
            return Response(200, b'{"live":true}')
        if path in ("/v2/health/ready", "/ping"):
            ok = (
                any(r.ready.is_set() for r in self._active())
                or self.min == 0
                or bool(self.rec.config.get("idle_ttl_s"))
            )
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
            return Response(200, dumps(await self.current_stats()))
        if path == "/nbscale/scale" and req.method == "POST":
            return self.scale(req)
        if path == "/metrics":
            body, ctype = self.metrics.exposition()
            # the requests were counted by the replicas that served them
            theirs = await self._ask_direct("/metrics")
            if len(theirs) == 1:
                body = next(iter(theirs.values()))
            elif theirs:
                body = merged_exposition(theirs)
            return Response(200, body + generate_latest(self.own_registry), ctype)
        return await self.proxy(req)

    async def _ask(self, rep: Replica, path: str) -> tuple[int, dict[str, str], bytes]:
        """GET ``path`` from a replica's own port (with the endpoint's token)."""
        head = f"GET {path} HTTP/1.1\r\nhost: replica\r\nauthorization: {self.token}\r\ncontent-length: 0\r\n\r\n"
        return await exchange(
            rep.port, rep.pool, head.encode("latin-1"), b"", 5.0, MAX_RESPONSE_HEAD, 64 << 20
        )

    async def _ask_direct(self, path: str) -> dict[int, bytes]:
        """``path`` from each replica serving the socket itself: {replica id: its answer}.
        One that cannot answer now (it just died, it is giving the socket back) is left out."""
        reps = list(self.direct_reps)
        answers = await asyncio.gather(
            *(self._ask(rep, path) for rep in reps), return_exceptions=True
        )
        for a in answers:
            if isinstance(a, BaseException) and not isinstance(a, UpstreamError):
                raise a
        return {
            rep.id: a[2]
            for rep, a in zip(reps, answers, strict=True)
            if not isinstance(a, BaseException) and a[0] == 200
        }

    async def current_stats(self) -> dict[str, Any]:
        """``stats()``; while replicas serve the socket themselves, their request figures,
        merged when there are several (the router proxies none of those requests; in flight
        and idle time come from their load files)."""
        snap = self.stats()
        several = len(self.direct_reps) > 1  # the digest costs a sort of the window: only then
        answers = await self._ask_direct("/nbscale/stats?digest=1" if several else "/nbscale/stats")
        if not answers:
            return snap
        if len(answers) == 1:
            theirs = loads(next(iter(answers.values())))
        else:
            theirs = merged_stats(loads(body) for body in answers.values())
        for key in (
            "p50_ms",
            "p95_ms",
            "p99_ms",
            "throughput_rps",
            "error_rate",
            "requests_total",
            "errors_total",
            "series",
        ):
            if key in theirs:
                snap[key] = theirs[key]
        snap["serving"] = "replica" if len(self.direct_reps) == 1 else "replicas"
        return snap

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
                except UpstreamError as exc:
                    if exc.answered or exc.status == 504:
                        resp = error_response(
                            exc.status, exc.message
                        )  # not retried: it may have run
                        break
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
            target = req.path + ("?" + req.query if req.query else "")
            head = [
                f"{req.method} {target} HTTP/1.1",
                "host: replica",
                f"content-length: {len(req.body)}",
            ]
            head += [f"{k}: {req.headers[k]}" for k in FORWARD_HEADERS if k in req.headers]
            status, headers, body = await exchange(
                rep.port,
                rep.pool,
                ("\r\n".join(head) + "\r\n\r\n").encode("latin-1"),
                req.body,
                self.request_timeout,
                MAX_RESPONSE_HEAD,
                self.max_response,
            )
            extra = {k: headers[k] for k in KEEP_RESPONSE_HEADERS if k in headers}
            return Response(status, body, headers.get("content-type", "application/json"), extra)
        finally:
            rep.inflight -= 1

    def stats(self) -> dict[str, Any]:
        active = self._active()
        self._read_loads()
        inflight = self.inflight + self.shared_inflight
        snap = self.metrics.rolling.snapshot({"replicas": len(active), "inflight": inflight})
        snap.update(
            name=self.name,
            inflight=inflight,
            restarts=self.restarts,
            replicas={
                "current": len(active),
                "ready": sum(1 for r in active if r.ready.is_set()),
                "standby": 1 if self._standby() else 0,
                "min": self.min,
                "max": self.max,
            },
            replica_list=[r.to_dict() for r in self.replicas],
            cold_starts=self.cold_starts[-20:],
            target_concurrency=self.target,
            idle_s=round(self._idle_s(time.monotonic()), 1),
            router_pid=os.getpid(),
            # "replica" while a lone replica serves the socket itself, "replicas" while several do
            serving="router",
            zygote_pid=self.zygote.proc.pid
            if self.zygote and self.zygote.proc and self.zygote.alive()
            else None,
            zygote_claimed=bool(self.zygote and self.zygote.claimed),
            control_errors=self.control_errors,
            cpu={
                "cpus": self.cpu.cpus,
                "used": None if (used := self.cpu.used()) is None else round(used, 2),
                "scale_up_held": self.cpu_held,
            },
        )
        return snap

    async def run(self, listen_fd: int) -> None:
        first = self.rec.status == STARTING  # a deploy (or a restart after a lost supervisor)
        self.listen_fd = listen_fd
        # the replicas a dead router left, and the zygote, before the first request is taken:
        # one taken earlier would start a replica of its own beside the standby it cannot see
        self._adopt()
        self._start_zygote()
        await self._listen()
        self.control_server = await serve(self, "127.0.0.1", 0, self.limits)
        tmp = self.router_port_file.with_suffix(".tmp")
        tmp.write_text(str(self.control_server.port))
        tmp.replace(self.router_port_file)
        missing = self.min - len(self._active())
        if missing > 0 or (self.min == 0 and not self.replicas):
            # forking one costs far less than a fresh interpreter; waiting here is not idle
            # time: the zygote's start is most of what a fresh replica would spend anyway
            await self._wait_zygote()
        for _ in range(max(0, missing)):
            self._spawn()
        if self.min == 0 and not self.replicas:
            self._spawn(to_standby=True)  # loaded, then paused: the first request wakes it
        self._record("started" if first else "router_restarted")
        deadline = time.monotonic() + COLD_START_TIMEOUT_S
        while not all(r.ready.is_set() for r in self.replicas) and time.monotonic() < deadline:
            dead = next((r for r in self.replicas if r.proc.poll() is not None), None)
            if dead is not None and first:
                # a broken artifact: fail the deploy now, with the replica's own words
                lines = (
                    (self.dir / f"replica-{dead.id}.log")
                    .read_text(errors="replace")
                    .strip()
                    .splitlines()
                )
                raise StartupError(
                    f"replica exited with code {dead.proc.returncode} before it was ready: "
                    + " | ".join(lines[-3:])
                )
            if dead is not None:
                break  # the control loop replaces it
            waits = [asyncio.ensure_future(r.ready.wait()) for r in self.replicas]
            await asyncio.wait(waits, timeout=0.05)  # woken by the last ready, or to check
            for w in waits:
                w.cancel()
        self.booting = False
        self._record("ready")
        await self._update_direct()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        control = loop.create_task(self.control())
        await stop.wait()
        self.stopping = True
        control.cancel()
        await self._update_direct()  # the socket back from a replica serving it
        await self.public.shutdown(timeout=10)
        await self.control_server.shutdown(timeout=1)
        for rep in self.replicas:
            self._stop_replica(rep)
        deadline = time.monotonic() + 15
        while any(r.proc.poll() is None for r in self.replicas) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for rep in self.replicas:
            if rep.proc.poll() is None:
                rep.proc.kill()
                rep.proc.wait()
        if self.zygote is not None:
            self.zygote.close()
        self.state_file.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nbscale.backends.local.router")
    p.add_argument("name")
    p.add_argument(
        "--daemonize", action="store_true", help="fork once more so no caller is our parent"
    )
    p.add_argument(
        "--listen-fd",
        type=int,
        help="serve on this inherited listening socket (the supervisor's); "
        "without it this process becomes the endpoint's supervisor",
    )
    args = p.parse_args(argv)
    if args.listen_fd is None:
        if args.daemonize and os.fork() > 0:
            os._exit(0)
        from .replicas import supervise

        # the supervisor has this module imported: it forks each router instead of starting
        # an interpreter (NBSCALE_ROUTER_EXEC=1: a new one each time, as before)
        forked = os.environ.get("NBSCALE_ROUTER_EXEC", "0") != "1"
        return supervise(args.name, (lambda fd: run_router(args.name, fd)) if forked else None)
    return run_router(args.name, args.listen_fd)


def run_router(name: str, listen_fd: int) -> int:
    """The router of endpoint ``name`` on the inherited listening socket ``listen_fd``."""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    install_fast_loop()
    router = None
    try:
        router = Router(name)
        asyncio.run(router.run(listen_fd))
    except StartupError as exc:
        with contextlib.suppress(Exception):
            update_endpoint(get_store(), name, "failed", status=FAILED, error=str(exc))
        if router:
            for rep in router.replicas:
                with contextlib.suppress(Exception):
                    rep.proc.kill()
            if router.zygote is not None:
                router.zygote.close(timeout=1)
        return 1
    except Exception:
        # the supervisor starts another router, which adopts the replicas still running
        log.exception("the router failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
