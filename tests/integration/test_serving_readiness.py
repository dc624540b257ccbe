"""Platform probes (SageMaker's /ping, KServe's /v2/health/ready) answer ready only once the
model is loaded, and it is loaded once: the probe never triggers a load of its own."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from nbscale.serving.artifact import sign
from tests.support import wait_for
from tests.support.emulators import free_port
from tests.support.serving import infer_body, make_artifact

COUNTING_LOAD = """

_counted_load = model_fn


def model_fn(model_dir):
    import os
    import time

    with open(os.environ["LOAD_COUNT_FILE"], "a") as fh:
        fh.write("load\\n")
    time.sleep(2)
    return _counted_load(model_dir)
"""


def _status(port: int, method: str, path: str, body: bytes | None = None) -> int | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except OSError:
        return None
    finally:
        conn.close()


@pytest.mark.parametrize(
    "platform, probe",
    [
        ("sagemaker", "/ping"),
        ("kserve", "/v2/health/ready"),
    ],
)
def test_the_platform_probe_is_ready_only_after_the_one_load(tmp_path, platform, probe):
    model_dir, _ = make_artifact(tmp_path / "art")
    code = model_dir / "code" / "inference.py"
    code.write_text(code.read_text() + COUNTING_LOAD)
    sign(model_dir)
    count = tmp_path / "loads"
    port = free_port()
    env = {**os.environ, "LOAD_COUNT_FILE": str(count)}
    if platform == "sagemaker":
        # the SageMaker hosting contract: `serve`, the port in SAGEMAKER_BIND_TO_PORT, no token
        cmd = ["serve", "--model-dir", str(model_dir), "--host", "127.0.0.1"]
        env["SAGEMAKER_BIND_TO_PORT"] = str(port)
    else:
        # as the KServe InferenceService runs it: behind the ingress, metrics on their own port
        cmd = [
            "--model-dir",
            str(model_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--insecure-no-auth",
            "--metrics-port",
            str(free_port()),
        ]
    log = tmp_path / "server.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "nbscale.serving", *cmd],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        # While the model loads, the server is up but the probe says not ready
        wait_for(lambda: count.exists(), 60, what="the load to begin")
        assert _status(port, "GET", "/v2/health/live") == 200, log.read_text()
        assert _status(port, "GET", probe) == 503
        # Then it turns ready once the load is done
        wait_for(lambda: _status(port, "GET", probe) == 200, 60, what="ready")
        # And the model was loaded exactly once, however often the probe asked
        for _ in range(5):
            assert _status(port, "GET", probe) == 200
        body = infer_body(np.zeros((1, 64), np.float32))
        path = "/invocations" if platform == "sagemaker" else "/v2/models/digits/infer"
        assert (
            _status(
                port, "POST", path, body if platform == "kserve" else b"[[" + b"0," * 63 + b"0]]"
            )
            == 200
        )
        time.sleep(0.2)
        assert count.read_text().splitlines() == ["load"], log.read_text()
    finally:
        proc.terminate()
        proc.wait(20)
