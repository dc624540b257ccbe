"""The SageMaker job backend against a local AWS (moto behind tests/support/aws_emulator.py).

Every call is a real boto3 call: botocore checks the request shapes before they leave,
and the emulator keeps every body so the tests can check what was (never) sent.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import boto3
import pytest

from nbscale import keys
from nbscale.backends.sagemaker import SageMakerBackend
from nbscale.backends.sagemaker.request import ENTRYPOINT
from nbscale.backends.sagemaker.settings import forget_clients
from nbscale.celljob import prepare_cell
from nbscale.errors import BackendUnavailable, SpecError
from nbscale.jobs import job as get_job_handle
from nbscale.jobs import submit
from nbscale.results import load_results, write_results
from nbscale.specs import Entry, JobSpec
from nbscale.store import get_store
from tests.support.emulators import PLANTED_SECRET, grep_tree
from tests.support.sagemaker import (
    ROLE,
    SETTINGS,
    config,
    kernel_image_entry,
    put_logs,
    runtime_wheels,
)
from tests.support.sagemaker_instances import running_emulator, use_emulator


@pytest.fixture(scope="module")
def emulator():
    yield from running_emulator()


@pytest.fixture
def aws(emulator, monkeypatch):
    return use_emulator(emulator, monkeypatch)


def cell_spec(tmp_path: Path, outputs=("total",), **spec_fields):
    import torch

    (tmp_path / "placeholder.py").write_text("")
    spec = JobSpec(
        entry=Entry.from_path(str(tmp_path / "placeholder.py")),
        name="sm-cell",
        backend="aws",
        **spec_fields,
    )
    prepared = prepare_cell(
        "total = float(factor) * 3\n", {"factor": 2, "torch": torch}, spec, outputs=list(outputs)
    )
    prepared.write()
    return prepared.spec


# -- settings -------------------------------------------------------------------------


def test_no_credentials_is_one_message(tmp_path, monkeypatch):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    forget_clients()  # sessions made by earlier tests resolved credentials already
    spec = cell_spec(tmp_path)
    with pytest.raises(BackendUnavailable, match="found no AWS credentials.*AWS_PROFILE"):
        submit(spec, config=config())
    forget_clients()


# -- submit ---------------------------------------------------------------------------
def test_submit_sends_a_complete_training_request_and_no_key(aws, tmp_path, nbscale_home):
    spec = cell_spec(tmp_path, nodes=2, procs_per_node=2, max_runtime=3600, tags={"team": "ml"})
    job = submit(spec, config=config(tags={"cost-center": "42"}, keep_alive_seconds=600))
    request = aws.operations("CreateTrainingJob")[-1]
    assert request["TrainingJobName"] == job.record.native_id == job.id
    algo = request["AlgorithmSpecification"]
    assert algo["TrainingImage"].startswith(
        "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:"
    )
    assert "cpu" in algo["TrainingImage"]
    assert algo["ContainerEntrypoint"] == ENTRYPOINT
    assert algo["ContainerArguments"] == ["--job-id", job.id]
    assert all(len(a) <= 256 for a in algo["ContainerEntrypoint"] + algo["ContainerArguments"])
    assert request["ResourceConfig"] == {
        "InstanceType": "ml.m5.xlarge",
        "InstanceCount": 2,
        "VolumeSizeInGB": 30,
        "KeepAlivePeriodInSeconds": 600,
    }
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600}
    assert request["RoleArn"] == ROLE
    assert request["OutputDataConfig"] == {"S3OutputPath": "s3://nb-team/proj/jobs"}
    channels = {
        c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"]
        for c in request["InputDataConfig"]
    }
    # the kernel's working folder travels with a cell, content-addressed
    assert set(channels) == {"bundle", "spec", "runtime", "code"}
    assert channels["code"].startswith("s3://nb-team/proj/code/tree/")
    assert channels["runtime"].startswith("s3://nb-team/proj/runtime/")
    assert channels["bundle"].startswith("s3://nb-team/proj/bundles/sha256/")
    tags = {t["Key"]: t["Value"] for t in request["Tags"]}
    assert tags == {"team": "ml", "cost-center": "42", "nbscale:job-id": job.id}
    assert "EnableManagedSpotTraining" not in request and "VpcConfig" not in request

    # the key is in Secrets Manager; only the ARN travels
    arn = request["Environment"]["NBSCALE_KEY_SECRET_ARN"]
    assert arn.startswith("arn:aws:secretsmanager:us-east-1:")
    stored = json.loads(
        boto3.client("secretsmanager").get_secret_value(SecretId=arn)["SecretString"]
    )
    assert stored == {"bundle": keys.load("bundle").hex()}
    # what the container fetches through its channels: the signed bundle and the spec
    s3 = boto3.client("s3")
    for name in ("bundle", "spec"):
        bucket, _, prefix = channels[name].removeprefix("s3://").partition("/")
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]
        assert len(listed) == 1
    bucket, _, prefix = channels["runtime"].removeprefix("s3://").partition("/")
    listed = sorted(
        o["Key"].rsplit("/", 1)[1]
        for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]
    )
    assert listed == ["COMPLETE", "nbscale_probe-1.0-py3-none-any.whl"]
    spec_key = s3.list_objects_v2(Bucket="nb-team", Prefix=channels["spec"].split("/", 3)[3])[
        "Contents"
    ][0]["Key"]
    import base64

    sent_spec = json.loads(
        base64.urlsafe_b64decode(s3.get_object(Bucket="nb-team", Key=spec_key)["Body"].read())
    )
    assert sent_spec["entry"] == {"kind": "bundle", "target": "cell.zip", "parameters": {}}
    assert sent_spec["nodes"] == 2 and sent_spec["procs_per_node"] == 2

    # neither the key nor a credential in any request, the store or the home
    key_hex = keys.load("bundle").hex()
    sent = [body for _, _, body in aws.bodies if b"SecretString" not in body]
    assert not any(key_hex.encode() in b or PLANTED_SECRET.encode() in b for b in sent)
    assert grep_tree(nbscale_home, PLANTED_SECRET) == []
    assert key_hex not in json.dumps(job.to_dict())


def test_an_unchanged_bundle_is_not_uploaded_twice(aws, tmp_path):
    def bundle_puts():
        return [p for m, p, _ in aws.bodies if m == "PUT" and "/bundles/sha256/" in p]

    spec = cell_spec(tmp_path)
    before = len(bundle_puts())
    submit(spec, config=config())
    assert len(bundle_puts()) == before + 1
    runtime_puts = len([p for m, p, _ in aws.bodies if m == "PUT" and "/runtime/" in p])
    heads = len([p for m, p, _ in aws.bodies if m == "HEAD"])
    submit(spec, config=config())  # the same cell again: known by its hash, not sent
    assert len(bundle_puts()) == before + 1
    assert len([p for m, p, _ in aws.bodies if m == "HEAD"]) == heads  # not even asked
    assert len([p for m, p, _ in aws.bodies if m == "PUT" and "/runtime/" in p]) == runtime_puts
    assert len(aws.operations("CreateTrainingJob")) >= 2


def test_spot_vpc_kms_retry_and_checkpoints_reach_the_request(aws, tmp_path):
    spec = cell_spec(tmp_path, max_runtime=1800, max_restarts=2)
    job = submit(
        spec,
        config=config(
            spot=True,
            max_wait=7200,
            subnets=["subnet-0abc"],
            security_group_ids=["sg-0abc"],
            kms_key_id="arn:aws:kms:us-east-1:123456789012:key/k1",
            instance_type="ml.g5.xlarge",
        ),
    )
    request = aws.operations("CreateTrainingJob")[-1]
    assert request["EnableManagedSpotTraining"] is True
    assert request["StoppingCondition"] == {
        "MaxRuntimeInSeconds": 1800,
        "MaxWaitTimeInSeconds": 7200,
    }
    assert request["CheckpointConfig"] == {
        "S3Uri": f"s3://nb-team/proj/checkpoints/{job.id}",
        "LocalPath": "/opt/ml/checkpoints",
    }
    assert request["RetryStrategy"] == {"MaximumRetryAttempts": 2}
    assert request["VpcConfig"] == {"Subnets": ["subnet-0abc"], "SecurityGroupIds": ["sg-0abc"]}
    assert request["OutputDataConfig"]["KmsKeyId"].endswith("key/k1")
    assert request["ResourceConfig"]["VolumeKmsKeyId"].endswith("key/k1")
    assert "gpu" in request["AlgorithmSpecification"]["TrainingImage"]
    assert job.record.info["spot"] is True


def test_specs_sagemaker_cannot_honour_are_refused_before_anything_is_sent(aws, tmp_path):
    calls = len(aws.calls)
    notebook = tmp_path / "train.ipynb"
    notebook.write_text(
        json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})
    )
    # a notebook runs under papermill: a wheelhouse without it is refused (--kind step has it)
    with pytest.raises(SpecError, match="no papermill wheel.*--kind step"):
        submit(JobSpec(entry=Entry.from_path(str(notebook)), backend="aws"), config=config())
    with pytest.raises(SpecError, match="has no GPU"):
        submit(cell_spec(tmp_path, gpus_per_proc=1), config=config())
    with pytest.raises(SpecError, match="max_wait"):
        submit(cell_spec(tmp_path, max_runtime=7200), config=config(spot=True, max_wait=3600))
    with pytest.raises(SpecError, match="checkpoint_dir"):
        submit(cell_spec(tmp_path, checkpoint_dir=str(tmp_path)), config=config())
    assert len(aws.calls) == calls


def test_dry_run_builds_the_exact_request_and_sends_nothing(aws, tmp_path):
    spec = cell_spec(tmp_path, nodes=2)
    job = submit(spec, config=config())
    real = aws.operations("CreateTrainingJob")[-1]
    backend = SageMakerBackend(config().backend("aws"), get_store())
    objects = boto3.client("s3").list_objects_v2(Bucket="nb-team").get("KeyCount")
    calls = len(aws.calls)
    dry = backend.dry_run(job.record).documents[0]
    assert boto3.client("s3").list_objects_v2(Bucket="nb-team").get("KeyCount") == objects
    assert len(aws.calls) == calls  # no SageMaker call at all
    dry = json.loads(json.dumps(dry))
    assert dry["InputDataConfig"] == real["InputDataConfig"], (
        dry["InputDataConfig"],
        real["InputDataConfig"],
    )
    assert dry == real


# -- status ---------------------------------------------------------------------------


def test_status_follows_the_job_through_the_emulator(aws, tmp_path):
    job = submit(cell_spec(tmp_path, max_runtime=120), config=config())
    name = job.record.native_id
    assert job.status() == "PENDING" and job.record.info["phase"] == "starting"
    walk = [
        ("InProgress", "LaunchingMLInstances", "PENDING"),
        ("InProgress", "Downloading", "PENDING"),
        ("InProgress", "Training", "RUNNING"),
        ("InProgress", "Interrupted", "RUNNING"),
        ("InProgress", "Restarting", "RUNNING"),
        ("InProgress", "Training", "RUNNING"),
        ("InProgress", "Uploading", "RUNNING"),
    ]
    for status, secondary, ours in walk:
        aws.set_training(name, status, secondary, f"now {secondary}")
        assert job.status() == ours, secondary
    aws.set_training(
        name,
        "Stopped",
        "MaxRuntimeExceeded",
        "Training job runtime exceeded",
        BillableTimeInSeconds=93,
    )
    record = job.wait(timeout=10)
    assert record.status == "FAILED" and "--max-runtime (120 s)" in record.error
    assert record.restarts == 1  # the spot interruption's restart
    assert record.info["billable_seconds"] == 93 and record.started is not None
    # every transition was shown in rank 0's log as it happened, in order, once
    lines = [line for line in job.logs(0).splitlines() if line.startswith("[sagemaker]")]
    assert lines[0] == "[sagemaker] Starting: Launching requested ML instances"
    assert [line.split(":")[0].removeprefix("[sagemaker] ") for line in lines[1:]] == [
        s for _, s, _ in walk
    ] + ["MaxRuntimeExceeded"]
    events = [
        e["data"].get("status")
        for e in __import__("nbscale.store.jobs", fromlist=["x"]).events(get_store(), job.id)
        if e["type"] == "phase"
    ]
    assert events[-1] == "MaxRuntimeExceeded"


def test_the_emulator_describes_the_metric_definitions_it_was_sent(aws, tmp_path):
    """As AWS does: DescribeTrainingJob gives back the request's MetricDefinitions, and
    final metric values only once CloudWatch has them (moto makes up both)."""
    job = submit(cell_spec(tmp_path), config=config())
    name = job.record.native_id
    (sent,) = [
        r for op, r in aws.calls if op == "CreateTrainingJob" and r["TrainingJobName"] == name
    ]
    described = boto3.client("sagemaker").describe_training_job(TrainingJobName=name)
    assert described["AlgorithmSpecification"].get("MetricDefinitions", []) == (
        sent["AlgorithmSpecification"].get("MetricDefinitions", [])
    )
    assert "FinalMetricDataList" not in described


def test_cancel_stops_the_training_job(aws, tmp_path):
    job = submit(cell_spec(tmp_path), config=config())
    aws.set_training(job.record.native_id, "InProgress", "Training")
    record = job.cancel()
    assert aws.operations("StopTrainingJob")[-1] == {"TrainingJobName": job.record.native_id}
    assert record.status == "RUNNING" and record.info["phase"] == "stopping"
    aws.set_training(job.record.native_id, "Stopped", "Stopped", "Training job stopped")
    assert job.wait(timeout=10).status == "CANCELLED"
    assert job.cancel().status == "CANCELLED"  # a second cancel is a no-op
    assert len(aws.operations("StopTrainingJob")) == 1


# -- logs and outputs -------------------------------------------------------------------


def test_logs_of_every_instance_are_split_by_rank_and_followed(aws, tmp_path):
    job = submit(cell_spec(tmp_path, nodes=2, procs_per_node=1), config=config())
    name = job.record.native_id
    aws.set_training(name, "InProgress", "Training")
    put_logs(name, 1, ["nbscale: job x node 0/2 (sagemaker)", "[rank 0] epoch 1 loss 0.5"])
    put_logs(name, 2, ["[rank 1] epoch 1 loss 0.6"])
    assert job.ranks() == [0, 1]
    assert "[rank 0] epoch 1 loss 0.5" not in job.logs(0)  # the prefix is taken off
    assert "epoch 1 loss 0.5" in job.logs(0) and "[algo-1] nbscale: job x node 0/2" in job.logs(0)
    assert job.logs(1).strip().endswith("epoch 1 loss 0.6")
    seen = []
    put_logs(name, 2, ["[rank 1] epoch 2 loss 0.4"])
    follower = job.follow(poll=0.01)
    for rank, line in follower:
        seen.append((rank, line))
        if line == "epoch 2 loss 0.4":
            aws.set_training(name, "Failed", "Failed", FailureReason="AlgorithmError: see logs")
    assert (1, "epoch 2 loss 0.4") in seen and (0, "epoch 1 loss 0.5") in seen
    assert job.status() == "FAILED" and "AlgorithmError" in job.record.error
    # reading again after the end adds nothing twice
    assert job.logs(1).count("epoch 2 loss 0.4") == 1


def model_tarball(job_id: str, values: dict, nodes: int, tmp_path: Path, errors=None) -> bytes:
    """What SageMaker uploads from /opt/ml/model: results.zip and the node records."""
    folder = tmp_path / "opt-ml-model"
    folder.mkdir(exist_ok=True)
    write_results(folder, job_id, values)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(folder / "results.zip", arcname="results.zip")
        for node in range(nodes):
            record = json.dumps({"exit_code": 0, "errors": errors or [], "restarts": 0}).encode()
            info = tarfile.TarInfo(f"nodes/{node}.json")
            info.size = len(record)
            tar.addfile(info, io.BytesIO(record))
    return buf.getvalue()


def test_a_completed_job_brings_its_verified_results_home(aws, tmp_path):
    job = submit(cell_spec(tmp_path), config=config())
    name = job.record.native_id
    boto3.client("s3").put_object(
        Bucket="nb-team",
        Key=f"proj/jobs/{name}/output/model.tar.gz",
        Body=model_tarball(job.id, {"total": 6.0}, 1, tmp_path),
    )
    aws.set_training(name, "InProgress", "Training")
    aws.set_training(name, "InProgress", "Uploading")
    aws.set_training(
        name,
        "Completed",
        "Completed",
        BillableTimeInSeconds=61,
        # the instances kept in a warm pool after the job are billed too (DescribeTrainingJob)
        WarmPoolStatus={"Status": "Available", "ResourceRetainedBillableTimeInSeconds": 1800},
    )
    record = job.wait(timeout=10)
    assert record.status == "SUCCEEDED", record.error
    assert load_results(record) == {"total": 6.0}
    assert job.result() == {"total": 6.0}
    assert record.info["billable_seconds"] == 61 and record.exit_code == 0
    assert record.info["retained_billable_seconds"] == 1800
    from nbscale.cost import record_costs

    costs = record_costs(record, config())  # the cost report prices the billed seconds
    assert costs["billable_seconds"] == 61
    assert costs["warm_pool_cost"] == pytest.approx(0.5 * 0.23, abs=1e-4)
    assert costs["cost"] == pytest.approx((61 + 1800) / 3600 * 0.23, abs=1e-4)


def test_results_of_another_home_are_refused(aws, tmp_path, monkeypatch):
    job = submit(cell_spec(tmp_path), config=config())
    name = job.record.native_id
    other = json.dumps({"bundle": "cd" * 32})
    key_file = tmp_path / "other-keys.json"
    key_file.write_text(other)
    key_file.chmod(0o400)
    monkeypatch.setenv("NBSCALE_KEY_FILE", str(key_file))
    keys.forget_delivered()
    body = model_tarball(job.id, {"total": 6.0}, 1, tmp_path)  # signed with another key
    monkeypatch.delenv("NBSCALE_KEY_FILE")
    keys.forget_delivered()
    boto3.client("s3").put_object(
        Bucket="nb-team", Key=f"proj/jobs/{name}/output/model.tar.gz", Body=body
    )
    aws.set_training(name, "Completed", "Completed")
    record = job.wait(timeout=10)
    assert record.status == "SUCCEEDED"
    from nbscale.errors import SignatureError

    with pytest.raises(SignatureError):
        load_results(record)


def test_the_engine_finds_the_backend_by_its_type(aws, tmp_path):
    job = submit(cell_spec(tmp_path), config=config())
    again = get_job_handle(job.id, config=config())
    assert isinstance(again._backend, SageMakerBackend)
    assert again.status() == "PENDING"


def test_the_cell_dry_run_shows_the_exact_request_and_sends_nothing(aws, tmp_path, monkeypatch):
    import torch

    kernel_image_entry()  # the stock image of this kernel's versions
    (tmp_path / "nbscale.toml").write_text(
        "[backends.aws]\n"
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in {**SETTINGS, "type": "sagemaker"}.items())
        + f"wheelhouse = {json.dumps(runtime_wheels())}\n"
    )
    (tmp_path / "placeholder.py").write_text("")
    spec = JobSpec(
        entry=Entry.from_path(str(tmp_path / "placeholder.py")), name="dry", backend="aws", nodes=2
    )
    prepared = prepare_cell(
        "total = float(factor) * 3\n", {"factor": 2, "torch": torch}, spec, outputs=["total"]
    )
    objects = boto3.client("s3").list_objects_v2(Bucket="nb-team").get("KeyCount")
    calls = len(aws.calls)
    request = json.loads(prepared.dry_run().plan().text())
    assert request["ResourceConfig"]["InstanceCount"] == 2
    assert request["AlgorithmSpecification"]["ContainerEntrypoint"] == ENTRYPOINT
    assert request["TrainingJobName"].startswith("dry-")
    assert boto3.client("s3").list_objects_v2(Bucket="nb-team").get("KeyCount") == objects
    assert len(aws.calls) == calls and not prepared.bundle_path.exists()
    assert get_store().query_one("SELECT 1 FROM jobs") is None


def test_max_cost_becomes_the_runtime_it_buys(aws, tmp_path):
    # ml.m5.xlarge at $0.23/hour on 2 nodes: $0.23 buys half an hour
    submit(cell_spec(tmp_path, nodes=2, max_cost=0.23), config=config())
    assert (
        aws.operations("CreateTrainingJob")[-1]["StoppingCondition"]["MaxRuntimeInSeconds"] == 1800
    )
    with pytest.raises(SpecError, match="no price is known"):
        submit(cell_spec(tmp_path, max_cost=1.0), config=config(instance_type="ml.r5.24xlarge"))


def test_spot_per_job_and_refused_where_there_is_none(aws, tmp_path):
    job = submit(cell_spec(tmp_path, spot=True, max_runtime=600), config=config())
    request = aws.operations("CreateTrainingJob")[-1]
    assert request["EnableManagedSpotTraining"] is True
    assert request["StoppingCondition"] == {
        "MaxRuntimeInSeconds": 600,
        "MaxWaitTimeInSeconds": 1200,
    }
    assert request["CheckpointConfig"]["S3Uri"] == f"s3://nb-team/proj/checkpoints/{job.id}"
    submit(cell_spec(tmp_path, spot=False), config=config(spot=True))
    assert "EnableManagedSpotTraining" not in aws.operations("CreateTrainingJob")[-1]
    local = cell_spec(tmp_path, spot=True).replace(backend="local")
    with pytest.raises(SpecError, match="spot: the local backend .* has no spot capacity"):
        submit(local, config=config())
    with pytest.raises(SpecError, match="spot: must be true or false"):
        cell_spec(tmp_path, spot="yes")


def test_a_failed_job_names_the_rank_and_error_that_caused_it(aws, tmp_path):
    job = submit(cell_spec(tmp_path, nodes=2), config=config())
    name = job.record.native_id
    error = {
        "rank": 1,
        "type": "ValueError",
        "message": "ValueError: bad batch",
        "traceback": 'File "<cell>", line 3\nValueError: bad batch',
        "time": 5.0,
    }
    boto3.client("s3").put_object(
        Bucket="nb-team",
        Key=f"proj/jobs/{name}/output/model.tar.gz",
        Body=model_tarball(job.id, {}, 2, tmp_path, errors=[error]),
    )
    aws.set_training(name, "InProgress", "Training")
    aws.set_training(
        name, "Failed", "Failed", FailureReason="AlgorithmError: ExecuteUserScriptError"
    )
    record = job.wait(timeout=10)
    assert record.status == "FAILED"
    assert record.failed_rank == 1 and record.error == "rank 1: ValueError: bad batch"
    assert "line 3" in record.info["traceback"]


def test_a_train_cell_waits_shows_the_phases_and_gets_its_outputs(aws, tmp_path):
    """%%train --backend aws in an IPython shell: the cell waits for the job, shows SageMaker's
    status changes and the ranks' log lines as they come, then the outputs are in the namespace."""
    import threading

    kernel_image_entry()  # the stock image of this kernel's versions
    (tmp_path / "nbscale.toml").write_text(
        "[backends.aws]\n"
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in {**SETTINGS, "type": "sagemaker"}.items())
        + f"wheelhouse = {json.dumps(runtime_wheels())}\n"
    )
    code = (
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "sh = InteractiveShell.instance()\n"
        "sh.run_cell('%load_ext nbscale', store_history=False)\n"
        "sh.run_cell('factor = 7')\n"
        "r = sh.run_cell('%%train --backend aws --nodes 2 --outputs total\\ntotal = factor * 6\\n')\n"
        "print('TOTAL', sh.user_ns.get('total'))\n"
        "raise SystemExit(0 if r.success else 1)\n"
    )
    before = len(aws.operations("CreateTrainingJob"))
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "NBSCALE_PROGRESS": "text"},
    )

    def play():  # SageMaker's side: the job goes through its phases and its outputs land
        deadline = time.monotonic() + 120
        while len(aws.operations("CreateTrainingJob")) == before:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        request = aws.operations("CreateTrainingJob")[-1]
        name = request["TrainingJobName"]
        job_id = {t["Key"]: t["Value"] for t in request["Tags"]}["nbscale:job-id"]
        while name not in aws.training:  # the emulator records the call before its answer
            assert time.monotonic() < deadline
            time.sleep(0.05)
        for secondary in ("LaunchingMLInstances", "Downloading", "Training"):
            aws.set_training(name, "InProgress", secondary, f"now {secondary}")
            time.sleep(0.3)
        put_logs(name, 1, ["[rank 0] working on it"])
        time.sleep(0.5)
        boto3.client("s3").put_object(
            Bucket="nb-team",
            Key=f"proj/jobs/{name}/output/model.tar.gz",
            Body=model_tarball(job_id, {"total": 42}, 2, tmp_path),
        )
        aws.set_training(name, "InProgress", "Uploading", "Uploading generated training model")
        aws.set_training(name, "Completed", "Completed", BillableTimeInSeconds=30)

    player = threading.Thread(target=play, daemon=True)
    player.start()
    try:
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    player.join(5)
    assert proc.returncode == 0, out
    assert "TOTAL 42" in out
    assert "[sagemaker] Training: now Training" in out and "working on it" in out, out


