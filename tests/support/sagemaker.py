"""SageMaker settings, a runtime wheelhouse and CloudWatch logs for the SageMaker tests (the
job backend's, its container contract's and the endpoints')."""

from __future__ import annotations

import contextlib
import functools
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3

from nbscale.backends import get_endpoint_backend
from nbscale.backends.sagemaker.endpoints import SageMakerEndpoints
from nbscale.config import BackendConfig, Config

ROLE = "arn:aws:iam::123456789012:role/nbscale-training"
SETTINGS = {
    "region": "us-east-1",
    "role_arn": ROLE,
    "storage": "s3://nb-team/proj",
    "instance_type": "ml.m5.xlarge",
    "poll_seconds": 0,
}


@functools.cache
def runtime_wheels() -> str:
    """A folder with a real wheel, built here without a package index (the runtime channel's
    mechanics do not depend on which wheels; building nbscale's closure needs PyPI)."""
    root = Path(tempfile.mkdtemp(prefix="nbscale-wheels-"))
    project = root / "src"
    (project / "nbscale_probe").mkdir(parents=True)
    (project / "nbscale_probe" / "__init__.py").write_text("VALUE = 1\n")
    (project / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "nbscale-probe"\nversion = "1.0"\n'
    )
    out = root / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "--no-index", "-w", str(out), str(project)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return str(out)


def kernel_image_entry() -> None:
    """A user's image table entry (``$NBSCALE_HOME/images/sagemaker.json``) for this
    kernel's torch and Python, in the DLC tag scheme: the shipped table has no image for
    every kernel's versions (tests/unit/test_image_table.py covers that refusal)."""
    import json

    from nbscale import paths
    from nbscale.backends.images import kernel_versions

    kernel = kernel_versions()
    py = kernel.python.replace(".", "")
    path = paths.home() / "images" / "sagemaker.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"name": "kernel", "scope": "training", "repository": "pytorch-training"}
    entry.update(
        torch=kernel.torch, python=kernel.python, tag=f"{kernel.torch}-{{processor}}-py{py}"
    )
    path.write_text(json.dumps({"entries": [entry]}))


def config(**extra) -> Config:
    settings_ = {**SETTINGS, **extra}
    if "image" not in settings_:
        settings_.setdefault("wheelhouse", runtime_wheels())
        kernel_image_entry()  # the stock image of this kernel's versions
    backend = BackendConfig("aws", "sagemaker", settings_)
    return Config("local", {}, {"local": BackendConfig("local", "local"), "aws": backend})


def put_logs(job_name: str, host: int, lines: list[str]) -> None:
    client = boto3.client("logs")
    group = "/aws/sagemaker/TrainingJobs"
    with contextlib.suppress(client.exceptions.ResourceAlreadyExistsException):
        client.create_log_group(logGroupName=group)
    stream = f"{job_name}/algo-{host}-1764570000"
    with contextlib.suppress(client.exceptions.ResourceAlreadyExistsException):
        client.create_log_stream(logGroupName=group, logStreamName=stream)
    now = int(time.time() * 1000)
    client.put_log_events(
        logGroupName=group,
        logStreamName=stream,
        logEvents=[{"timestamp": now + i, "message": line} for i, line in enumerate(lines)],
    )


def backend() -> SageMakerEndpoints:
    found = get_endpoint_backend("aws")
    assert isinstance(found, SageMakerEndpoints)
    found.progress = None
    return found


def nbscale_resources(name: str) -> dict[str, list[str]]:
    sm = boto3.client("sagemaker")
    aas = boto3.client("application-autoscaling")
    return {
        "models": [m["ModelName"] for m in sm.list_models()["Models"] if name in m["ModelName"]],
        "configs": [
            c["EndpointConfigName"]
            for c in sm.list_endpoint_configs()["EndpointConfigs"]
            if name in c["EndpointConfigName"]
        ],
        "endpoints": [
            e["EndpointName"] for e in sm.list_endpoints()["Endpoints"] if e["EndpointName"] == name
        ],
        "targets": [
            t["ResourceId"]
            for t in aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
            if f"endpoint/{name}/" in t["ResourceId"]
        ],
        "policies": [
            p["PolicyName"]
            for p in aas.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]
            if name in p["PolicyName"]
        ],
    }
