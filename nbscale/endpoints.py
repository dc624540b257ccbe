"""The Python API for endpoints: ``deploy``, ``endpoints()``, ``endpoint(name)``.

    ep = deploy(model, name="digits", replicas=(1, 2))
    ep.predict(x)          # numpy in, numpy out, over the V2 protocol
    ep.metrics()           # p50/p95/p99, throughput, errors, replicas, a time series
    ep.scale(0, 4); ep.delete()

Every face (CLI, magics, server extension) goes through these functions.
The bearer token is read from its 0600 file and sent for you.
"""

from __future__ import annotations

import contextlib
import math
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .backends import DryRun, endpoint_backend_for, get_endpoint_backend
from .backends.endpoint_base import DeployRequest, EndpointBackend
from .config import load as load_config
from .errors import Conflict, SpecError
from .paths import endpoint_dir
from .serving.artifact import package, read_manifest, sign, verify
from .serving.capture import floor_from_env
from .store import get_store
from .store.endpoints import ROLLED_BACK, EndpointRecord, get_endpoint, list_endpoints
from .store.paging import Page
from .words import count

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class Endpoint:
    """A handle on one endpoint; it reads the store when asked."""

    def __init__(self, record: EndpointRecord, manager: EndpointBackend):
        self._record = record
        self._manager = manager

    @property
    def name(self) -> str:
        return self._record.name

    @property
    def url(self) -> str:
        return self._record.url

    @property
    def record(self) -> EndpointRecord:
        return self._record

    def refresh(self) -> EndpointRecord:
        self._record = self._manager.status(get_endpoint(self._manager.store, self.name))
        return self._record

    @property
    def rolled_back(self) -> str | None:
        """Why the platform rolled the last new version back (None unless ROLLED_BACK): the
        endpoint serves the version before it."""
        return (self._record.error or "rolled back") if self._record.status == ROLLED_BACK else None

    @property
    def status(self) -> str:
        """The stored status, or DOWN when the router process is gone (``refresh()`` restarts it)."""
        return self._manager.display_status(self._record)

    def to_dict(self) -> dict[str, Any]:
        r = self._record
        return {
            "name": r.name,
            "backend": r.backend,
            "backend_type": r.backend_type,
            "url": r.url,
            "status": self.status,
            "replicas": {"current": r.replicas, "min": r.min_replicas, "max": r.max_replicas},
            "created": r.created,
            "model_dir": r.model_dir,
            "restarts": r.restarts,
            "error": r.error,
            "max_batch_size": r.config.get("max_batch_size"),
            "max_batch_delay_ms": r.config.get("max_batch_delay_ms"),
        }

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, str]:
        d = self.to_dict()
        reps = d["replicas"]
        text = (
            f"endpoint {d['name']}: {d['status']} at {d['url']} "
            f"({count(reps['current'], 'replica')}, {reps['min']}..{reps['max']})"
        )
        return {"text/plain": text}

    # -- calls -----------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        return self._manager.metadata(self._record)

    def predict(self, x: Any) -> np.ndarray:
        """Rows in (numpy, torch or nested lists; one row is made a batch of one), rows out."""
        return self._manager.predict(self._record, x)

    def metrics(self) -> dict[str, Any]:
        """Latency percentiles, throughput, error rate, replicas and a per-second series (last 2 min)."""
        self.refresh()
        from .scrapes import with_sagemaker_names

        stats = self._manager.metrics(self._record)
        return with_sagemaker_names(stats, self._manager.scrape(self._record), self._record.name)

    def drift(
        self,
        window: str | float = "1h",
        since: str | float | None = None,
        fdr: float = 0.01,
        baseline: Any = None,
    ) -> Any:
        """Captured inputs against the baseline, one report per window (``nbscale.monitoring``):
        the serving runtime's capture, or the platform's (SageMaker's data capture in S3)."""
        from .monitoring.endpoint_drift import endpoint_drift

        return endpoint_drift(
            get_store(),
            self.name,
            endpoint_dir(self.name),
            window=window,
            since=since,
            fdr=fdr,
            baseline=baseline,
            captured=lambda start: self._manager.captured_inputs(self._record, start),
        )

    def scale(self, min_replicas: int, max_replicas: int) -> Endpoint:
        _check_replicas(min_replicas, max_replicas, self._manager.replica_limit())
        self._record = self._manager.scale(self._record, min_replicas, max_replicas)
        return self

    def promote(self) -> Endpoint:
        """Send all traffic to the canary (backends with canary rollouts)."""
        self._record = self._manager.promote(self._record)
        return self

    def rollback(self) -> Endpoint:
        """Send all traffic back to the version before the canary."""
        self._record = self._manager.rollback(self._record)
        return self

    def delete(self) -> None:
        self._manager.close(self.name)
        self._manager.undeploy(self.name)

    def close(self) -> None:
        self._manager.close(self.name)


