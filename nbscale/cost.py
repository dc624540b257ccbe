"""What a job costs: hours x nodes x the hourly price of one node.

Prices are public on-demand list prices (USD per instance hour, us-east-1,
late 2025) for the instance types people train on. Every price is editable in
the backend's table of the config file:

    [backends.prod]
    type = "sagemaker"
    prices = { "ml.g5.xlarge" = 1.20 }   # per instance type (negotiated rates)
    spot_discount = 0.7                   # managed spot: share saved, for estimates

    [backends.local]
    type = "local"
    gpu_hour_price = 0.90                 # a local GPU-hour; 0 unless configured
    node_hour_price = 0.0

    [backends.kf]
    type = "kubeflow"
    prices = { "g5.xlarge" = 1.006 }      # on-demand, per instance type
    spot_prices = { "g5.xlarge" = 0.40 }  # on spot nodes (--spot)
    spot_discount = 0.6                   # else: the share spot saves

``price_per_node_hour`` overrides everything for that backend. A spot job
(``spec.spot``) is priced at ``spot_prices[instance]``, else at the on-demand
price less ``spot_discount`` (no discount known: the on-demand price). On
SageMaker, actual spot cost comes from ``BillableTimeInSeconds`` instead (it
already counts the savings); elsewhere it is wall-clock x nodes x the spot
price, and the savings are the on-demand cost of the same hours less that. The same
module prices estimates (before submit), budgets (``max_cost``: refused when
the estimate is over, stopped when the running cost reaches it), actual cost
(wall-clock x nodes, or SageMaker's ``BillableTimeInSeconds`` when the backend
records it as ``info.billable_seconds``) and the spot savings.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

from .config import Config
from .config import load as load_config
from .errors import SpecError
from .words import count

# SageMaker training instances (the ``ml.`` prices include the SageMaker fee)
INSTANCE_PRICES: dict[str, float] = {
    "ml.m5.xlarge": 0.23,
    "ml.m5.2xlarge": 0.461,
    "ml.c5.2xlarge": 0.408,
    "ml.g4dn.xlarge": 0.736,
    "ml.g4dn.12xlarge": 4.89,
    "ml.g5.xlarge": 1.408,
    "ml.g5.2xlarge": 1.515,
    "ml.g5.12xlarge": 7.09,
    "ml.g5.48xlarge": 20.36,
    "ml.p3.2xlarge": 3.825,
    "ml.p3.8xlarge": 14.688,
    "ml.p3.16xlarge": 28.152,
    "ml.p4d.24xlarge": 37.688,
    "ml.p5.48xlarge": 113.07,
}
# a Kubernetes node is priced by what it holds, absent a configured price
CPU_NODE_HOUR = 0.20
GPU_HOUR = 2.50


@dataclass(frozen=True)
class Pricing:
    """How a platform's node hours are priced where its settings name no price; each
    platform's ``Platform.pricing`` (``nbscale.backends.platform``) says which applies."""

    #: your own machine: free unless ``node_hour_price`` / ``gpu_hour_price`` are set
    own_machine: bool = False
    #: the instance type a job without one runs on
    default_instance: str | None = None
    #: an instance type with no known price is an error rather than a node-priced guess
    instance_required: bool = False
    #: the platform's billed time already holds what spot capacity saved
    billed_spot: bool = False
    #: the region whose list prices ``INSTANCE_PRICES`` holds for this platform (None: the
    #: prices do not vary by region); elsewhere they only stand in for estimates, with a
    #: note, and a budget needs the backend's own ``prices``
    list_region: str | None = None


@functools.lru_cache(maxsize=64)
def pricing(backend_type: str) -> Pricing:
    """The pricing of an installed platform (``Pricing()`` for one that gives none); the
    installed platforms do not change while a process runs, so it is looked up once per
    type (a page of 50 jobs priced each row's entry point anew)."""
    from .config import platform_entry_points

    ep = platform_entry_points().get(backend_type)
    try:
        found = getattr(ep.load(), "pricing", None) if ep is not None else None
    except ImportError:
        found = None
    return found if isinstance(found, Pricing) else Pricing()


