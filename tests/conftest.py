"""Fixtures every tier shares, and the tier markers.

Every test gets its own ``$NBSCALE_HOME`` and working directory. A test's tier is the folder
it lives in (``tests/unit``, ``tests/integration``, ``tests/contract``, ``tests/ui``) and is
marked as such here, so ``-m unit`` selects a tier without a file repeating it. Helpers that
are not fixtures live in ``tests/support``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
TIERS = ("unit", "integration", "contract", "ui")


def pytest_collection_modifyitems(config, items):
    for item in items:
        parts = Path(item.path).resolve().relative_to(TESTS).parts
        if len(parts) > 1 and parts[0] in TIERS:
            item.add_marker(parts[0])


@pytest.fixture(autouse=True)
def nbscale_home(tmp_path, monkeypatch):
    home = tmp_path / "nbscale-home"
    monkeypatch.setenv("NBSCALE_HOME", str(home))
    monkeypatch.setenv("NBSCALE_CANCEL_GRACE", "3")
    # the test machine's own disk may be fuller than data capture's default floor;
    # the tests of that floor give it explicitly, on a small disk of their own
    monkeypatch.setenv("NBSCALE_CAPTURE_MIN_FREE", "0")
    # no pipeline kernels kept warm between a test's runs (a keeper per test home would
    # outlive the test); the warm pool's own tests turn it on
    monkeypatch.setenv("NBSCALE_KERNEL_POOL", "0")
    # a deploy's warm zygote (serving/zygote.py) lives 5 s past its last claim, not 10 min
    monkeypatch.setenv("NBSCALE_WARM_TTL", "5")
    monkeypatch.chdir(tmp_path)
    from nbscale import store

    store._stores.clear()
    yield home
    for s in store._stores.values():
        s.close()
    store._stores.clear()


@pytest.fixture
def write_script(tmp_path):
    """Write a Python file into the test's directory and return its path."""

    def write(name: str, source: str) -> Path:
        path = tmp_path / name
        path.write_text(source)
        return path

    return write


@pytest.fixture
def nbscale_cli():
    """Run the real ``nbscale`` console entry in a subprocess."""
    import subprocess

    def run(*args: str, timeout: float = 180, check: bool = False, **kw):
        proc = subprocess.run(
            [sys.executable, "-m", "nbscale", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **kw.pop("env", {})},
            **kw,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"nbscale {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    return run


# -- cost ------------------------------------------------------------------------------

PRICED = """
[backends.priced]
type = "local"
price_per_node_hour = 3600.0

[backends.gpu-box]
type = "local"
gpu_hour_price = 0.9

[backends.prod]
type = "sagemaker"
region = "us-east-1"
role_arn = "arn:aws:iam::123456789012:role/train"
prices = { "ml.g5.xlarge" = 1.2 }
"""


@pytest.fixture
def priced(tmp_path):
    """./nbscale.toml with priced backends (local per node-hour, local GPU-hours, sagemaker);
    returns the loaded config."""
    from nbscale import config as nbconfig

    (tmp_path / "nbscale.toml").write_text(PRICED)
    return nbconfig.load()


# -- pipelines -------------------------------------------------------------------------


@pytest.fixture
def small(tmp_path):
    """make -> (double, square) -> total, with a local module, typed parameters, resources and retries."""
    from tests.support.pipeline_notebooks import cell, write_notebook

    (tmp_path / "shapes.py").write_text("def square(v):\n    return v * v\n")
    nb = write_notebook(
        tmp_path / "small.ipynb",
        [
            cell("from shapes import square", "imports"),
            cell("n = 4\nlabel = 'sum'\nfactor = 2.5", "pipeline-parameters"),
            cell("values = list(range(n))", "step:make"),
            cell("doubled = [v * factor for v in values]", "step:double", "prev:make"),
            cell("squared = [square(v) for v in values]", "step:square", "prev:make"),
            cell(
                "total = {label: sum(doubled) + sum(squared)}\nprint(total)\n"
                "assert total[label] == sum(v * factor for v in range(n)) + sum(v * v for v in range(n))",
                "step:total",
                "prev:double",
                "prev:square",
            ),
        ],
    )
    return nb


# -- Kubeflow: an emulated cluster (the integration and contract tiers) --------------


@pytest.fixture
def kube():  # one per test: kmock filters its whole request history on every request
    """A Kubernetes API server on 127.0.0.1 (kmock's emulator)."""
    from tests.support.kube_emulator import KubeEmulator

    emu = KubeEmulator()
    yield emu
    emu.stop()


@pytest.fixture(scope="module")
def s3_url():
    """A moto server for the kubeflow tests' object storage; its URL."""
    from tests.support.emulators import moto_server

    with moto_server() as url:
        yield url


@pytest.fixture
def cluster(kube, s3_url, tmp_path, monkeypatch, nbscale_home):
    """A ``kf`` backend in namespace NS of the emulated cluster, its storage on moto, the
    storage credentials in a Secret; returns the test's API client (the controllers' hands)."""
    import base64

    import boto3

    from nbscale import keys
    from tests.support.emulators import AWS_ENV
    from tests.support.kube_emulator import KubeApi
    from tests.support.kubeflow import NS

    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_url)
    s3 = boto3.client("s3")
    if "nb-bucket" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket="nb-bucket")
    monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig(tmp_path / "kubeconfig", NS)))
    nbscale_home.mkdir(parents=True, exist_ok=True)
    (nbscale_home / "config.toml").write_text(
        "[backends.kf]\n"
        'type = "kubeflow"\n'
        'storage = "s3://nb-bucket/work"\n'
        f'endpoint_url = "{s3_url}"\n'
        'storage_secret = "minio-creds"\n'
        'image = "registry.example.com/ml/torch:kernel"\n'  # the local "pods" run this Python
        "wheelhouse = false\n"
        "poll_seconds = 0\n"
    )
    keys.forget_delivered()
    api = KubeApi(kube.url)
    try:
        api.core.read_namespaced_secret("minio-creds", NS)
    except Exception:  # noqa: BLE001
        api.core.create_namespaced_secret(
            NS,
            {
                "metadata": {"name": "minio-creds", "namespace": NS},
                "data": {k: base64.b64encode(v.encode()).decode() for k, v in AWS_ENV.items()},
            },
        )
    return api
