"""Amazon SageMaker: training jobs, endpoints and pipelines through boto3.

Names load on first use, so a container running ``nbscale.backends.sagemaker.jobenv``
imports only that module's needs.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SageMakerBackend"]


def __getattr__(name: str) -> Any:
    if name == "SageMakerBackend":
        from .jobs import SageMakerBackend

        return SageMakerBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