@dataclass(frozen=True)
class Estimate:
    backend: str
    price_per_node_hour: float
    nodes: int
    hours: float

    @property
    def total(self) -> float:
        return job_cost(self.hours, self.nodes, self.price_per_node_hour)

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "price_per_node_hour": self.price_per_node_hour,
            "nodes": self.nodes,
            "hours": self.hours,
            "total": self.total,
            "currency": "USD",
        }


def job_cost(hours: float, nodes: int, price_per_node_hour: float) -> float:
    return round(hours * nodes * price_per_node_hour, 4)


def node_price(
    backend_type: str,
    settings: dict[str, Any] | None = None,
    instance_type: str | None = None,
    gpus_per_node: int = 0,
) -> float:
    """USD per node hour on a backend of ``backend_type``."""
    settings = settings or {}
    if "price_per_node_hour" in settings:
        return _price(settings["price_per_node_hour"], "price_per_node_hour")
    rules = pricing(backend_type)
    if rules.own_machine:  # your own machine: free unless its hours are given a price
        return (
            _price(settings.get("node_hour_price", 0.0), "node_hour_price")
            + _price(settings.get("gpu_hour_price", 0.0), "gpu_hour_price") * gpus_per_node
        )
    instance = instance_type or settings.get("instance_type") or rules.default_instance
    configured = settings.get("prices") or {}
    if not isinstance(configured, dict):
        raise SpecError("prices", "must be a table of instance type = USD per hour")
    if instance:
        if instance in configured:
            return _price(configured[instance], f"prices.{instance}")
        if instance in INSTANCE_PRICES:
            return INSTANCE_PRICES[instance]
        if rules.instance_required:
            raise SpecError(
                "instance_type",
                f"no price known for {instance!r}",
                f"set price_per_node_hour in [backends.*] or use one of {', '.join(sorted(INSTANCE_PRICES))}",
            )
    return (
        _price(settings.get("node_hour_price", CPU_NODE_HOUR), "node_hour_price")
        + _price(settings.get("gpu_hour_price", GPU_HOUR), "gpu_hour_price") * gpus_per_node
    )


def foreign_list_price(
    backend_type: str, settings: dict[str, Any] | None = None, instance_type: str | None = None
) -> tuple[str, str] | None:
    """(why, what to set) when the price of ``instance_type`` is only a stand-in, None when
    it is the real list price: nbscale's list is one region's (``Pricing.list_region``), and
    a backend in another region without its own ``prices`` for the type is priced with it."""
    settings = settings or {}
    rules = pricing(backend_type)
    if not rules.list_region or "price_per_node_hour" in settings:
        return None
    instance = instance_type or settings.get("instance_type") or rules.default_instance
    region = settings.get("region")
    if (
        not instance
        or instance in (settings.get("prices") or {})
        or instance not in INSTANCE_PRICES
        or not region
        or region == rules.list_region
    ):
        return None
    return (
        f"{instance} is priced at its {rules.list_region} list price, and {region}'s may differ",
        f'prices = {{ "{instance}" = USD_PER_HOUR }}',
    )


def budget_price(
    backend_type: str,
    settings: dict[str, Any] | None,
    instance_type: str | None,
    gpus_per_node: int,
    backend: str,
) -> float:
    """The node-hour price a budget (``max_cost``) is turned into runtime with: never
    another region's list price."""
    foreign = foreign_list_price(backend_type, settings, instance_type)
    if foreign:
        why, setting = foreign
        raise SpecError(
            "max_cost",
            f"the budget cannot be priced: {why}",
            f"set {setting} or price_per_node_hour in [backends.{backend}]",
        )
    try:
        return node_price(backend_type, settings, instance_type, gpus_per_node)
    except SpecError:
        instance = instance_type or (settings or {}).get("instance_type") or "this instance type"
        raise SpecError(
            "max_cost",
            f"no price is known for {instance}, so the budget cannot be turned into a runtime",
            f'set prices = {{ "{instance}" = USD_PER_HOUR }} or price_per_node_hour in '
            f"[backends.{backend}]",
        ) from None


