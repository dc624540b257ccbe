"""Counts in the panel take their plural form (issue 24: the panel said "1 nodes × 0 GPUs"),
in a real browser (Chromium, playwright-core); the browser steps are in
extension/ui-tests/wording.test.mjs.

Two real local jobs: one node with one GPU (``NBSCALE_GPUS=0`` stands in for nvidia-smi, the
process never touches CUDA) and two nodes without GPUs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.support.lab import run_browser_script
from tests.support.notebooks import write_notebook

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture
def sized_jobs(nbscale_cli, tmp_path):
    script = tmp_path / "hello.py"
    script.write_text("print('hello')\n")
    nbscale_cli(
        "run", "--gpus-per-proc", "1", "--name", "one-gpu", str(script),
        env={"NBSCALE_GPUS": "0"}, check=True,
    )  # fmt: skip
    nbscale_cli("run", "--nodes", "2", "--name", "two-nodes", str(script), check=True)
    jobs = {j["name"]: j for j in json.loads(nbscale_cli("jobs", "--json", check=True).stdout)}
    one, two = jobs["one-gpu"], jobs["two-nodes"]
    assert (one["nodes"], one["procs_per_node"], one["gpus_per_proc"]) == (1, 1, 1), one
    assert (two["nodes"], two["procs_per_node"], two["gpus_per_proc"]) == (2, 1, 0), two
    return one["id"], two["id"]


def test_counts_read_singular_and_plural(lab, sized_jobs, tmp_path):
    one_gpu, two_nodes = sized_jobs
    write_notebook(lab["root"] / "empty.ipynb", "1 + 1")
    shots = Path(os.environ.get("NBSCALE_SCREENSHOTS") or tmp_path / "shots")
    run_browser_script(
        lab,
        "wording.test.mjs",
        shots,
        NBS_NOTEBOOK="empty.ipynb",
        NBS_ONE_GPU_JOB=one_gpu,
        NBS_TWO_NODE_JOB=two_nodes,
    )
    assert (shots / "panel-wording.png").stat().st_size > 1_000
