"""Amazon SageMaker: training jobs, endpoints and pipelines through boto3.

Importing the package loads only ``PLATFORM`` (its entry point in ``nbscale.platforms``);
each role's module is imported when used, so a container running
``nbscale.backends.sagemaker.jobenv`` imports only that module's needs.
"""

from __future__ import annotations

from typing import Any

from ...cost import Pricing
from ..platform import Platform

PLATFORM = Platform(
    type="sagemaker",
    title="SageMaker",
    jobs="nbscale.backends.sagemaker.jobs:SageMakerBackend",
    endpoints="nbscale.backends.sagemaker.endpoints:SageMakerEndpoints",
    pipelines="nbscale.backends.sagemaker.pipelines:SageMakerPipelineBackend",
    sweeps="nbscale.backends.sagemaker.sweeps:TuningSweeps",
    settings="nbscale.backends.sagemaker.settings:settings",
    compile_target="sagemaker",
    extra="sagemaker",
    # BillableTimeInSeconds holds what managed spot saved
    pricing=Pricing(
        default_instance="ml.m5.xlarge",
        instance_required=True,
        billed_spot=True,
        list_region="us-east-1",  # prices.json's fullest region: stands in elsewhere, noted
        table="nbscale.backends.sagemaker:prices.json",
        refresh="nbscale.backends.sagemaker.prices:fetch",  # the AWS Price List API
    ),
)

__all__ = ["PLATFORM", "SageMakerBackend"]


def __getattr__(name: str) -> Any:
    if name == "SageMakerBackend":
        from .jobs import SageMakerBackend

        return SageMakerBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
