"""Notebooks to pipelines: tagged cells or a pipeline.yaml, run by papermill, compiled to KFP and SageMaker.

from nbscale import pipelines
run = pipelines.start_run("examples/pipeline/digits.ipynb", {"C": 0.5}, detach=False)
run.to_dict()["steps"]
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

# loaded on first use: a step's container imports nbscale.pipelines.artifacts and
# container_step, and must not pull in the engine (store, pydantic models, runner); the
# run functions are the engine's (nbscale.pipeline_runs), offered here as the public API
_LAZY = {
    "load": ".loader",
    "PipelineRun": "nbscale.pipeline_runs",
    "cancel_run": "nbscale.pipeline_runs",
    "describe": "nbscale.pipeline_runs",
    "dry_run_pipeline": "nbscale.pipeline_runs",
    "get_run": "nbscale.pipeline_runs",
    "runs": "nbscale.pipeline_runs",
    "start_run": "nbscale.pipeline_runs",
    "compile_pipeline": "nbscale.pipeline_runs",
    "compile_targets": "nbscale.pipeline_runs",
}


class _Package(types.ModuleType):
    """Importing the submodule ``runs`` must not replace the function ``runs``."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and name in _LAZY:
            return  # the submodule stays reachable through sys.modules
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "PipelineRun",
    "cancel_run",
    "compile_pipeline",
    "compile_targets",
    "describe",
    "dry_run_pipeline",
    "get_run",
    "load",
    "runs",
    "start_run",
]
