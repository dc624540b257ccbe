"""What a job costs: hours x nodes x the hourly price of one node.

List prices are a platform's own table (``Pricing.table``; SageMaker's is
``nbscale/backends/sagemaker/prices.json``: USD per instance hour by region and by
component: training, hosting for endpoints, processing for pipeline steps), overlaid by
the user price file ``nbscale cost --refresh-prices`` writes from the platform's price
API (``NBSCALE_HOME/prices/TYPE.json``). Every price is editable in the backend's table
of the config file (``prices`` apply to every component):

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
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Config
from .config import load as load_config
from .errors import NbscaleError, SpecError
from .words import count

#: what an instance hour pays for, as the platforms' price lists split it
COMPONENTS = ("training", "hosting", "processing")
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
    #: the region whose list prices stand in for a region the price list lacks (None: the
    #: prices do not vary by region); elsewhere they only stand in for estimates, with a
    #: note, and a budget needs the region's own price (``--refresh-prices``, ``prices``)
    list_region: str | None = None
    #: the platform's price list, ``"package:file.json"`` (``{"regions": {REGION:
    #: {COMPONENT: {TYPE: USD per hour}}}}``)
    table: str | None = None
    #: ``"module:function"``: ``function(regions) -> the same shape`` from the platform's
    #: price API, for ``nbscale cost --refresh-prices``
    refresh: str | None = None


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


def user_price_file(backend_type: str) -> Path:
    """Where ``nbscale cost --refresh-prices`` keeps a platform's prices."""
    from .paths import home

    return home() / "prices" / f"{backend_type}.json"


def _regions(data: Any, where: str) -> dict[str, dict[str, dict[str, float]]]:
    """The ``regions`` of a price list, checked: REGION -> COMPONENT -> TYPE -> USD."""
    regions = data.get("regions") if isinstance(data, dict) else None
    if not isinstance(regions, dict):
        raise NbscaleError(f"{where} is not a price list (no regions table)")
    out: dict[str, dict[str, dict[str, float]]] = {}
    for region, parts in regions.items():
        if not isinstance(parts, dict):
            raise NbscaleError(f"{where}: region {region} is not a table")
        for component, table in parts.items():
            if component not in COMPONENTS or not isinstance(table, dict):
                raise NbscaleError(f"{where}: {region}.{component} is not a component's prices")
            for instance, price in table.items():
                if isinstance(price, bool) or not isinstance(price, int | float) or price < 0:
                    raise NbscaleError(f"{where}: {region}.{component}.{instance} is no price")
            out.setdefault(region, {})[component] = {k: float(v) for k, v in table.items()}
    return out


@functools.lru_cache(maxsize=16)
def _document(table: str) -> Any:
    from importlib import resources

    package, _, name = table.partition(":")
    return json.loads(resources.files(package).joinpath(name).read_text())


@functools.lru_cache(maxsize=16)
def _packaged(table: str) -> dict[str, dict[str, dict[str, float]]]:
    return _regions(_document(table), table)


@dataclass(frozen=True)
class RegionFactor:
    """How a region's prices compare with the list region's: ``factor`` is the median ratio
    of the ``pairs`` (the region's sourced price over the list region's, same type and
    component) that the price list derives it from; ``low``..``high`` is their spread."""

    factor: float
    pairs: int
    low: float
    high: float


@functools.lru_cache(maxsize=16)
def _factors(table: str) -> dict[str, RegionFactor]:
    """REGION -> its factor, from the price list's ``region_factors`` (``{REGION: {"factor":
    F, "pairs": {"COMPONENT TYPE": [region's price, list region's price]}}}``)."""
    raw = _document(table).get("region_factors") or {}
    out: dict[str, RegionFactor] = {}
    for region, entry in raw.items():
        factor = entry.get("factor") if isinstance(entry, dict) else None
        pairs = entry.get("pairs") if isinstance(entry, dict) else None
        if isinstance(factor, bool) or not isinstance(factor, int | float) or factor <= 0:
            raise NbscaleError(f"{table}: region_factors.{region} has no factor")
        try:
            ratios = [float(mine) / float(theirs) for mine, theirs in pairs.values()]
        except (AttributeError, TypeError, ValueError, ZeroDivisionError):
            ratios = []
        if not ratios:
            raise NbscaleError(f"{table}: region_factors.{region} has no price pairs")
        out[region] = RegionFactor(float(factor), len(ratios), min(ratios), max(ratios))
    return out


def region_factor(backend_type: str, region: str | None) -> RegionFactor | None:
    """The factor a price list derives for ``region`` against its list region (None: none)."""
    rules = pricing(backend_type)
    if not rules.table or not region or region == rules.list_region:
        return None
    return _factors(rules.table).get(region)


@functools.lru_cache(maxsize=16)
def _user(path: str, mtime: float) -> dict[str, dict[str, dict[str, float]]]:
    try:
        return _regions(json.loads(Path(path).read_text()), path)
    except (OSError, ValueError, NbscaleError):
        return {}  # a broken file prices nothing; --refresh-prices replaces it


