"""Compiling a pipeline for KFP: retries, cpu, memory and gpu reach the IR."""

from __future__ import annotations

from pathlib import Path

import pytest

from nbscale.pipelines import compile_pipeline
from tests.support.pipeline_notebooks import cell, write_notebook


def test_kfp_carries_retries_cpu_memory_and_gpu(tmp_path):
    pytest.importorskip("kfp")
    import yaml

    write_notebook(tmp_path / "a.ipynb", [cell("x = 1")])
    write_notebook(tmp_path / "b.ipynb", [cell("y = x + 1")])
    (tmp_path / "pipeline.yaml").write_text(
        "name: res\nsteps:\n  - {name: a, notebook: a.ipynb, resources: {cpu: 2, memory: 4Gi, gpu: 1}}\n"
        "  - {name: b, notebook: b.ipynb, depends_on: [a], retries: 3, cache: false}\n"
    )
    out = compile_pipeline(str(tmp_path / "pipeline.yaml"), "kfp", str(tmp_path / "res.yaml"))
    ir = next(yaml.safe_load_all(Path(out).read_text()))
    resources = ir["deploymentSpec"]["executors"]["exec-step-a"]["container"]["resources"]
    assert resources["cpuLimit"] == 2.0 and resources["memoryLimit"] == pytest.approx(4.294967296)
    assert resources["accelerator"]["resourceCount"] == "1"
    task_b = ir["root"]["dag"]["tasks"]["step-b"]
    assert task_b["retryPolicy"]["maxRetryCount"] == 3
    assert task_b["cachingOptions"] == {}  # caching off
