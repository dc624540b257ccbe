"""Notebooks to pipelines: tagged cells or a pipeline.yaml, run by papermill, compiled to KFP and SageMaker.

from nbscale import pipelines
run = pipelines.start_run("examples/pipeline/digits.ipynb", {"C": 0.5}, detach=False)
run.to_dict()["steps"]
"""

from __future__ import annotations

from .loader import load
from .runs import PipelineRun, cancel_run, describe, get_run, runs, start_run

__all__ = [
    "PipelineRun",
    "cancel_run",
    "compile_pipeline",
    "describe",
    "get_run",
    "load",
    "runs",
    "start_run",
]


def compile_pipeline(path: str, target: str, output: str, **options):
    """Write the pipeline for ``target`` ("kfp" or "sagemaker") to ``output``; returns the path."""
    from .compile import compile_to

    return compile_to(path, target, output, **options)