def list_prices(backend_type: str) -> dict[str, dict[str, dict[str, float]]]:
    """REGION -> COMPONENT -> instance type -> USD per hour: the platform's table, with
    the user price file's prices over it."""
    rules = pricing(backend_type)
    merged: dict[str, dict[str, dict[str, float]]] = {}
    sources = [_packaged(rules.table)] if rules.table else []
    path = user_price_file(backend_type)
    if path.is_file():
        sources.append(_user(str(path), path.stat().st_mtime))
    for source in sources:
        for region, parts in source.items():
            for component, table in parts.items():
                merged.setdefault(region, {}).setdefault(component, {}).update(table)
    return merged


def list_price(
    backend_type: str, instance: str, region: str | None = None, component: str = "training"
) -> float | None:
    """The list price of ``instance`` in ``region`` (default: the platform's list region)
    for ``component``; None when the lists have none."""
    region = region or pricing(backend_type).list_region
    found = list_prices(backend_type).get(region or "", {}).get(component, {})
    return found.get(instance)


def refresh_prices(backend_type: str, regions: list[str]) -> tuple[Path, int]:
    """Ask the platform's price API for ``regions`` and write its user price file; returns
    (file, number of prices). A bad or empty answer raises and leaves the old file."""
    import pkgutil

    rules = pricing(backend_type)
    if not rules.refresh:
        raise SpecError("--refresh-prices", f"the {backend_type} platform has no price API to read")
    fetched = pkgutil.resolve_name(rules.refresh)(sorted(set(regions)))
    found = _regions({"regions": fetched}, f"the {backend_type} price API's answer")
    missing = [r for r in regions if not any(found.get(r, {}).values())]
    if missing:
        raise NbscaleError(
            f"the {backend_type} price API returned no instance prices for "
            f"{', '.join(sorted(set(missing)))}; the price file was not changed",
            "check the region names and that the credentials may call pricing:GetProducts",
        )
    path = user_price_file(backend_type)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "_about": f"{backend_type} list prices from its price API (nbscale cost --refresh-prices)",
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "currency": "USD",
        "unit": "instance hour",
        "regions": found,
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(document, indent=1, sort_keys=True))
    os.replace(tmp, path)  # whole or not at all
    return path, sum(len(t) for parts in found.values() for t in parts.values())


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
    component: str = "training",
) -> float:
    """USD per node hour on a backend of ``backend_type`` (``component``: what the
    instance does: training, hosting for an endpoint, processing for a pipeline step)."""
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
        region = settings.get("region")
        found = list_price(backend_type, instance, region, component)
        if found is None and region and region != rules.list_region:
            # another region's list price stands in, times the region's factor where the
            # price list derives one (foreign_list_price says so)
            found = list_price(backend_type, instance, rules.list_region, component)
            factor = region_factor(backend_type, region)
            if found is not None and factor is not None:
                found = round(found * factor.factor, 4)
        if found is not None:
            return found
        if rules.instance_required:
            where = region or rules.list_region
            raise SpecError(
                "instance_type",
                f"no price known for {instance!r} ({component}"
                + (f" in {where}" if where else "")
                + ")",
                f'run nbscale cost --refresh-prices, or set prices = {{ "{instance}" = '
                "USD_PER_HOUR } or price_per_node_hour in [backends.*]",
            )
    return (
        _price(settings.get("node_hour_price", CPU_NODE_HOUR), "node_hour_price")
        + _price(settings.get("gpu_hour_price", GPU_HOUR), "gpu_hour_price") * gpus_per_node
    )


def foreign_list_price(
    backend_type: str,
    settings: dict[str, Any] | None = None,
    instance_type: str | None = None,
    component: str = "training",
) -> tuple[str, str] | None:
    """(why, what to set) when the price of ``instance_type`` is only a stand-in, None when
    it is the real list price: a backend in a region the price lists lack a price for, and
    without its own ``prices`` for the type, is priced with ``Pricing.list_region``'s (times
    the region's factor where the price list derives one: ``region_factor``)."""
    settings = settings or {}
    rules = pricing(backend_type)
    if not rules.list_region or "price_per_node_hour" in settings:
        return None
    instance = instance_type or settings.get("instance_type") or rules.default_instance
    region = settings.get("region")
    if (
        not instance
        or instance in (settings.get("prices") or {})
        or not region
        or region == rules.list_region
        or list_price(backend_type, instance, region, component) is not None
        or list_price(backend_type, instance, rules.list_region, component) is None
    ):
        return None
    why = f"{instance} is priced at its {rules.list_region} list price, and {region}'s may differ"
    factor = region_factor(backend_type, region)
    if factor is not None:
        why += (
            f" (derived: x {factor.factor:g}, {region}'s factor from {factor.pairs} sourced "
            f"prices, {factor.low:.3f} to {factor.high:.3f} times {rules.list_region}'s)"
        )
    return why, f'prices = {{ "{instance}" = USD_PER_HOUR }}'


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
            f"set {setting} or price_per_node_hour in [backends.{backend}], or run "
            "nbscale cost --refresh-prices for the region's list prices",
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
    # a warm pool (SageMaker's KeepAlivePeriodInSeconds) keeps the instances after the job,
    # billed at the on-demand price: WarmPoolStatus.ResourceRetainedBillableTimeInSeconds,
    # per instance (AWS: times InstanceCount)
    retained_s = float(info.get("retained_billable_seconds") or 0)
    warm_pool = job_cost(retained_s / 3600.0, nodes, price)
    # a price that stands in for the region's own (derived, or us-east-1's) says so
    note = _note(foreign_list_price(record.backend_type, settings, spec.get("instance_type")))
    return {
        "cost": round(cost + warm_pool, 4),
        "on_demand_cost": round(on_demand + warm_pool, 4),
        "spot_savings": round(max(0.0, on_demand - cost), 4),
        "node_hours": round((ran_s + retained_s) / 3600.0 * nodes, 4),
        "price_per_node_hour": paid,
        "on_demand_price_per_node_hour": price,
        "spot": bool(spec.get("spot")),
        "billable_seconds": billed_s,
        "warm_pool_cost": warm_pool,
        "retained_billable_seconds": retained_s or None,
        "price_note": note,
    }