def spot_price(
    on_demand: float, settings: dict[str, Any] | None = None, instance_type: str | None = None
) -> float:
    """USD per node hour on spot capacity: ``spot_prices``, else less ``spot_discount``."""
    settings = settings or {}
    table = settings.get("spot_prices") or {}
    if instance_type and isinstance(table, dict) and instance_type in table:
        return _price(table[instance_type], f"spot_prices.{instance_type}")
    discount = settings.get("spot_discount")
    if discount is None:
        return on_demand
    try:
        share = float(discount)
    except (TypeError, ValueError):
        share = -1.0
    if not 0 <= share < 1:
        raise SpecError("spot_discount", f"must be from 0 to below 1, got {discount!r}")
    return round(on_demand * (1 - share), 6)


def _price(value: Any, key: str) -> float:
    try:
        price = float(value)
    except (TypeError, ValueError):
        price = -1.0
    if not price >= 0:
        raise SpecError(key, f"must be a price in USD >= 0, got {value!r}", "fix the config file")
    return price


def estimate(
    backend: str | None = None,
    nodes: int = 1,
    procs_per_node: int = 1,
    gpus_per_proc: int = 0,
    instance_type: str | None = None,
    hours: float = 1.0,
    config: Config | None = None,
) -> Estimate:
    """The price of running ``nodes`` for ``hours`` on a configured backend (for the Run-as-job dialog)."""
    config = config or load_config()
    bconf = config.backend(backend)
    if hours <= 0:
        raise SpecError("hours", f"must be more than 0, got {hours}")
    price = node_price(bconf.type, bconf.settings, instance_type, procs_per_node * gpus_per_proc)
    return Estimate(bconf.name, price, nodes, hours)


def record_cost(job: dict[str, Any], config: Config) -> float | None:
    """Cost so far of a job dict (``JobRecord.to_dict()``); None before it starts."""
    duration = job.get("duration")
    if duration is None:
        return None
    spec = job.get("spec") or {}
    bconf = config.backends.get(job["backend"])
    settings = bconf.settings if bconf else {}
    try:
        price = node_price(
            job.get("backend_type", "local"),
            settings,
            spec.get("instance_type"),
            job.get("procs_per_node", 1) * job.get("gpus_per_proc", 0),
        )
    except SpecError:
        return None  # an unknown instance type: no price rather than a wrong one
    return job_cost(duration / 3600.0, job.get("nodes", 1), price)


# -- before submit: the estimate and the budget -------------------------------------------------
def spec_price(spec: Any, config: Config | None = None) -> tuple[str, float]:
    """(backend name, USD per node hour) for a ``JobSpec`` or its dict."""
    config = config or load_config()
    get = spec.get if isinstance(spec, dict) else lambda k, d=None: getattr(spec, k, d)
    bconf = config.backend(get("backend"))
    gpus = (get("procs_per_node", 1) or 1) * (get("gpus_per_proc", 0) or 0)
    price = node_price(bconf.type, bconf.settings, get("instance_type"), gpus)
    if get("spot") and not pricing(bconf.type).own_machine:
        price = spot_price(price, bconf.settings, get("instance_type"))
    return bconf.name, price


def _note(foreign: tuple[str, str] | None) -> str | None:
    return f"{foreign[0]}: set {foreign[1]}" if foreign else None


def spec_estimate(spec: Any, config: Config | None = None) -> dict[str, Any]:
    """What the job may cost: per hour, and in total when ``max_runtime`` bounds it."""
    get = spec.get if isinstance(spec, dict) else lambda k, d=None: getattr(spec, k, d)
    backend, price = spec_price(spec, config)
    nodes = get("nodes", 1) or 1
    runtime = get("max_runtime")
    max_cost = get("max_cost")
    total = job_cost(runtime / 3600.0, nodes, price) if runtime else None
    config = config or load_config()
    bconf = config.backend(get("backend"))
    return {
        "backend": backend,
        "price_note": _note(foreign_list_price(bconf.type, bconf.settings, get("instance_type"))),
        "price_per_node_hour": price,
        "nodes": nodes,
        "per_hour": round(price * nodes, 4),
        "max_runtime": runtime,
        "total": total,
        "max_cost": max_cost,
        "budget_hours": round(max_cost / (price * nodes), 4) if max_cost and price else None,
        "currency": "USD",
    }


