"""SageMaker's list prices from the AWS Price List Query API (``nbscale cost --refresh-prices``).

``GetProducts`` with service code ``AmazonSageMaker`` (the API answers in us-east-1)
returns one JSON document per product: its ``product.attributes`` (``instanceName``,
``regionCode``, ``usagetype`` such as ``USE1-Train:ml.m5.large``, ``component``) and its
``terms.OnDemand`` offer, whose price dimensions carry ``pricePerUnit.USD`` per ``Hrs``.
The instance-hour products of training jobs (``Train``), real-time endpoints (``Host``)
and processing jobs (``Processing``) become ``nbscale.cost``'s components; spot, batch,
notebook and the other usage types are left out.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ...errors import MissingDependency, NbscaleError

SERVICE_CODE = "AmazonSageMaker"
PRICING_REGION = "us-east-1"  # where the Price List Query API answers
# the usage type's operation after the region prefix -> nbscale.cost's component
USAGE = {"Train": "training", "Host": "hosting", "Processing": "processing"}
_USAGE_RE = re.compile(r"^[A-Z0-9]+-(?P<use>[A-Za-z]+):(?P<instance>ml\.[a-z0-9-]+\.[a-z0-9]+)$")


def client():
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise MissingDependency("boto3", "sagemaker") from None
    return boto3.session.Session().client(
        "pricing",
        region_name=PRICING_REGION,
        config=Config(retries={"mode": "standard", "max_attempts": 5}),
    )


def on_demand_hourly(product: dict[str, Any]) -> float | None:
    """The USD per hour of a price list document's on-demand offer (None: none, or not
    per hour)."""
    for offer in (product.get("terms") or {}).get("OnDemand", {}).values():
        for dimension in (offer.get("priceDimensions") or {}).values():
            if dimension.get("unit") not in ("Hrs", "Hours", "hours"):
                continue
            try:
                return float(dimension["pricePerUnit"]["USD"])
            except (KeyError, TypeError, ValueError):
                return None
    return None


def parse(documents: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """REGION -> component -> instance type -> USD per hour, from GetProducts' PriceList."""
    found: dict[str, dict[str, dict[str, float]]] = {}
    for text in documents:
        try:
            product = json.loads(text)
        except (TypeError, ValueError):
            raise NbscaleError("the Price List API sent a price that is not JSON") from None
        attrs = (product.get("product") or {}).get("attributes") or {}
        match = _USAGE_RE.match(str(attrs.get("usagetype", "")))
        if not match or match["use"] not in USAGE:
            continue
        instance = attrs.get("instanceName") or match["instance"]
        region = attrs.get("regionCode")
        price = on_demand_hourly(product)
        if not region or price is None or price <= 0 or instance != match["instance"]:
            continue
        found.setdefault(region, {}).setdefault(USAGE[match["use"]], {})[instance] = price
    return found


def fetch(regions: list[str], pricing=None) -> dict[str, dict[str, dict[str, float]]]:
    """Every SageMaker instance-hour price of ``regions`` (one GetProducts listing each)."""
    pricing = pricing or client()
    out: dict[str, dict[str, dict[str, float]]] = {}
    for region in regions:
        documents: list[str] = []
        try:
            pages = pricing.get_paginator("get_products").paginate(
                ServiceCode=SERVICE_CODE,
                FormatVersion="aws_v1",
                Filters=[
                    {"Type": "TERM_MATCH", "Field": "productFamily", "Value": "ML Instance"},
                    {"Type": "TERM_MATCH", "Field": "regionCode", "Value": region},
                ],
            )
            for page in pages:
                documents += page.get("PriceList") or []
        except NbscaleError:
            raise
        except Exception as exc:  # noqa: BLE001 - one message for any client or HTTP error
            from .jobs import client_error

            raise client_error(exc, f"pricing:GetProducts for {region}") from None
        for got_region, parts in parse(documents).items():
            if got_region == region:
                out[region] = parts
    return out
