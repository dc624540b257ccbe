"""What a job costs: hours x nodes x the hourly price of one node.

Prices are public on-demand list prices (USD per instance hour, us-east-1,
late 2025) for the instance types people train on. A backend's config can
override them (``price_per_node_hour = 2.5`` in ``[backends.NAME]``) for
negotiated rates or a private cluster; the local backend costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import Config
from .config import load as load_config
from .errors import SpecError

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
DEFAULT_INSTANCE = {"sagemaker": "ml.m5.xlarge"}


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
    if backend_type == "local":
        return 0.0
    if "price_per_node_hour" in settings:
        return float(settings["price_per_node_hour"])
    instance = instance_type or settings.get("instance_type") or DEFAULT_INSTANCE.get(backend_type)
    if instance:
        if instance in INSTANCE_PRICES:
            return INSTANCE_PRICES[instance]
        if backend_type == "sagemaker":
            raise SpecError(
                "instance_type",
                f"no price known for {instance!r}",
                f"set price_per_node_hour in [backends.*] or use one of {', '.join(sorted(INSTANCE_PRICES))}",
            )
    return CPU_NODE_HOUR + GPU_HOUR * gpus_per_node


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
