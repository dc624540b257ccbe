"""Interop: KServe's own Python SDK (PyPI ``kserve``, pinned in tests/support/venvs.py) reads
the InferenceService nbscale's Kubeflow endpoint backend made, as a user's notebook would.

kserve pins ``pandas<3`` and ``psutil<6``, so it runs from a venv of its own
(tests/support/venvs.py), in a separate process (tests/support/kserve_sdk.py) given the
emulator's kubeconfig (the API server listens on 127.0.0.1). nbscale deploys into the
emulator (tests/support/kube_emulator.py) while test_kubeflow_endpoints' FakeKServe plays
KServe (storage initializer, the shipped runtime's command as the predictor); here it
waits for the test's word before it reconciles, so the SDK is seen reading the object both
before and after KServe marks it Ready.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading

import pytest

from nbscale.backends.kubeflow import manifests as mf
from nbscale.endpoints import deploy
from tests.contract.test_kubeflow_endpoints import FakeKServe
from tests.support import REPO, wait_for
from tests.support.kubeflow import NS
from tests.support.serving import mlp
from tests.support.venvs import KSERVE, sdk_python

pytestmark = pytest.mark.slow

SCRIPT = REPO / "tests" / "support" / "kserve_sdk.py"


@pytest.fixture(scope="module")
def kserve_python(tmp_path_factory):
    """The kserve venv's python: cached between runs; in CI made fresh."""
    return sdk_python(KSERVE, tmp_path_factory.mktemp("venvs") if os.environ.get("CI") else None)


class GatedKServe(FakeKServe):
    """FakeKServe that reconciles only once ``gate`` is set."""

    def __init__(self, *args):
        self.gate = threading.Event()
        super().__init__(*args)

    def reconcile(self, isvc: dict) -> None:
        self.gate.wait()
        if not self.stop.is_set():
            super().reconcile(isvc)

    def close(self) -> None:
        self.stop.set()
        self.gate.set()
        super().close()


def read_with_sdk(python, kubeconfig, name: str, wait: float | None = None) -> dict:
    argv = [str(python), str(SCRIPT), str(kubeconfig), NS, name]
    if wait is not None:
        argv += ["--wait", str(wait)]
    # the venv's process sees the emulator through the kubeconfig alone
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.timeout(1200)  # the first run makes the venv (pip install kserve)
def test_kserve_sdk_reads_the_inferenceservice_nbscale_deployed(
    kserve_python, cluster, kube, s3_url, tmp_path, nbscale_home
):
    config = nbscale_home / "config.toml"
    config.write_text(
        config.read_text()
        + 'deployment_mode = "Standard"\n'
        + 'service_account = "ml-serving"\n'
        + 'annotations = { owner = "ml-team" }\n'
        + 'labels = { team = "vision" }\n'
    )
    kubeconfig = tmp_path / "sdk-kubeconfig"
    kube.kubeconfig(kubeconfig, NS)
    fake = GatedKServe(cluster, kube, s3_url, tmp_path)
    try:
        done: list = []

        def run() -> None:
            try:
                done.append(
                    deploy(
                        mlp(),
                        name="digits",
                        replicas=(1, 3),
                        backend="kf",
                        options={"scale_metric": "cpu", "scale_target": 70},
                    )
                )
            except BaseException as exc:  # noqa: BLE001 - asserted below
                done.append(exc)

        deployer = threading.Thread(target=run, daemon=True)
        deployer.start()
        body = wait_for(
            lambda: next(
                (
                    i
                    for i in cluster.custom.list_namespaced_custom_object(
                        mf.KSERVE_GROUP, mf.KSERVE_VERSION, NS, "inferenceservices"
                    )["items"]
                    if i["metadata"]["name"] == "digits"
                ),
                None,
            ),
            timeout=120,
            what="nbscale's InferenceService",
        )
        model = body["spec"]["predictor"]["model"]

        # created, not reconciled: the SDK reads nbscale's fields and sees it not ready
        got = read_with_sdk(kserve_python, kubeconfig, "digits")
        assert got["kserve"] == KSERVE.split("==")[1]
        assert (got["group"], got["version"]) == (mf.KSERVE_GROUP, mf.KSERVE_VERSION)
        assert got["listed"] == ["digits"]
        assert got["type"] == "V1beta1InferenceService"
        assert (got["predictor_type"], got["model_type"]) == (
            "V1beta1PredictorSpec",
            "V1beta1ModelSpec",
        )
        assert got["metadata_type"] == "V1ObjectMeta"
        assert (got["api_version"], got["kind"]) == (
            f"{mf.KSERVE_GROUP}/{mf.KSERVE_VERSION}",
            "InferenceService",
        )
        assert (got["name"], got["namespace"]) == ("digits", NS)
        assert got["annotations"] == {
            "owner": "ml-team",
            "serving.kserve.io/deploymentMode": "Standard",
        }
        assert got["labels"]["team"] == "vision"
        assert got["labels"][mf.ENDPOINT_LABEL] == "digits"
        assert (got["model_format"], got["runtime"], got["protocol_version"]) == (
            "nbscale",
            "nbscale",
            "v2",
        )
        assert got["storage_uri"] == model["storageUri"]
        assert got["storage_uri"].startswith("s3://nb-bucket/work/")
        assert got["service_account_name"] == "ml-serving"
        assert (got["min_replicas"], got["max_replicas"], got["scale_metric"]) == (1, 3, "cpu")
        assert got["env"] == [
            ["NBSCALE_KEY_FILE", mf.KEY_FILE, None],
            ["NBSCALE_SERVING_TOKEN", None, mf.token_secret_name("digits")],
            # scaled on cpu: the runtime does not busy-poll (CPU that serves nothing)
            ["NBSCALE_BUSY_POLL_US", "0", None],
        ]
        assert got["mounts"] == [["nbscale-keys", mf.KEY_MOUNT, True]]
        (volume,) = got["volumes"]
        assert volume[0] == "nbscale-keys" and volume[2] == 0o400
        assert volume[1] == body["spec"]["predictor"]["volumes"][0]["secret"]["secretName"]
        assert got["requests"] == {"cpu": "1"}
        assert got["ready"] is False and got["ready_at_generation"] is False
        assert got["url"] is None and got["conditions"] == {}
        assert done == []  # nbscale still waits for KServe

        # KServe reconciles: the predictor runs, the status says Ready with its URLs
        fake.gate.set()
        deployer.join(300)
        (ep,) = done
        assert not isinstance(ep, BaseException), ep
        assert ep.status == "READY"
        got = read_with_sdk(kserve_python, kubeconfig, "digits", wait=30)
        assert got["ready"] is True and got["ready_at_generation"] is True
        assert got["conditions"] == {"PredictorReady": "True", "Ready": "True"}
        assert got["url"] == got["url_in_dict"] == fake.gateways["digits"].url == ep.url
        assert "kserve.models" in got["plain_deserialize_error"]  # kserve#2329, see kserve_sdk
        port = fake.ports["digits"][0][0]
        assert got["address_url"] == f"http://127.0.0.1:{port}"
        assert got["storage_uri"] == model["storageUri"]
    finally:
        fake.close()
    assert not fake.errors, fake.errors