def test_a_script_travels_in_its_own_channel(aws, tmp_path):
    """The script's folder (the test's: the script, and the home's folder left out) is
    ``code.zip`` in the code channel; the spec names the script inside it."""
    import base64
    import io
    import zipfile

    script = tmp_path / "train.py"
    script.write_text("import torch.distributed as dist\nprint('hello from', dist.get_rank())\n")
    job = submit(
        JobSpec(entry=Entry.from_path(str(script)), backend="aws", args=("--epochs", "3")),
        config=config(),
    )
    request = aws.operations("CreateTrainingJob")[-1]
    channels = {
        c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"]
        for c in request["InputDataConfig"]
    }
    assert set(channels) == {"spec", "code", "runtime"}
    assert channels["code"].startswith("s3://nb-team/proj/code/tree/")
    s3 = boto3.client("s3")
    key = channels["code"].removeprefix("s3://nb-team/")
    listed = s3.list_objects_v2(Bucket="nb-team", Prefix=key)["Contents"]
    assert [o["Key"].rsplit("/", 1)[1] for o in listed] == ["code.zip"]
    body = s3.get_object(Bucket="nb-team", Key=listed[0]["Key"])["Body"].read()
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        assert zf.read("train.py") == script.read_bytes()
    spec_key = channels["spec"].removeprefix("s3://nb-team/")
    spec_obj = s3.list_objects_v2(Bucket="nb-team", Prefix=spec_key)["Contents"][0]["Key"]
    sent = json.loads(
        base64.urlsafe_b64decode(s3.get_object(Bucket="nb-team", Key=spec_obj)["Body"].read())
    )
    assert sent["entry"]["target"] == "train.py"  # in the folder the launcher unpacks
    assert sent["code"]["uri"] == "/opt/ml/input/data/code/code.zip"
    assert sent["args"] == ["--epochs", "3"]
    assert job.status() == "PENDING"


