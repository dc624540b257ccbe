"""Issue 19 against a local AWS: a submit with no stock image for the kernel's versions
sends nothing, and a job on a 1-, 4- or 8-GPU instance type runs one process per GPU: the
CreateTrainingJob request, the spec the container reads from its channel, the node layout
the launcher makes of it, and the record the store keeps."""

from __future__ import annotations

import base64
import json

import boto3
import pytest

from nbscale.backends import images
from nbscale.errors import SpecError
from nbscale.jobs import submit
from nbscale.runtime.launch import decode_spec, node_layout
from nbscale.specs import Entry, JobSpec
from nbscale.store import get_store
from nbscale.store.jobs import get_job
from tests.support.sagemaker import config
from tests.support.sagemaker_instances import running_emulator, use_emulator

OWN_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/nbscale-runtime:0.1.0"


@pytest.fixture(scope="module")
def emulator():
    yield from running_emulator()


@pytest.fixture
def aws(emulator, monkeypatch):
    return use_emulator(emulator, monkeypatch)


def script(tmp_path):
    path = tmp_path / "train.py"
    path.write_text("print('hi')\n")
    return Entry.from_path(str(path))


def test_no_stock_image_for_the_kernel_is_refused_before_anything_is_sent(
    aws, tmp_path, monkeypatch
):
    from nbscale.config import BackendConfig, Config
    from tests.support.sagemaker import SETTINGS, runtime_wheels

    monkeypatch.setattr(images, "kernel_versions", lambda: images.Versions("2.13", "3.11"))
    backend = BackendConfig("aws", "sagemaker", {**SETTINGS, "wheelhouse": runtime_wheels()})
    cfg = Config("local", {}, {"aws": backend})  # no image: the stock image of the table
    sent = len(aws.bodies)
    with pytest.raises(SpecError) as err:
        submit(JobSpec(entry=script(tmp_path), backend="aws"), config=cfg)
    text = str(err.value)
    assert text.startswith(
        "image: no SageMaker PyTorch training image in us-east-1 has the kernel's torch 2.13 "
        "and Python 3.11 (cpu)"
    )
    assert "nearest: 763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:" in text
    assert len(aws.bodies) == sent  # no upload, no secret, no request


@pytest.mark.parametrize(
    ("instance", "gpus"), [("ml.g5.xlarge", 1), ("ml.g5.12xlarge", 4), ("ml.p4d.24xlarge", 8)]
)
def test_a_training_job_runs_one_process_per_gpu_of_its_instance(aws, tmp_path, instance, gpus):
    spec = JobSpec(entry=script(tmp_path), backend="aws", instance_type=instance, nodes=2)
    job = submit(spec, config=config(image=OWN_IMAGE))
    request = aws.operations("CreateTrainingJob")[-1]
    assert request["TrainingJobName"] == job.id
    assert request["ResourceConfig"]["InstanceType"] == instance
    fabric = {k: v for k, v in request["Environment"].items() if k.startswith(("FI_", "RDMAV_"))}
    assert fabric == (
        {"FI_PROVIDER": "efa", "FI_EFA_USE_DEVICE_RDMA": "1", "RDMAV_FORK_SAFE": "1"}
        if gpus == 8
        else {"FI_PROVIDER": "efa"}
        if gpus == 4
        else {}
    )
    # the spec the container reads from its channel: the node's real shape
    channel = next(c for c in request["InputDataConfig"] if c["ChannelName"] == "spec")
    bucket, _, prefix = channel["DataSource"]["S3DataSource"]["S3Uri"][5:].partition("/")
    s3 = boto3.client("s3")
    key = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"][0]["Key"]
    text = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    container_spec = decode_spec(text)
    assert container_spec["procs_per_node"] == gpus and container_spec["gpus_per_proc"] == 1
    # the launcher on algo-2 of that request, under SageMaker's resourceconfig.json
    conf = tmp_path / "resourceconfig.json"
    conf.write_text(
        json.dumps(
            {
                "current_host": "algo-2",
                "hosts": ["algo-1", "algo-2"],
                "current_instance_type": instance,
                "network_interface_name": "eth0",
            }
        )
    )
    layout = node_layout(container_spec, {"NBSCALE_SM_RESOURCE_CONFIG": str(conf)})
    assert (layout["platform"], layout["nnodes"], layout["node_rank"]) == ("sagemaker", 2, 1)
    assert layout["nproc"] == gpus
    # the stored record has the same shape (log routing and status read it)
    stored = get_job(get_store(), job.id).spec
    assert stored["procs_per_node"] == gpus and stored["gpus_per_proc"] == 1
    assert base64.urlsafe_b64decode(text.encode())  # the channel holds base64 JSON