def _manager(backend: str | None = None) -> EndpointBackend:
    return get_endpoint_backend(backend, load_config(), get_store())


def _check_replicas(lo: Any, hi: Any, limit: int) -> None:
    if not (isinstance(lo, int) and isinstance(hi, int)) or lo < 0 or hi < 1 or lo > hi:
        raise SpecError(
            "replicas",
            f"({lo}, {hi}) is not MIN <= MAX with MIN >= 0 and MAX >= 1",
            "e.g. replicas=(1, 4), or (0, 2) to scale to zero when idle",
        )
    if hi > limit:
        raise SpecError(
            "replicas",
            f"MAX {hi} is more than this backend can run ({limit})",
            f"ask for at most {count(limit, 'replica')}",
        )


def _check_number(name: str, value: Any, low: float, high: float, integer: bool = False) -> None:
    """A setting a user typed: a finite number within what the server can honour."""
    kind = int if integer else int | float
    if (
        isinstance(value, bool)
        or not isinstance(value, kind)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        what = "an integer" if integer else "a number"
        raise SpecError(name, f"must be {what} from {low:g} to {high:g}, got {value!r}")


def prewarm(backend: str | None = None) -> None:
    """Get the endpoint backend ready for a first deploy, in the background (``%load_ext
    nbscale`` calls it): the local backend starts this home's warm zygote, which exits by
    itself after ``NBSCALE_WARM_TTL`` seconds without a deploy. Costs the caller a process
    start; never raises (a deploy without it is only slower)."""
    try:
        manager = _manager(backend)
    except Exception:  # noqa: BLE001 - no configured backend yet: nothing to warm
        return
    warm = getattr(manager, "prewarm", None)
    if warm is not None:
        with contextlib.suppress(Exception):
            warm()


def endpoints(limit: int | None = None, after: str | None = None) -> Page[Endpoint]:
    """Oldest first, all of them unless ``limit``; ``after`` is a page's ``next`` cursor."""
    config, store = load_config(), get_store()
    managers: dict[str, EndpointBackend] = {}
    out = []
    page = list_endpoints(store, limit, after)
    for r in page:
        if r.backend not in managers:
            managers[r.backend] = endpoint_backend_for(r, config, store)
        out.append(Endpoint(r, managers[r.backend]))
    return Page(out, page.next)


def endpoint(name: str) -> Endpoint:
    store = get_store()
    rec = get_endpoint(store, name)
    return Endpoint(rec, endpoint_backend_for(rec, load_config(), store))


def deploy(
    model_or_dir: Any,
    name: str,
    replicas: tuple[int, int] | int = (1, 1),
    max_batch_size: int = 32,
    max_batch_delay_ms: float = 2.0,
    port: int | None = None,
    backend: str | None = None,
    example: Any = None,
    target_concurrency: float = 4.0,
    scale_down_delay_s: float = 30.0,
    idle_timeout_s: float = 60.0,
    capture_rate: float | None = None,
    max_queue: int = 1024,
    baseline: Any = None,
    idle_ttl: str | float | None = None,
    options: dict[str, Any] | None = None,
    dry_run: bool = False,
) -> Endpoint | DryRun:
    """Deploy a model object or an artifact directory as an endpoint, and wait until it answers.

    ``baseline`` (training rows as numpy or pandas, a ``Baseline`` or a
    baseline.json path) turns on drift monitoring: ``Endpoint.drift()``
    compares captured inputs with it; capture defaults to every request then.
    ``idle_ttl`` (``"30m"`` or seconds): after that long without requests the
    endpoint scales to zero even above its minimum; a cloud endpoint is deleted with
    everything made for it (an event is logged either way).
    ``options`` are settings only some backends have (``canary_traffic_percent``,
    ``scale_metric``, ``gpus``...; a backend refuses one it does not use); a canary
    deploys a new version of an existing endpoint. ``dry_run`` returns the platform
    objects the backend would send (a ``DryRun``: ``text()`` is exactly them), and sends
    nothing.
    """
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise SpecError(
            "name",
            f"{name!r} is not a valid endpoint name",
            "use lower-case letters, digits and dashes, e.g. 'digits-v2'",
        )
    lo, hi = (replicas, replicas) if isinstance(replicas, int) else tuple(replicas)
    _check_number("max_batch_size", max_batch_size, 1, 65536, integer=True)
    _check_number("max_batch_delay_ms", max_batch_delay_ms, 0, 10_000)
    _check_number("max_queue", max_queue, 1, 1_000_000, integer=True)
    _check_number("target_concurrency", target_concurrency, 0.1, 10_000)
    _check_number("scale_down_delay_s", scale_down_delay_s, 0, 7 * 86400)
    _check_number("idle_timeout_s", idle_timeout_s, 0, 7 * 86400)
    idle_ttl_s = None
    if idle_ttl is not None:
        from .monitoring.drift import parse_duration

        idle_ttl_s = parse_duration(idle_ttl, "idle_ttl")
    if port is not None and (not isinstance(port, int) or not 1024 <= port <= 65535):
        raise SpecError("port", f"{port!r} is not a port between 1024 and 65535")
    if capture_rate is not None and not 0 < capture_rate <= 1:
        raise SpecError("capture_rate", f"must be in (0, 1], got {capture_rate!r}")
    base = _as_baseline(baseline) if baseline is not None else None
    if base is not None and capture_rate is None:
        capture_rate = 1.0  # drift needs captured inputs
    mgr = _manager(backend)
    _check_replicas(lo, hi, mgr.replica_limit())
    existing = mgr.store.query_one("SELECT 1 FROM endpoints WHERE name = ?", (name,))
    if existing and (options or {}).get("canary_traffic_percent") is None:
        raise Conflict(
            f"an endpoint named {name!r} exists", f"undeploy it first: nbscale undeploy {name}"
        )
    if isinstance(model_or_dir, str | Path):
        model_dir = Path(model_or_dir).resolve()
        manifest = read_manifest(model_dir)
        verify(model_dir)  # refuse a tampered artifact here, in one message, not in a replica
        if manifest.get("name") != name:
            model_dir = _relabel(model_dir, manifest, name)
    else:
        store_dir = endpoint_dir(name) / "models"
        store_dir.mkdir(parents=True, exist_ok=True)
        model_dir = package(
            model_or_dir,
            Path(tempfile.mkdtemp(prefix="model-", dir=store_dir)),
            name,
            example=example,
        )
    config = {
        "max_batch_size": max_batch_size,
        "max_batch_delay_ms": max_batch_delay_ms,
        "target_concurrency": target_concurrency,
        "scale_down_delay_s": scale_down_delay_s,
        "idle_timeout_s": idle_timeout_s,
        "max_queue": max_queue,
    }
    if idle_ttl_s is not None:
        config["idle_ttl_s"] = idle_ttl_s
    if capture_rate:
        try:  # the replica reads the same setting; say what is wrong before it starts
            floor_from_env()
        except ValueError as exc:
            raise SpecError("capture", str(exc)) from None
        config.update(capture_dir=str(endpoint_dir(name) / "capture"), capture_rate=capture_rate)
    if base is not None:
        endpoint_dir(name).mkdir(parents=True, exist_ok=True, mode=0o700)
        base.save(endpoint_dir(name) / "baseline.json")
    request = DeployRequest(name, model_dir, lo, hi, port, config, dict(options or {}))
    try:
        if dry_run:
            try:
                return mgr.render(request)
            finally:
                if model_dir.is_relative_to(endpoint_dir(name)):
                    shutil.rmtree(model_dir, ignore_errors=True)
                    _remove_if_empty(model_dir.parent, endpoint_dir(name))
        rec = mgr.deploy(request)
    except BaseException:
        if model_dir.is_relative_to(endpoint_dir(name)):  # a copy made here for this deploy
            shutil.rmtree(model_dir, ignore_errors=True)
            _remove_if_empty(model_dir.parent, endpoint_dir(name))  # kept: a failed start's logs
        raise
    if config.get("idle_ttl_s") and not mgr.applies_idle_ttl:
        from .monitoring.idle_watch import start_idle_watch

        # a cloud endpoint has no router of ours: a detached watcher deletes it when idle
        start_idle_watch(name, endpoint_dir(name) / "idle-watch.log")
    return Endpoint(rec, mgr)


def _remove_if_empty(*folders: Path) -> None:
    """Remove each folder that is empty, in order (a refused deploy leaves no empty ``models``
    or endpoint folder behind)."""
    for folder in folders:
        with contextlib.suppress(OSError):  # not empty, or already gone
            folder.rmdir()


def _as_baseline(baseline: Any) -> Any:
    from .monitoring.baseline import Baseline

    if isinstance(baseline, Baseline):
        return baseline
    if isinstance(baseline, str | Path):
        return Baseline.load(baseline)
    return Baseline.from_data(baseline, source="deploy")


def _relabel(model_dir: Path, manifest: dict, name: str) -> Path:
    """Serve an artifact under another name without touching the original: a linked copy."""
    import json

    dest = endpoint_dir(name) / "models" / f"model-{int(time.time() * 1000)}"
    shutil.copytree(model_dir, dest, copy_function=_link_or_copy)
    (dest / "nbscale.json").unlink()
    (dest / "nbscale.json").write_text(json.dumps({**manifest, "name": name}, indent=2))
    (dest / "nbscale.sig").unlink()
    sign(dest)  # the original was verified; only the name changed
    return dest


def _link_or_copy(src: str, dst: str) -> None:
    import os

    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
