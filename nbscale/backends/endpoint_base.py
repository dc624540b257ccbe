"""The interface every endpoint backend implements, and how one is found.

An endpoint backend turns a packaged model artifact into a served endpoint and
answers for it: ``deploy``, ``status``, ``predict``, ``metrics``, ``scale``,
``undeploy`` and ``list``. Backends are found through the
``nbscale.platforms`` entry-point group, by the ``type`` of a
``[backends.NAME]`` table, exactly like job backends (``nbscale.backends``).

``nbscale.endpoints`` (the Python API every face uses) validates what is common
to every backend (name, replicas, batching) and packages the model; the
backend validates its own options (``DeployRequest.options``) and refuses any
it does not use, before anything is created.

``V2Client`` is the Open Inference Protocol (V2) client the backends share:
one keep-alive connection, the model's input signature read once, numpy in and
numpy out.
"""

from __future__ import annotations

import http.client
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar

import numpy as np

from ..config import BackendConfig
from ..errors import BackendUnavailable, NbscaleError, SpecError
from ..scrapes import Scrape
from ..store import Store
from ..store.endpoints import EndpointRecord
from .base import DryRun


@dataclass(frozen=True)
class DeployRequest:
    """What to deploy: a verified artifact directory and the settings every backend shares.

    ``config`` holds the serving runtime's settings (batching, queue, capture);
    ``options`` holds settings only some backends have (``canary_traffic_percent``,
    ``scale_metric``, ``gpus``...): a backend refuses one it does not use.
    """

    name: str
    model_dir: Path
    min_replicas: int
    max_replicas: int
    port: int | None = None
    config: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