def test_secret_env_goes_to_a_secret_of_the_job_and_is_deleted_after(
    aws, tmp_path, nbscale_home, monkeypatch
):
    value = "tok-" + "x" * 20 + "-secret-env-value"
    monkeypatch.setenv("MY_API_TOKEN", value)
    job = submit(cell_spec(tmp_path, secret_env=("MY_API_TOKEN",)), config=config())
    env = aws.operations("CreateTrainingJob")[-1]["Environment"]
    arn = env["NBSCALE_ENV_SECRET_ARN"]
    assert "MY_API_TOKEN" not in env and value not in json.dumps(env)
    sm = boto3.client("secretsmanager")
    assert json.loads(sm.get_secret_value(SecretId=arn)["SecretString"]) == {"MY_API_TOKEN": value}
    # the value went to Secrets Manager once and nowhere else: no other request, store or home
    carrying = [body for _, _, body in aws.bodies if value.encode() in body]
    assert len(carrying) == 1 and json.loads(carrying[0])["Name"].endswith("/env")  # CreateSecret
    assert grep_tree(nbscale_home, value) == []
    aws.set_training(job.record.native_id, "Completed", "Completed")
    assert job.wait(timeout=10).status == "SUCCEEDED"
    with pytest.raises(sm.exceptions.ResourceNotFoundException):
        sm.describe_secret(SecretId=arn)