def describe_estimate(est: dict[str, Any]) -> str:
    """One line for ``--dry-run`` and the ``%%train`` report."""
    head = (
        f"estimated cost: ${est['per_hour']:.2f}/hour ({count(est['nodes'], 'node')} x "
        f"${est['price_per_node_hour']:.2f} on {est['backend']})"
    )
    if est["total"] is not None:
        head += f", at most ${est['total']:.2f} for the max runtime of {est['max_runtime']} s"
    if est["max_cost"] is not None:
        if est["budget_hours"] is None:
            head += f"; budget ${est['max_cost']:.2f} (this backend costs nothing: never reached)"
        else:
            head += (
                f"; budget ${est['max_cost']:.2f} (stopped after "
                f"{est['budget_hours'] * 3600:.0f} s of running)"
            )
    if est.get("price_note"):
        head += f" ({est['price_note']})"
    return head


def check_budget(spec: Any, config: Config | None = None) -> dict[str, Any]:
    """Refuse a spec whose estimate is over its ``max_cost``, saying by how much, or whose
    budget could only be priced with another region's list price."""
    est = spec_estimate(spec, config)
    if est["max_cost"] is not None and est["price_note"]:
        config = config or load_config()
        get = spec.get if isinstance(spec, dict) else lambda k, d=None: getattr(spec, k, d)
        bconf = config.backend(get("backend"))
        budget_price(bconf.type, bconf.settings, get("instance_type"), 0, bconf.name)
    if est["max_cost"] is not None and est["total"] is not None and est["total"] > est["max_cost"]:
        over = est["total"] - est["max_cost"]
        raise SpecError(
            "max_cost",
            f"the estimate ${est['total']:.2f} ({count(est['nodes'], 'node')} x "
            f"${est['price_per_node_hour']:.2f}/hour x {est['max_runtime']} s) is "
            f"${over:.2f} over the budget of ${est['max_cost']:.2f}",
            "raise --max-cost, or lower --max-runtime or --nodes",
        )
    return est


# -- while it runs: the budget guard the local supervisor polls ---------------------------------
_guards: dict[str, tuple[float, float] | None] = {}


def budget_stop(store: Any, job_id: str, spec: dict[str, Any]) -> str | None:
    """Why the job must stop now (its running cost reached ``max_cost``), else None.

    The first call per job fixes the moment the budget runs out (from the
    job's start and its price); later calls are arithmetic. Reaching it
    records a ``budget_reached`` event once.
    """
    max_cost = spec.get("max_cost")
    if max_cost is None:
        return None
    if job_id not in _guards:
        from .store.jobs import get_job

        try:
            _, price = spec_price(spec)
        except SpecError:
            price = 0.0
        record = get_job(store, job_id)
        nodes = spec.get("nodes", 1) or 1
        started = record.started or time.time()
        _guards[job_id] = (
            (started + max_cost / (price * nodes) * 3600.0, price * nodes) if price else None
        )
    guard = _guards[job_id]
    if guard is None or time.time() < guard[0]:
        return None
    from .store.events import BUDGET_REACHED, record_event

    record_event(
        store,
        "job",
        job_id,
        BUDGET_REACHED,
        {"max_cost": max_cost, "per_hour": guard[1]},
        key="budget",
    )
    return f"reached its budget of ${max_cost:.2f} (${guard[1]:.2f}/hour); stopped"


# -- after: actual cost, spot savings, reports ---------------------------------------------------
def record_costs(record: Any, config: Config) -> dict[str, Any] | None:
    """Actual, on-demand and saved cost of a ``JobRecord``; None before it starts or unpriced."""
    duration = record.duration
    if duration is None:
        return None
    spec = record.spec or {}
    bconf = config.backends.get(record.backend)
    settings = bconf.settings if bconf else {}
    try:
        price = node_price(
            record.backend_type,
            settings,
            spec.get("instance_type"),
            (spec.get("procs_per_node", 1) or 1) * (spec.get("gpus_per_proc", 0) or 0),
        )
    except SpecError:
        return None
    nodes = spec.get("nodes", 1) or 1
    info = record.info or {}
    billed_s = info.get("billable_seconds")  # SageMaker: BillableTimeInSeconds (spot: less)
    ran_s = info.get("training_seconds") or duration
    # spot elsewhere: the hours as they ran, at the spot price (SageMaker's billed time
    # already holds its savings)
    paid = price
    rules = pricing(record.backend_type)
    if spec.get("spot") and billed_s is None and not (rules.own_machine or rules.billed_spot):
        try:
            paid = spot_price(price, settings, spec.get("instance_type"))
        except SpecError:
            return None
    cost = job_cost((billed_s if billed_s is not None else ran_s) / 3600.0, nodes, paid)
    on_demand = job_cost(ran_s / 3600.0, nodes, price)
    return {
        "cost": cost,
        "on_demand_cost": on_demand,
        "spot_savings": round(max(0.0, on_demand - cost), 4),
        "node_hours": round(ran_s / 3600.0 * nodes, 4),
        "price_per_node_hour": paid,
        "on_demand_price_per_node_hour": price,
        "spot": bool(spec.get("spot")),
        "billable_seconds": billed_s,
    }