class EndpointBackend(ABC):
    """Deploy, status, predict, metrics, scale, undeploy and list for one kind of platform."""

    type: ClassVar[str]
    #: names in ``DeployRequest.options`` this backend understands; any other is refused
    options: ClassVar[frozenset[str]] = frozenset()
    #: whether the platform's own serving side applies ``idle_ttl`` (the local router);
    #: otherwise nbscale's detached idle watcher deletes the endpoint when it is idle
    applies_idle_ttl: ClassVar[bool] = False
    #: seconds ``wait`` allows an endpoint to start serving
    deploy_timeout: ClassVar[float] = 900.0
    #: where ``wait`` writes a line each time the endpoint's state changes (None: silent)
    progress: IO[str] | None = None

    def __init__(self, config: BackendConfig, store: Store):
        self.config = config
        self.store = store

    @property
    def backend(self) -> str:
        """The configured name of this backend (``[backends.NAME]``)."""
        return self.config.name

    def replica_limit(self) -> int:
        """The most replicas this backend can honour (checked before anything starts)."""
        return 1000

    def validate(self, request: DeployRequest) -> None:
        """Refuse a request this backend cannot honour (``SpecError``), before anything is made."""
        flags = {  # the CLI's names
            "canary_traffic_percent": "canary",
            "timeout_s": "timeout",
            "memory_size_mb": "memory-mb",
        }
        false_flags = {"direct": "proxy"}  # a false that is a choice of its own, not unset
        for key, value in request.options.items():
            if key in self.options:
                continue
            if value is False and key in false_flags:
                flag = false_flags[key]
            elif value in (None, "", False):
                continue
            else:
                flag = flags.get(key, key).replace("_", "-")
            raise SpecError(
                flag,
                f"the {self.type} endpoint backend does not use it",
                f"drop --{flag} or deploy with a backend that has it",
            )

    def render(self, request: DeployRequest) -> DryRun:
        """The exact platform objects ``deploy`` would send (for ``--dry-run``), built without
        uploading or creating anything."""
        raise SpecError(
            "--dry-run",
            f"the {self.type} endpoint backend sends no manifest to show",
            "leave --dry-run out, or use a Kubernetes or cloud backend",
        )

    @abstractmethod
    def deploy(self, request: DeployRequest) -> EndpointRecord:
        """Create the endpoint, wait until it answers, and return its stored record."""

    @abstractmethod
    def status(self, record: EndpointRecord) -> EndpointRecord:
        """Refresh the record from the platform (READY, SCALED_TO_ZERO, STARTING, FAILED...)."""

    def wait(self, name: str, timeout: float | None = None) -> EndpointRecord:
        """Poll ``status`` until endpoint ``name`` serves (READY or SCALED_TO_ZERO) and return
        its record; the endpoint's error when it FAILED, ``WaitTimeout`` after ``timeout`` s
        (default ``deploy_timeout``). Progress lines go to ``progress``."""
        from ..store.endpoints import FAILED, READY, SCALED_TO_ZERO, get_endpoint
        from .remote.lifecycle import wait_for

        return wait_for(
            f"endpoint {name}",
            lambda: self.status(get_endpoint(self.store, name)),
            lambda rec: rec.status,
            lambda rec: rec.status in (READY, SCALED_TO_ZERO),
            timeout=self.deploy_timeout if timeout is None else timeout,
            interval=0.5,
            hint=f"see why with: nbscale endpoints; remove it with: nbscale undeploy {name}",
            failure=lambda rec: (
                BackendUnavailable(f"endpoint {name!r} failed: {rec.error}")
                if rec.status == FAILED
                else None
            ),
            progress=self.progress,
        )

    def display_status(self, record: EndpointRecord) -> str:
        """The status to show without asking the platform (cheap; the stored one by default)."""
        return record.status

    @abstractmethod
    def metadata(self, record: EndpointRecord) -> dict[str, Any]:
        """The V2 model metadata: name, inputs and outputs with shape (-1 for batch) and datatype."""

    @abstractmethod
    def predict(self, record: EndpointRecord, x: Any) -> np.ndarray:
        """Rows in (numpy, torch or nested lists; one row is made a batch of one), rows out."""

    @abstractmethod
    def metrics(self, record: EndpointRecord) -> dict[str, Any]:
        """Latency percentiles, throughput, error rate, replicas and a per-second series."""

    def invocations(self, record: EndpointRecord, minutes: int) -> float:
        """Requests the endpoint served in the last ``minutes`` (the idle watch of an
        endpoint whose platform does not apply ``idle_ttl`` itself asks this)."""
        raise BackendUnavailable(
            f"the {self.type} endpoint backend keeps no request history",
            "deploy without --idle-ttl on this backend",
        )

    @abstractmethod
    def scale(self, record: EndpointRecord, min_replicas: int, max_replicas: int) -> EndpointRecord:
        """Change the replica range; return the updated record."""

    @abstractmethod
    def undeploy(self, name: str) -> None:
        """Remove everything the endpoint runs and the record."""

    @abstractmethod
    def list(self) -> list[EndpointRecord]:
        """The endpoints of this backend."""

    def promote(self, record: EndpointRecord) -> EndpointRecord:
        """Send all traffic to the canary version."""
        raise SpecError("canary", f"the {self.type} endpoint backend has no canary rollouts")

    def rollback(self, record: EndpointRecord) -> EndpointRecord:
        """Send all traffic back to the version before the canary."""
        raise SpecError("canary", f"the {self.type} endpoint backend has no canary rollouts")

    def scrape(self, record: EndpointRecord) -> Scrape | None:
        """The serving runtime's Prometheus metrics as one scrape, where this platform lets
        nbscale read them directly (``None`` where it reports metrics its own way)."""
        return None

    def captured_inputs(
        self, record: EndpointRecord, since: float
    ) -> list[tuple[float, np.ndarray]] | None:
        """(time, rows) of the requests the platform captured from ``since`` on, for drift;
        None where the serving runtime captures them in the endpoint's own folder."""
        return None

    def idle_seconds(self, record: EndpointRecord) -> float | None:
        """Seconds since the endpoint last served a request, where the platform knows it."""
        return None

    def close(self, name: str) -> None:  # noqa: B027 - backends without connections keep none
        """Drop any connection kept open for endpoint ``name``."""

    def check(self) -> dict[str, Any]:
        """Whether the platform can be reached: ``{"reachable": bool, "detail": str}``."""
        return {"reachable": True, "detail": "ok"}


