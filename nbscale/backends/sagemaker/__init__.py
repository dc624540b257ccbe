"""Amazon SageMaker: training jobs, endpoints and pipelines through boto3."""

from __future__ import annotations

from .training import SageMakerBackend

__all__ = ["SageMakerBackend"]
