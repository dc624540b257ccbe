"""Fixtures of the integration tier: a Jupyter server with the nbscale extension (through
pytest-jupyter), a real kernel with the magics loaded, a local AWS for SageMaker endpoints."""

from __future__ import annotations

import json

import boto3
import pytest
from tornado.httpclient import HTTPClientError

from nbscale import keys
from tests.support.aws_emulator import Emulator
from tests.support.emulators import AWS_ENV
from tests.support.kernel import Kernel

# -- the Jupyter server extension ---------------------------------------------------------


@pytest.fixture
def jp_server_config():
    """pytest-jupyter's server, with the nbscale extension enabled."""
    return {
        "ServerApp": {"jpserver_extensions": {"nbscale.server_ext": True}},
        "NbscaleExtension": {"poll_interval": 0.2},
    }


@pytest.fixture
def fetch(jp_fetch):
    """``await fetch("jobs", method=..., body=...)`` -> (status, json); errors are answers, not raises."""

    async def call(*parts, method="GET", body=None, params=None):
        kwargs = {"method": method, "params": params}
        if body is not None:
            kwargs["body"] = body if isinstance(body, str) else json.dumps(body)
        elif method in ("POST", "PUT", "PATCH"):
            kwargs["body"] = ""
            kwargs["allow_nonstandard_methods"] = True
        try:
            resp = await jp_fetch("nbscale", "api", *parts, **kwargs)
        except HTTPClientError as err:
            return err.code, json.loads(err.response.body)
        return resp.code, json.loads(resp.body)

    return call


# -- a real kernel -------------------------------------------------------------------------


@pytest.fixture
def kernel(tmp_path):
    started: list[Kernel] = []

    def make(**env: str) -> Kernel:
        k = Kernel(tmp_path, **env)
        started.append(k)
        k.ok("%load_ext nbscale")
        return k

    yield make
    for k in started:
        k.close()


# -- a local AWS for the SageMaker endpoint backend -----------------------------------------

ENDPOINTS_TOML = """\
[backends.aws]
type = "sagemaker"
region = "us-east-1"
role_arn = "arn:aws:iam::123456789012:role/nbscale-serving"
storage = "s3://nb-models/serve"
instance_type = "ml.m5.large"
serving_image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/nbscale-serving:0.1.0"
poll_seconds = 0
"""


@pytest.fixture(scope="module")
def emulator():
    """A local AWS (tests/support/aws_emulator.py), one per test module."""
    emu = Emulator()
    yield emu
    emu.stop()


@pytest.fixture
def aws(emulator, monkeypatch, tmp_path):
    """A ``aws`` SageMaker endpoint backend in ./nbscale.toml, its bucket on the emulator.
    (tests/integration/test_sagemaker.py has its own ``aws`` for the job backend.)"""
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", emulator.url)
    s3 = boto3.client("s3")
    if "nb-models" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket="nb-models")
    (tmp_path / "nbscale.toml").write_text(ENDPOINTS_TOML)
    keys.forget_delivered()
    emulator.endpoint_polls = 2
    return emulator
