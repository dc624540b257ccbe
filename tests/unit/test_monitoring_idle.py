"""Idle endpoints: --idle-ttl is checked as a duration before anything is deployed."""

from __future__ import annotations

import pytest

from nbscale.endpoints import deploy, endpoints
from nbscale.errors import SpecError
from tests.support.serving import mlp


def test_idle_ttl_must_be_a_duration():
    with pytest.raises(SpecError, match="not a duration"):
        deploy(mlp(), name="bad-ttl", idle_ttl="soonish")
    assert endpoints() == []


def _config(settings: dict):
    from nbscale.config import BackendConfig, Config

    return Config(backends={"aws": BackendConfig(name="aws", type="sagemaker", settings=settings)})


def test_an_endpoint_is_priced_at_its_own_instance_types_hosting_price(nbscale_home):
    import json

    from nbscale.cost import user_price_file
    from nbscale.monitoring.idle import _price

    settings = {
        "region": "us-east-1",
        "instance_type": "ml.g5.12xlarge",  # the training default: never an endpoint's price
        "endpoint_instance_type": "ml.m5.large",
    }
    # before a price refresh the training list price stands in for hosting
    assert _price(_config(settings), "aws", "sagemaker", None, 0, component="hosting") == 0.115
    path = user_price_file("sagemaker")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"regions": {"us-east-1": {"hosting": {"ml.m5.large": 0.134}}}}))
    assert _price(_config(settings), "aws", "sagemaker", None, 0, component="hosting") == 0.134
    explicit = _price(_config(settings), "aws", "sagemaker", "ml.p3.8xlarge", 0, "hosting")
    assert explicit == 14.688  # its own type; no hosting price listed: training's stands in
