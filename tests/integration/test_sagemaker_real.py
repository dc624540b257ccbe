"""Opt-in: the SageMaker backend against a real AWS account (skipped unless asked for).

    NBSCALE_SAGEMAKER_REAL=1 \\
    NBSCALE_SAGEMAKER_ROLE=arn:aws:iam::ACCOUNT:role/ROLE \\
    NBSCALE_SAGEMAKER_STORAGE=s3://BUCKET/nbscale-test \\
    AWS_PROFILE=... AWS_REGION=us-east-1 \\
    python -m pytest -q -p no:cacheprovider tests/integration/test_sagemaker_real.py

The role needs the SageMaker execution permissions, read/write on the bucket prefix and
``secretsmanager:GetSecretValue`` on ``nbscale/sagemaker-real/*``. What it costs (us-east-1
list prices): one training job on 2 x ml.m5.large for a few minutes (about $0.02), a
serverless endpoint for a few invocations (under $0.01), S3 and Secrets Manager pennies.
Everything it creates is removed at the end (the secret is kept for the next run).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("NBSCALE_SAGEMAKER_REAL") != "1",
        reason="real AWS account: set NBSCALE_SAGEMAKER_REAL=1 (see the module docstring)",
    ),
]


@pytest.fixture
def real_config(tmp_path):
    import boto3

    if boto3.session.Session().get_credentials() is None:
        pytest.skip("no AWS credentials in the environment")
    role = os.environ.get("NBSCALE_SAGEMAKER_ROLE")
    storage = os.environ.get("NBSCALE_SAGEMAKER_STORAGE")
    if not role or not storage:
        pytest.skip("set NBSCALE_SAGEMAKER_ROLE and NBSCALE_SAGEMAKER_STORAGE")
    region = os.environ.get("AWS_REGION") or boto3.session.Session().region_name or "us-east-1"
    (tmp_path / "nbscale.toml").write_text(
        "[backends.real]\n"
        'type = "sagemaker"\n'
        f'region = "{region}"\n'
        f'role_arn = "{role}"\n'
        f'storage = "{storage}"\n'
        'instance_type = "ml.m5.large"\n'
        'key_secret_name = "nbscale/sagemaker-real"\n'
        "poll_seconds = 10\n"
    )
    return tmp_path


def test_a_cell_trains_on_two_real_instances_and_comes_back(real_config):
    import torch

    from nbscale.celljob import prepare_cell
    from nbscale.specs import Entry, JobSpec

    (real_config / "placeholder.py").write_text("")
    spec = JobSpec(
        entry=Entry.from_path(str(real_config / "placeholder.py")),
        name="real-ddp",
        backend="real",
        nodes=2,
        max_runtime=900,
    )
    cell = (
        "import torch.distributed as dist\n"
        "t = torch.tensor([float(dist.get_rank() + 1)])\n"
        "dist.all_reduce(t)\n"
        "print('sum', t.item())\n"
        "total = t.item()\n"
    )
    job = prepare_cell(cell, {"torch": torch}, spec, outputs=["total"]).submit()
    try:
        record = job.wait(timeout=1800, poll=10)
    except BaseException:
        job.cancel()
        raise
    assert record.status == "SUCCEEDED", record.error
    assert job.result() == {"total": 3.0}
    assert "sum 3.0" in job.logs(0) and record.info.get("billable_seconds", 0) > 0


def test_a_serverless_endpoint_serves_and_is_removed(real_config):
    from nbscale.backends import get_endpoint_backend
    from nbscale.backends.endpoint_base import DeployRequest
    from nbscale.serving.artifact import package

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 2)).eval()
    artifact = package(
        model, Path(real_config) / "artifact", "real-tiny", example=torch.zeros(1, 4)
    )
    backend = get_endpoint_backend("real")
    request = DeployRequest("real-tiny", artifact, 0, 1, None, {}, {"serverless": True})
    record = backend.deploy(request)
    try:
        x = np.ones((2, 4), dtype=np.float32)
        with torch.inference_mode():
            expected = model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(backend.predict(record, x), expected, rtol=1e-5, atol=1e-6)
    finally:
        backend.undeploy("real-tiny")