def cost_report(
    since_s: float | None = None, by: str = "backend", config: Config | None = None
) -> dict[str, Any]:
    """Jobs that ran (since ``since_s`` seconds ago), their cost grouped by backend, name or tag."""
    from .store import get_store
    from .store.jobs import JobRecord

    if by not in ("backend", "name", "tag"):
        raise SpecError("--by", f"must be backend, name or tag, got {by!r}")
    config = config or load_config()
    store = get_store()
    sql = "SELECT * FROM jobs WHERE started IS NOT NULL"
    params: tuple = ()
    if since_s is not None:
        sql += " AND COALESCE(ended, ?) >= ?"
        params = (time.time(), time.time() - since_s)
    groups: dict[str, dict[str, Any]] = {}
    total = {"jobs": 0, "cost": 0.0, "on_demand_cost": 0.0, "spot_savings": 0.0, "unpriced": 0}
    for row in store.query(sql + " ORDER BY created", params):
        rec = JobRecord.from_row(row)
        c = record_costs(rec, config)
        if by == "tag":
            tags = rec.spec.get("tags") or {}
            keys = [f"{k}={v}" for k, v in sorted(tags.items())] or ["(no tag)"]
        else:
            keys = [rec.backend if by == "backend" else rec.name]
        total["jobs"] += 1
        if c is None:
            total["unpriced"] += 1
        else:
            for k in ("cost", "on_demand_cost", "spot_savings"):
                total[k] = round(total[k] + c[k], 4)
        for key in keys:
            g = groups.setdefault(
                key,
                {
                    "key": key,
                    "jobs": 0,
                    "node_hours": 0.0,
                    "cost": 0.0,
                    "on_demand_cost": 0.0,
                    "spot_savings": 0.0,
                },
            )
            g["jobs"] += 1
            if c is not None:
                for k in ("node_hours", "cost", "on_demand_cost", "spot_savings"):
                    g[k] = round(g[k] + c[k], 4)
    ordered = sorted(groups.values(), key=lambda g: (-g["cost"], g["key"]))
    return {"by": by, "since_s": since_s, "groups": ordered, "total": total, "currency": "USD"}


def check_price_settings(name: str, raw: dict[str, Any]) -> None:
    """A backend table's price entries (read by this module), refused when they are no prices.

    Called by the backends' settings checks, so a bad price is refused at ``nbscale config``
    time with the setting's name.
    """

    def price(key: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise SpecError(
                f"[backends.{name}] {key}", f"must be a price in USD >= 0, got {value!r}"
            )

    for key in ("price_per_node_hour", "node_hour_price", "gpu_hour_price"):
        if key in raw:
            price(key, raw[key])
    for key in ("prices", "spot_prices"):
        if key in raw:
            if not isinstance(raw[key], dict):
                raise SpecError(
                    f"[backends.{name}] {key}",
                    "must be a table of instance type = USD per node hour",
                    f'e.g. {key} = {{ "g5.xlarge" = 1.0 }}',
                )
            for instance, value in raw[key].items():
                price(f"{key}.{instance}", value)
    if "spot_discount" in raw:
        d = raw["spot_discount"]
        if isinstance(d, bool) or not isinstance(d, int | float) or not 0 <= d < 1:
            raise SpecError(
                f"[backends.{name}] spot_discount",
                f"must be the share saved on spot nodes, from 0 to below 1, got {d!r}",
            )
