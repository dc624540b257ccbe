"""Local endpoints: a detached router process per endpoint, replicas behind it.

``deploy`` writes the token file (0600) and the store row, starts this home's
warm zygote if none runs (the router forks its own zygote from it), starts the router
(``nbscale.backends.local.router``) in a session of its own, forked once more so it
outlives the kernel or CLI, and waits until it answers. ``status`` restarts a
router that died; ``undeploy`` stops every process of the endpoint, found by
the ``NBSCALE_ENDPOINT`` variable they all carry, and frees the port.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ...config import BackendConfig
from ...cpus import allowed_cpus
from ...errors import BackendUnavailable, Conflict, SpecError
from ...keys import endpoint_token as token_for
from ...paths import endpoint_dir
from ...scrapes import Scrape, scrape_local
from ...serving.busypoll import WINDOW_ENV, window_us
from ...serving.zygote import WARM_TTL_ENV, start_warm, warm_dir, warm_enabled, warm_ttl
from ...store import Store
from ...store.endpoints import (
    FAILED,
    READY,
    SCALED_TO_ZERO,
    STARTING,
    EndpointRecord,
    delete_endpoint,
    get_endpoint,
    insert_endpoint,
    list_endpoints,
    update_endpoint,
)
from ..endpoint_base import DeployRequest, EndpointBackend, V2Client, V2Clients
from .hop import DIRECT_ENV, proxy_every_request
from .ports import pick_port, port_free
from .processes import alive, create_time, stop_tagged_processes

ENDPOINT_ENV = "NBSCALE_ENDPOINT"
# the name alone is not unique: another nbscale home may run an endpoint of the same name, and
# undeploying ours must not stop theirs; processes are found by this home-qualified tag
TAG_ENV = "NBSCALE_ENDPOINT_TAG"


def endpoint_tag(name: str) -> str:
    return str(endpoint_dir(name).resolve())


START_TIMEOUT_S = 120.0


class LocalEndpoints(EndpointBackend):
    """The first ``EndpointBackend``: a router and replica processes on this machine."""

    type = "local"
    applies_idle_ttl = True
    #: direct (the default): every ready replica accepts on the endpoint's port itself, no
    #: proxy hop at any replica count, and a replica that dies drops the connections it held;
    #: false: the router proxies while two or more replicas run (it retries a request that hit
    #: a replica killed under it, and sends each to the replica with the fewest in flight)
    options = frozenset({"direct"})

    def replica_limit(self) -> int:
        # replicas are processes on this machine: the cap local jobs have (4 per usable core)
        return 4 * allowed_cpus()

    def __init__(self, config: BackendConfig, store: Store):
        super().__init__(config, store)
        self._clients = V2Clients(self._client)

    def _client(self, rec: EndpointRecord) -> V2Client:
        return V2Client(
            rec.name,
            f"http://127.0.0.1:{rec.port}",
            headers=lambda: {"Authorization": f"Bearer {token_for(rec.name)}"},
            unreachable=f"check it with: nbscale endpoints; logs in {endpoint_dir(rec.name)}",
        )

    def display_status(self, rec: EndpointRecord) -> str:
        """The stored status, or DOWN when the router process is gone (``status`` restarts it)."""
        if (
            rec.status in (READY, SCALED_TO_ZERO)
            and rec.pid
            and not alive(rec.pid, rec.pid_created)
        ):
            return "DOWN"
        return rec.status

    def list(self) -> list[EndpointRecord]:
        return [r for r in list_endpoints(self.store) if r.backend_type == self.type]

    def metadata(self, rec: EndpointRecord) -> dict[str, Any]:
        return self._clients.get(rec).metadata()

    def predict(self, rec: EndpointRecord, x: Any) -> Any:
        return self._clients.get(rec).predict(x)

    def metrics(self, rec: EndpointRecord) -> dict[str, Any]:
        return self._clients.get(rec).get_json("/nbscale/stats", timeout=10)

    def scrape(self, rec: EndpointRecord) -> Scrape | None:
        return scrape_local(rec.port, token_for(rec.name))

    def idle_seconds(self, rec: EndpointRecord) -> float | None:
        """Seconds since the router last served a request (None when it cannot be asked)."""
        try:
            stats = self._clients.get(rec).get_json("/nbscale/stats", timeout=3)
        except Exception:  # noqa: BLE001 - a router that is down or restarting: unknown
            return None
        return stats.get("idle_s")

    def scale(self, rec: EndpointRecord, min_replicas: int, max_replicas: int) -> EndpointRecord:
        self._clients.get(rec).post_json(
            "/nbscale/scale", {"min": min_replicas, "max": max_replicas}, timeout=10
        )
        return get_endpoint(self.store, rec.name)

    def close(self, name: str) -> None:
        self._clients.close(name)

    def deploy(self, request: DeployRequest) -> EndpointRecord:
        self.validate(request)
        config = dict(request.config)
        config["direct"] = self._direct(request)  # kept: a router restarted later reads it
        if warm_enabled():
            try:  # the warm zygote's idle time: said here, before anything starts
                warm_ttl()
            except ValueError as exc:
                raise SpecError(WARM_TTL_ENV, str(exc)) from None
        try:  # the replicas' busy polling (NBSCALE_BUSY_POLL_US), which they inherit
            window_us(os.environ.get(WINDOW_ENV))
        except ValueError as exc:
            raise SpecError(WINDOW_ENV, str(exc)) from None
        return self._deploy(
            request.name,
            request.model_dir,
            request.port,
            request.min_replicas,
            request.max_replicas,
            config,
        )

    @staticmethod
    def _direct(request: DeployRequest) -> bool:
        """Whether every replica serves the endpoint's socket: yes unless asked otherwise
        (``direct`` false, ``--proxy``) or ``NBSCALE_DIRECT=0`` makes the router proxy every
        request; asking for ``direct`` under that variable is refused."""
        direct = request.options.get("direct")
        if direct not in (None, True, False):
            raise SpecError("direct", f"must be true or false, got {direct!r}")
        proxy_all = proxy_every_request()
        if direct and proxy_all:
            raise SpecError(
                "direct",
                f"{DIRECT_ENV}=0 in this environment makes the router proxy every request",
                f"unset {DIRECT_ENV}, or leave --direct out",
            )
        return not proxy_all if direct is None else direct

    def _deploy(
        self,
        name: str,
        model_dir: Path,
        port: int | None,
        min_replicas: int,
        max_replicas: int,
        config: dict[str, Any],
    ) -> EndpointRecord:
        if port is not None and not port_free(port):
            raise Conflict(
                f"port {port} on 127.0.0.1 is in use", "pick another --port or leave it out"
            )
        port = port or pick_port()  # outside the ephemeral range: see ports.py
        edir = endpoint_dir(name)
        edir.mkdir(parents=True, exist_ok=True, mode=0o700)
        now = time.time()
        rec = EndpointRecord(
            name=name,
            backend=self.backend,
            backend_type="local",
            status=STARTING,
            url=f"http://127.0.0.1:{port}",
            port=port,
            model_dir=str(model_dir),
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            config={**config, "dir": str(edir)},
            created=now,
            updated=now,
        )
        insert_endpoint(self.store, rec)  # first: a name already taken must not lose its token
        try:
            token_path = edir / "token"
            token_path.unlink(missing_ok=True)
            fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(32))
            self.prewarm()  # the router claims it: started now, it is ready sooner
            self._start_router(name)
            return self.wait_started(name)
        except BaseException:
            self.undeploy(name)
            raise

    def prewarm(self) -> None:
        self.warm_start()

    @staticmethod
    def warm_start() -> None:
        """Start this home's warm zygote if none runs (``nbscale.serving.zygote``): a later
        deploy's router forks its zygote from it instead of starting Python and torch.
        ``%load_ext nbscale`` calls it (``nbscale.backends.prewarm``)."""
        with contextlib.suppress(OSError, ValueError):  # a bad NBSCALE_WARM_TTL: deploy says so
            start_warm(warm_dir())

    def _start_router(self, name: str) -> None:
        log = open(endpoint_dir(name) / "router.log", "ab")  # noqa: SIM115 - handed to the child
        env = {**os.environ, ENDPOINT_ENV: name, TAG_ENV: endpoint_tag(name)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "nbscale.backends.local.router", name, "--daemonize"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        log.close()
        proc.wait(
            timeout=30
        )  # the intermediate exits at once; the router lives on, re-parented to init

    def wait(self, name: str, timeout: float | None = None) -> EndpointRecord:
        """Until the router says the endpoint serves (its record, not ``status``: that
        restarts a dead router)."""
        return self.wait_started(name, START_TIMEOUT_S if timeout is None else timeout)

    def wait_started(self, name: str, timeout: float = START_TIMEOUT_S) -> EndpointRecord:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rec = get_endpoint(self.store, name)
            if rec.status in (READY, SCALED_TO_ZERO) and rec.pid:
                if rec.pid_created is None:
                    update_endpoint(self.store, name, None, pid_created=create_time(rec.pid))
                return get_endpoint(self.store, name)
            if rec.status == FAILED:
                raise BackendUnavailable(
                    f"endpoint {name!r} failed to start: {rec.error}",
                    f"see {endpoint_dir(name)}/router.log and replica-*.log",
                )
            time.sleep(0.01)  # a read of the store: the deploy's answer comes within 10 ms
        raise BackendUnavailable(
            f"endpoint {name!r} did not start within {timeout:.0f} s",
            f"see {endpoint_dir(name)}/router.log and replica-*.log",
        )

    def status(self, rec: EndpointRecord) -> EndpointRecord:
        """The record, after restarting the router if it died (its replicas go with it)."""
        if (
            rec.status in (READY, SCALED_TO_ZERO)
            and rec.pid
            and not alive(rec.pid, rec.pid_created)
        ):
            self._stop_processes(rec.name, grace=2.0)
            if not port_free(rec.port):
                update_endpoint(
                    self.store,
                    rec.name,
                    "failed",
                    status=FAILED,
                    error=f"the router died and port {rec.port} is now taken by another process",
                )
                return get_endpoint(self.store, rec.name)
            update_endpoint(
                self.store,
                rec.name,
                "router_restart",
                status=STARTING,
                pid=None,
                pid_created=None,
                restarts=rec.restarts + 1,
            )
            self._start_router(rec.name)
            return self.wait_started(rec.name)
        return rec

    def undeploy(self, name: str) -> None:
        self._clients.close(name)
        rec = get_endpoint(self.store, name)
        if rec.pid and alive(rec.pid, rec.pid_created):
            os.kill(rec.pid, signal.SIGTERM)
            deadline = time.monotonic() + 20
            while alive(rec.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        self._stop_processes(name, grace=5.0)
        delete_endpoint(self.store, name)
        (endpoint_dir(name) / "token").unlink(missing_ok=True)

    @staticmethod
    def _stop_processes(name: str, grace: float) -> None:
        stop_tagged_processes(TAG_ENV, endpoint_tag(name), grace)
