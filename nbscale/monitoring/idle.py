"""What is running now and what it costs per hour: active jobs and deployed endpoints.

An endpoint costs its current replicas x the node price of its backend (a
local one nothing, unless its backend's hours are priced in the config); one
scaled to zero costs nothing. For a local endpoint the router says how long it
has gone without a request (``idle``), so an endpoint worth an ``--idle-ttl``
stands out.
"""

from __future__ import annotations

from typing import Any

from ..config import Config
from ..config import load as load_config
from ..cost import node_price
from ..errors import SpecError
from ..store import get_store
from ..store.endpoints import list_endpoints
from ..store.jobs import ACTIVE, JobRecord


def _price(
    config: Config,
    backend: str,
    backend_type: str,
    instance: str | None,
    gpus: int,
    component: str = "training",
) -> float:
    bconf = config.backends.get(backend)
    settings = bconf.settings if bconf else {}
    if component == "hosting":  # an endpoint's own instance type, not the training default
        instance = instance or settings.get("endpoint_instance_type")
    try:
        return node_price(backend_type, settings, instance, gpus, component=component)
    except SpecError:
        pass
    try:  # no hosting list price known (before --refresh-prices): the training one stands in
        return (
            node_price(backend_type, settings, instance, gpus) if component != "training" else 0.0
        )
    except SpecError:
        return 0.0  # an unknown instance type: no price rather than a wrong one


def _idle_seconds(ep, config: Config, store, backends: dict) -> float | None:
    """What the endpoint's platform knows of its idle time (``EndpointBackend.idle_seconds``)."""
    from ..backends import endpoint_backend_for

    try:
        if ep.backend not in backends:
            backends[ep.backend] = endpoint_backend_for(ep, config, store)
        return backends[ep.backend].idle_seconds(ep)
    except Exception:  # noqa: BLE001 - a platform that cannot be asked: idle time unknown
        return None


def _idle_text(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def running_things(config: Config | None = None) -> list[dict[str, Any]]:
    """Active jobs and deployed endpoints with their cost per hour, most expensive first."""
    config = config or load_config()
    store = get_store()
    out: list[dict[str, Any]] = []
    rows = store.query(
        f"SELECT * FROM jobs WHERE status IN ({', '.join('?' * len(ACTIVE))}) ORDER BY created",
        tuple(ACTIVE),
    )
    for row in rows:
        rec = JobRecord.from_row(row)
        spec = rec.spec or {}
        nodes = spec.get("nodes", 1) or 1
        gpus = (spec.get("procs_per_node", 1) or 1) * (spec.get("gpus_per_proc", 0) or 0)
        price = _price(config, rec.backend, rec.backend_type, spec.get("instance_type"), gpus)
        out.append(
            {
                "kind": "job",
                "name": f"{rec.name} ({rec.id})",
                "backend": rec.backend,
                "status": rec.status,
                "units": nodes,
                "cost_per_hour": round(price * nodes, 4),
                "since": rec.started or rec.created,
                "idle": None,
                "idle_s": None,
            }
        )
    backends: dict[str, Any] = {}
    for ep in list_endpoints(store):
        cfg = ep.config or {}
        price = _price(
            config, ep.backend, ep.backend_type, cfg.get("instance_type"), 0, component="hosting"
        )
        idle_s = _idle_seconds(ep, config, store, backends)
        out.append(
            {
                "kind": "endpoint",
                "name": ep.name,
                "backend": ep.backend,
                "status": ep.status,
                "units": ep.replicas,
                "cost_per_hour": round(price * ep.replicas, 4),
                "since": ep.created,
                "idle": _idle_text(idle_s),
                "idle_s": idle_s,
                "idle_ttl_s": cfg.get("idle_ttl_s"),
            }
        )
    return sorted(out, key=lambda t: (-t["cost_per_hour"], t["kind"], t["name"]))


def idle_teardown(name: str, now: float | None = None, config: Config | None = None) -> bool:
    """Delete a cloud endpoint that has had no invocation for its ``idle_ttl_s``.

    The platform's own metrics decide (SageMaker: CloudWatch ``Invocations``
    over the last TTL); the backend's ``undeploy`` removes the endpoint, its
    configs, models and scaling policy. Returns whether it was deleted, and
    records an ``idle_deleted`` event when it was. Local endpoints are scaled
    to zero by their router instead.
    """
    import math
    import time

    from ..backends import endpoint_backend_for
    from ..errors import NotFound
    from ..store.endpoints import get_endpoint
    from ..store.events import record_event

    config = config or load_config()
    store = get_store()
    now = time.time() if now is None else now
    try:
        rec = get_endpoint(store, name)
    except NotFound:
        return False
    ttl = (rec.config or {}).get("idle_ttl_s")
    if not ttl or now - rec.created < ttl:
        return False
    backend = endpoint_backend_for(rec, config, store)
    if backend.applies_idle_ttl:
        return False
    minutes = max(1, math.ceil(ttl / 60))
    if backend.invocations(rec, minutes) > 0:
        return False
    backend.undeploy(name)
    record_event(
        store,
        "endpoint",
        name,
        "idle_deleted",
        {"idle_ttl_s": ttl, "window_minutes": minutes, "backend": rec.backend},
        key=str(int(rec.created)),
    )
    return True
