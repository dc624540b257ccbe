"""Compile a pipeline for another orchestrator; each target is its own module."""

from __future__ import annotations

from pathlib import Path

from ..errors import SpecError

TARGETS = {
    "kfp": "nbscale.backends.kubeflow.pipeline_compile",
    "sagemaker": "nbscale.backends.sagemaker.pipeline_compile",
}


def compile_to(path: str, target: str, output: str, **options) -> str:
    import importlib

    from .loader import load

    if target not in TARGETS:
        raise SpecError(
            "--target", f"unknown target {target!r}", f"use one of {', '.join(TARGETS)}"
        )
    pipeline = load(path)
    module = importlib.import_module(TARGETS[target])
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    module.compile_pipeline(pipeline, out, **{k: v for k, v in options.items() if v is not None})
    return str(out)
