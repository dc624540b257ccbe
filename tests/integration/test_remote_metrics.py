"""``Job.metrics()`` of SageMaker and Kubeflow jobs while they run: what ``log_metric`` prints
in the container (rank 0's metric lines) reaches the platform's log, nbscale's log mirror
brings it home, and the records have the shape a local job's have.

The lines are printed by ``log_metric`` itself, with the environment the container spec
gives the ranks; the platforms are the emulators (moto's CloudWatch Logs and SageMaker
behind tests/support/aws_emulator.py, kmock's Kubernetes API), as in the jobs' own tests.
"""

from __future__ import annotations

import re
import time

import pytest

from nbscale.celljob import prepare_cell
from nbscale.jobs import submit
from nbscale.runtime.launch import decode_spec
from nbscale.specs import Entry, JobSpec
from tests.support.kubeflow import NS, _make_pods, _pod_name
from tests.support.sagemaker import config, put_logs
from tests.support.sagemaker_instances import running_emulator, use_emulator

LOGGING_CELL = """\
import nbscale
for epoch in range(3):
    nbscale.log_metric("loss", 1.0 / (epoch + 1), step=epoch)
    nbscale.log_metric(name="val_acc", value=0.5 + epoch / 10, step=epoch)
name = "lr"
nbscale.log_metric(name, 0.1)  # a name made at run time: not known before the job runs
total = 1.0
"""


def printed(monkeypatch, capsys, rank: int, env: dict[str, str], calls) -> list[str]:
    """What ``log_metric`` prints on ``rank`` with the container's environment ``env``."""
    from nbscale.metrics import log_metric

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.delenv("NBSCALE_JOB_DIR", raising=False)
    capsys.readouterr()
    for args in calls:
        log_metric(*args)
    return [ln for ln in capsys.readouterr().out.splitlines() if ln]


def channel_text(request: dict, channel: str, name: str) -> str:
    """A file of one of the request's channels, from S3 (what SageMaker copies in)."""
    import boto3

    (uri,) = [
        c["DataSource"]["S3DataSource"]["S3Uri"]
        for c in request["InputDataConfig"]
        if c["ChannelName"] == channel
    ]
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return boto3.client("s3").get_object(Bucket=bucket, Key=key + name)["Body"].read().decode()


def shape(records):
    return [(m["name"], m["value"], m["step"], m["rank"]) for m in records]


# -- SageMaker ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def emulator():
    yield from running_emulator()


@pytest.fixture
def aws(emulator, monkeypatch):
    return use_emulator(emulator, monkeypatch)


def logging_cell(tmp_path, backend: str, **fields):
    import torch

    (tmp_path / "placeholder.py").write_text("")
    spec = JobSpec(
        entry=Entry.from_path(str(tmp_path / "placeholder.py")),
        name="metrics",
        backend=backend,
        **fields,
    )
    prepared = prepare_cell(LOGGING_CELL, {"torch": torch}, spec, outputs=["total"])
    prepared.write()
    return prepared


def test_sagemaker_metric_definitions_read_the_lines_and_job_metrics_follow_the_log(
    aws, tmp_path, monkeypatch, capsys
):
    job = submit(logging_cell(tmp_path, "aws", nodes=2).spec, config=config())
    request = aws.operations("CreateTrainingJob")[-1]
    definitions = request["AlgorithmSpecification"]["MetricDefinitions"]
    assert [d["Name"] for d in definitions] == ["loss", "val_acc"]  # literal names only
    env = request["Environment"]
    spec = decode_spec(channel_text(request, "spec", "spec.b64"))
    # the ranks get the variable from the spec (the launcher sets spec env in every rank)
    assert spec["env"]["NBSCALE_METRIC_LINES"] == "1"
    calls = [("loss", 1.0, 0), ("val_acc", 0.5, 0), ("loss", 0.5, 1), ("lr", 0.1)]
    rank0 = printed(monkeypatch, capsys, 0, {**env, **spec["env"]}, calls)
    assert printed(monkeypatch, capsys, 1, {**env, **spec["env"]}, calls) == []  # rank 0 only
    assert len(rank0) == 4
    # each MetricDefinition's regex reads its own metric's values from the lines, no other's
    for d in definitions:
        values = [float(m.group(1)) for ln in rank0 if (m := re.search(d["Regex"], ln))]
        assert values == {"loss": [1.0, 0.5], "val_acc": [0.5]}[d["Name"]]

    name = job.record.native_id
    aws.set_training(name, "InProgress", "Training")
    assert job.metrics() == []
    # the launcher prefixes each rank's line; the other host's rank prints none
    put_logs(
        name, 1, ["nbscale: job x node 0/2 (sagemaker)", *(f"[rank 0] {ln}" for ln in rank0[:2])]
    )
    put_logs(name, 2, ["[rank 1] epoch 0 done"])
    got = job.metrics()
    assert shape(got) == [("loss", 1.0, 0, 0), ("val_acc", 0.5, 0, 0)]
    assert all(isinstance(m["time"], float) and m["time"] > 1e9 for m in got)
    time.sleep(2.1)  # the mirror reads CloudWatch at most every 2 s while the job runs
    put_logs(name, 1, [f"[rank 0] {ln}" for ln in rank0[2:]])
    assert shape(job.metrics()) == [
        ("loss", 1.0, 0, 0), ("val_acc", 0.5, 0, 0), ("loss", 0.5, 1, 0), ("lr", 0.1, None, 0)
    ]  # fmt: skip
    # the logs keep the lines, once
    assert job.logs(0).count("nbscale-metric loss=") == 2