# -- endpoints and pipelines -----------------------------------------------------------------------
def endpoint_estimate(
    backend: str | None,
    instance_type: str | None,
    instances: int = 1,
    hours: float = 1.0,
    config: Config | None = None,
) -> dict[str, Any]:
    """What an endpoint costs: instance hours x instances at the hosting price."""
    config = config or load_config()
    bconf = config.backend(backend)
    if instances < 1 or hours <= 0:
        raise SpecError("instances", "an endpoint has at least 1 instance for more than 0 hours")
    price = node_price(bconf.type, bconf.settings, instance_type, 0, "hosting")
    return {
        "backend": bconf.name,
        "instance_type": instance_type,
        "instances": instances,
        "price_per_instance_hour": price,
        "per_hour": round(price * instances, 4),
        "hours": hours,
        "total": job_cost(hours, instances, price),
        "price_note": _note(
            foreign_list_price(bconf.type, bconf.settings, instance_type, "hosting")
        ),
        "currency": "USD",
    }


def definition_estimate(
    definition: dict[str, Any], backend_type: str, settings: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The most a SageMaker Pipelines definition's steps can cost: each step's instances
    for its MaxRuntimeInSeconds at the processing (a Processing step) or training price
    (a Training step; a Tuning step: each of its MaxNumberOfTrainingJobs trials). A step
    without a known price is listed as unpriced."""
    steps, unpriced, notes, total = [], [], [], 0.0
    for step in definition.get("Steps", []):
        args = step.get("Arguments") or {}
        runs = 1  # training jobs the step starts
        if step.get("Type") == "Processing":
            cluster = args.get("ProcessingResources", {}).get("ClusterConfig", {})
            component = "processing"
        elif step.get("Type") == "Training":
            cluster = args.get("ResourceConfig", {})
            component = "training"
        elif step.get("Type") == "Tuning":  # at most MaxNumberOfTrainingJobs trials
            limits = args.get("HyperParameterTuningJobConfig", {}).get("ResourceLimits", {})
            runs = int(limits.get("MaxNumberOfTrainingJobs") or 1)
            args = args.get("TrainingJobDefinition") or {}
            cluster = args.get("ResourceConfig", {})
            component = "training"
        else:
            continue
        instance, nodes = cluster.get("InstanceType"), int(cluster.get("InstanceCount") or 1)
        seconds = runs * float(args.get("StoppingCondition", {}).get("MaxRuntimeInSeconds") or 0)
        try:
            price = node_price(backend_type, settings, instance, 0, component)
        except SpecError:
            unpriced.append(step.get("Name"))
            continue
        most = job_cost(seconds / 3600.0, nodes, price)
        total += most
        note = _note(foreign_list_price(backend_type, settings, instance, component))
        if note and note not in notes:
            notes.append(note)
        steps.append(
            {
                "step": step.get("Name"),
                "instance_type": instance,
                "instances": nodes,
                "component": component,
                "price_per_instance_hour": price,
                "price_note": note,
                "at_most": most,
            }
        )
    return {
        "steps": steps,
        "at_most": round(total, 4),
        "unpriced": unpriced,
        "price_notes": notes,  # a price that stands in for the region's own, once each
        "currency": "USD",
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
    total = {
        "jobs": 0,
        "cost": 0.0,
        "on_demand_cost": 0.0,
        "spot_savings": 0.0,
        "unpriced": 0,
        "stand_in_priced": 0,  # jobs priced at a stand-in for their region's own price
    }
    notes: list[str] = []
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
            if c["price_note"]:
                total["stand_in_priced"] += 1
                if c["price_note"] not in notes:
                    notes.append(c["price_note"])
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
    return {
        "by": by,
        "since_s": since_s,
        "groups": ordered,
        "total": total,
        "price_notes": notes,
        "currency": "USD",
    }


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
