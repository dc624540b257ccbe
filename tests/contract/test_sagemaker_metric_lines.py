"""The metric lines of a SageMaker training job, from its exact container command.

One "instance" (tests/support/sagemaker_instances.py: its own mount namespace with
``/opt/ml`` laid out as SageMaker lays it out, its own home, only the request's
environment) runs a cell that calls ``log_metric`` on two ranks. What the instance prints is
what CloudWatch gets: each of the request's ``MetricDefinitions`` regexes must read its
metric's values from it (rank 0's, once per call), and the same text, put in the job's log
stream, is what ``Job.metrics()`` reads back.
"""

from __future__ import annotations

import re

import pytest

from nbscale.celljob import prepare_cell
from nbscale.jobs import submit
from nbscale.specs import Entry, JobSpec
from tests.support.emulators import free_port
from tests.support.sagemaker import config, put_logs
from tests.support.sagemaker_instances import (
    require_mount_namespaces,
    running_emulator,
    start_instances,
    stdout,
    use_emulator,
    wait_all,
)

pytestmark = pytest.mark.slow

CELL = """\
import nbscale
import torch.distributed as dist
rank = dist.get_rank()
for step in range(3):
    nbscale.log_metric("train_loss", (rank + 1) / (step + 1), step=step)
    nbscale.log_metric("val-acc", 0.25 * step)
nbscale.log_metric("train_loss", float("nan"), step=3)  # kept in the job's folder only
total = 1.0
"""


@pytest.fixture(scope="module")
def emulator():
    yield from running_emulator()


@pytest.fixture
def aws(emulator, monkeypatch):
    return use_emulator(emulator, monkeypatch)


@pytest.fixture(scope="module")
def namespaces():
    require_mount_namespaces()


def test_the_container_prints_lines_the_metric_definitions_read_and_job_metrics_reads_back(
    aws, namespaces, tmp_path
):
    import torch

    (tmp_path / "placeholder.py").write_text("")
    spec = JobSpec(
        entry=Entry.from_path(str(tmp_path / "placeholder.py")),
        name="sm-metrics",
        backend="aws",
        procs_per_node=2,
        max_runtime=600,
    )
    prepared = prepare_cell(CELL, {"torch": torch}, spec, outputs=["total"])
    prepared.write()
    # an image that brings nbscale (the Dockerfile's runtime image), as the other contracts
    cfg = config(image="123456789012.dkr.ecr.us-east-1.amazonaws.com/nbscale-runtime:0.1.0")
    job = submit(prepared.spec, config=cfg)
    request = aws.operations("CreateTrainingJob")[-1]
    definitions = {
        d["Name"]: d["Regex"] for d in request["AlgorithmSpecification"]["MetricDefinitions"]
    }
    assert sorted(definitions) == ["train_loss", "val-acc"]

    root = tmp_path / "run"
    procs = start_instances(root, request, free_port())
    assert wait_all(procs) == [0], stdout(root, "algo-1")
    out = stdout(root, "algo-1").splitlines()
    # SageMaker applies each regex to every line of the instance's output
    found = {
        name: [float(m.group(1)) for line in out if (m := re.search(regex, line))]
        for name, regex in definitions.items()
    }
    assert found == {"train_loss": [1.0, 0.5, 1 / 3], "val-acc": [0.0, 0.25, 0.5]}
    metric_lines = [line for line in out if "nbscale-metric" in line]
    assert metric_lines and all(line.startswith("[rank 0] ") for line in metric_lines)
    assert not any("nan" in line for line in metric_lines)

    # the same text in the job's CloudWatch stream: Job.metrics() while it runs
    name = request["TrainingJobName"]
    aws.set_training(name, "InProgress", "Training")
    put_logs(name, 1, out)
    got = job.metrics()
    assert [(m["name"], m["value"], m["step"], m["rank"]) for m in got] == [
        ("train_loss", 1.0, 0, 0), ("val-acc", 0.0, None, 0),
        ("train_loss", 0.5, 1, 0), ("val-acc", 0.25, None, 0),
        ("train_loss", 1 / 3, 2, 0), ("val-acc", 0.5, None, 0),
    ]  # fmt: skip
    times = [m["time"] for m in got]
    assert times == sorted(times) and times[0] > 1e9