def test_a_job_that_logs_no_metric_sends_no_metric_definitions(aws, tmp_path):
    import torch

    (tmp_path / "placeholder.py").write_text("")
    spec = JobSpec(entry=Entry.from_path(str(tmp_path / "placeholder.py")), backend="aws")
    prepared = prepare_cell("total = 1.0\n", {"torch": torch}, spec, outputs=["total"])
    prepared.write()
    submit(prepared.spec, config=config())
    request = aws.operations("CreateTrainingJob")[-1]
    assert "MetricDefinitions" not in request["AlgorithmSpecification"]


# -- Kubeflow ----------------------------------------------------------------------------------
def test_kubeflow_job_metrics_follow_the_pod_logs(cluster, kube, tmp_path, monkeypatch, capsys):
    import torch

    spec = JobSpec(entry=Entry("module", "placeholder"), name="kf-metrics", backend="kf", nodes=2)
    prepared = prepare_cell(LOGGING_CELL, {"torch": torch}, spec, outputs=["total"])
    job = prepared.submit()
    (body,) = [t for t in cluster.trainjobs(NS) if t["metadata"]["name"] == job.record.native_id]
    args = body["spec"]["trainer"]["args"]
    ran = decode_spec(args[args.index("--spec") + 1])
    assert ran["env"]["NBSCALE_METRIC_LINES"] == "1"
    calls = [("loss", 1.0, 0), ("loss", 0.5, 1)]
    rank0 = printed(monkeypatch, capsys, 0, ran["env"], calls)
    assert printed(monkeypatch, capsys, 1, ran["env"], calls) == []

    _make_pods(cluster, job, 2, {"phase": "Running", "containerStatuses": [], "conditions": []})
    kube.set_log(NS, _pod_name(job, 0), ["nbscale: job node 0/2", f"[rank 0] {rank0[0]}"])
    kube.set_log(NS, _pod_name(job, 1), ["[rank 1] epoch 0 done"])
    time.sleep(1.05)
    assert job.refresh().status == "RUNNING"
    assert shape(job.metrics()) == [("loss", 1.0, 0, 0)]
    kube.set_log(NS, _pod_name(job, 0), [f"[rank 0] {rank0[1]}"])
    time.sleep(1.05)
    assert shape(job.metrics()) == [("loss", 1.0, 0, 0), ("loss", 0.5, 1, 0)]
    job.cancel()


def test_sagemaker_final_metrics_stand_in_for_a_log_without_metric_lines(aws, tmp_path):
    job = submit(logging_cell(tmp_path, "aws").spec, config=config())
    name = job.record.native_id
    aws.set_training(name, "InProgress", "Training")
    assert job.metrics() == []
    # the log's events are gone (or were never read); SageMaker kept each defined metric's
    # last value (moto adds a "train:progress" of its own: not one this job defines)
    now = time.time()
    aws.set_training(
        name,
        "Failed",
        "Failed",
        FailureReason="AlgorithmError: x",
        FinalMetricDataList=[
            {"MetricName": "loss", "Value": 0.25, "Timestamp": now},
            {"MetricName": "val_acc", "Value": 0.75, "Timestamp": now},
            {"MetricName": "train:progress", "Value": 100.0, "Timestamp": now},
        ],
    )
    assert job.status() == "FAILED"
    got = job.metrics()
    assert shape(got) == [("loss", 0.25, None, 0), ("val_acc", 0.75, None, 0)]
    assert got[0]["time"] == pytest.approx(now)
