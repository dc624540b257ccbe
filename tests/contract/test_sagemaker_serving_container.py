"""The serving container contract, as SageMaker hosting runs a container.

SageMaker downloads ``model.tar.gz`` (what the backend uploads), unpacks it into
``/opt/ml/model``, starts the image with the argument ``serve`` and probes ``GET /ping``
on port 8080 until it answers 200, then sends ``POST /invocations``. Here the instance is
a process in its own mount namespace with a temporary folder at ``/opt/ml``, its own home,
and the model key delivered only as a Secrets Manager ARN.
"""

from __future__ import annotations

import http.client
import io
import json
import subprocess
import sys
import tarfile

import boto3
import numpy as np
import pytest

from nbscale import keys
from nbscale.backends.local.ports import port_free
from nbscale.backends.sagemaker import secrets
from nbscale.backends.sagemaker.endpoints import model_tarball
from tests.support import wait_for
from tests.support.aws_emulator import Emulator
from tests.support.emulators import AWS_ENV, container_env
from tests.support.serving import forward, make_artifact

PORT = 8080  # the port SageMaker sends /ping and /invocations to
READY_WITHIN = 240  # seconds SageMaker waits for the first successful /ping by default


@pytest.fixture
def aws(monkeypatch):
    emu = Emulator()
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", emu.url)
    keys.forget_delivered()
    yield emu
    emu.stop()


def request(method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type"), resp.read()
    finally:
        conn.close()


def start_container(opt_ml, home, env_extra):
    home.mkdir()
    env = container_env(home, **AWS_ENV, **env_extra)
    return subprocess.Popen(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "/bin/sh",
            "-c",
            'mount -t tmpfs none /opt && mkdir /opt/ml && mount --bind "$0" /opt/ml && exec "$@"',
            str(opt_ml),
            sys.executable,
            "-m",
            "nbscale.serving",
            "serve",
        ],
        env=env,
        cwd=home,
        stdout=open(home / "stdout.log", "wb"),  # noqa: SIM115 - the child owns it
        stderr=subprocess.STDOUT,
    )


def stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_the_artifact_serves_ping_and_invocations_on_8080_as_sagemaker_starts_it(aws, tmp_path):
    if not port_free(PORT):
        pytest.skip(
            f"port {PORT} is taken on this machine; the SageMaker contract needs exactly it"
        )
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(
            f"an instance needs its own /opt/ml (a mount namespace): {probe.stderr.strip()}"
        )
    artifact, model = make_artifact(tmp_path / "artifact", name="digits")
    # what SageMaker does with ModelDataUrl: download and unpack into /opt/ml/model
    tar = model_tarball(artifact, tmp_path / "model.tar.gz")
    opt_ml = tmp_path / "opt-ml"
    (opt_ml / "model").mkdir(parents=True)
    with tarfile.open(tar) as archive:
        archive.extractall(opt_ml / "model", filter="data")
    arn = secrets.ensure(boto3.client("secretsmanager"), "nbscale/test/signing-keys", ("model",))

    proc = start_container(
        opt_ml,
        tmp_path / "home",
        {
            "AWS_ENDPOINT_URL": aws.url,
            "NBSCALE_KEY_SECRET_ARN": arn,
            "SAGEMAKER_BIND_TO_PORT": str(PORT),
        },
    )
    try:

        def pinged():
            assert proc.poll() is None, (tmp_path / "home" / "stdout.log").read_text()
            try:
                return request("GET", "/ping")[0] == 200
            except OSError:
                return False

        wait_for(pinged, READY_WITHIN, interval=0.2, what="/ping to answer 200")
        x = np.random.default_rng(1).random((3, 64), dtype=np.float32)
        status, ctype, body = request(
            "POST",
            "/invocations",
            json.dumps(x.tolist()).encode(),
            {"Content-Type": "application/json"},
        )
        assert status == 200 and ctype.startswith("application/json"), body
        np.testing.assert_allclose(
            np.asarray(json.loads(body)), forward(model, x), rtol=1e-5, atol=1e-6
        )
        buf = io.BytesIO()
        np.save(buf, x)
        status, ctype, body = request(
            "POST",
            "/invocations",
            buf.getvalue(),
            {"Content-Type": "application/x-npy", "Accept": "application/x-npy"},
        )
        assert status == 200 and ctype == "application/x-npy"
        np.testing.assert_allclose(
            np.load(io.BytesIO(body)), forward(model, x), rtol=1e-5, atol=1e-6
        )
        assert (
            request("POST", "/invocations", b"{not json", {"Content-Type": "application/json"})[0]
            == 400
        )
    finally:
        stop(proc)


def test_without_the_delivered_key_the_container_refuses_to_serve(aws, tmp_path):
    if not port_free(PORT):
        pytest.skip(f"port {PORT} is taken on this machine")
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(
            f"an instance needs its own /opt/ml (a mount namespace): {probe.stderr.strip()}"
        )
    artifact, _ = make_artifact(tmp_path / "artifact", name="digits")
    opt_ml = tmp_path / "opt-ml"
    (opt_ml / "model").mkdir(parents=True)
    with tarfile.open(model_tarball(artifact, tmp_path / "model.tar.gz")) as archive:
        archive.extractall(opt_ml / "model", filter="data")
    proc = start_container(opt_ml, tmp_path / "home", {"AWS_ENDPOINT_URL": aws.url})
    try:
        code = proc.wait(120)
    finally:
        stop(proc)
    out = (tmp_path / "home" / "stdout.log").read_text()
    assert code != 0 and "NBSCALE_KEY_SECRET_ARN" in out, out