# -- the V2 protocol client ----------------------------------------------------


class V2Client:
    """Open Inference Protocol (V2) over one keep-alive HTTP connection.

    ``headers`` is called for every request (a token file can change);
    ``unreachable`` is the hint given when the server does not answer.
    """

    def __init__(
        self,
        name: str,
        url: str,
        headers: Callable[[], dict[str, str]] = dict,
        unreachable: str = "check it with: nbscale endpoints",
        model: str | None = None,
    ):
        self.name = name
        self.url = url.rstrip("/")
        self.model = model or name
        self._headers = headers
        self._unreachable = unreachable
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SpecError("url", f"{url!r} is not an http(s) URL of endpoint {name!r}")
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._conn: http.client.HTTPConnection | None = None
        self._input: dict[str, Any] | None = None

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        if self._scheme == "https":
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout)
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        timeout: float = 150.0,
        content_type: str = "application/json",
    ) -> tuple[int, bytes]:
        headers = {**self._headers(), "Content-Type": content_type}
        for attempt in range(2):
            if self._conn is None:
                self._conn = self._connect(timeout)
            try:
                self._conn.request(method, self._prefix + path, body=body, headers=headers)
                resp = self._conn.getresponse()
                return resp.status, resp.read()
            except (ConnectionError, http.client.HTTPException, OSError) as exc:
                self._conn.close()
                self._conn = None
                if attempt:
                    raise BackendUnavailable(
                        f"endpoint {self.name!r} did not answer at {self.url}: {exc}",
                        self._unreachable,
                    ) from None
        raise AssertionError("unreachable")

    def check(self, status: int, body: bytes) -> Any:
        from ..serving.jsoncodec import loads

        data = loads(body) if body else {}
        if status >= 400:
            message = data.get("error") if isinstance(data, dict) else body[:200]
            if status == 400:
                raise SpecError("input", str(message))
            raise NbscaleError(f"endpoint {self.name!r} answered {status}: {message}")
        return data

    def get_json(self, path: str, timeout: float = 150.0) -> Any:
        return self.check(*self.request("GET", path, timeout=timeout))

    def post_json(self, path: str, payload: Any, timeout: float = 150.0) -> Any:
        from ..serving.jsoncodec import dumps

        return self.check(*self.request("POST", path, dumps(payload), timeout=timeout))

    def metadata(self) -> dict[str, Any]:
        return self.get_json(f"/v2/models/{self.model}")

    def predict(self, x: Any) -> np.ndarray:
        from ..serving.protocol import DTYPES

        if self._input is None:
            self._input = self.metadata()["inputs"][0]
        spec = self._input
        arr = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
        single = arr.ndim == len(spec["shape"]) - 1
        if single:
            arr = arr[None]
        arr = np.ascontiguousarray(arr, dtype=DTYPES[spec["datatype"]])
        req = {
            "inputs": [
                {
                    "name": spec["name"],
                    "shape": list(arr.shape),
                    "datatype": spec["datatype"],
                    "data": arr.reshape(-1),
                }
            ]
        }
        out = self.post_json(f"/v2/models/{self.model}/infer", req)["outputs"][0]
        result = np.asarray(out["data"], dtype=DTYPES[out["datatype"]]).reshape(out["shape"])
        return result[0] if single else result

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class V2Clients:
    """One ``V2Client`` per endpoint name, made on first use, for a backend to keep."""

    def __init__(self, make: Callable[[EndpointRecord], V2Client]):
        self._make = make
        self._clients: dict[str, V2Client] = {}

    def get(self, record: EndpointRecord) -> V2Client:
        client = self._clients.get(record.name)
        if client is None or client.url != record.url.rstrip("/"):
            if client is not None:
                client.close()
            client = self._clients[record.name] = self._make(record)
        return client

    def close(self, name: str) -> None:
        client = self._clients.pop(name, None)
        if client is not None:
            client.close()
