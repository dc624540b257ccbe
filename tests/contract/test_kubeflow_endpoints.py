"""KServe endpoints through the real ``kubernetes`` client against kmock's emulator.

The test plays KServe: when nbscale creates the InferenceService, it does what the
storage initializer and the predictor do, for real: downloads ``storageUri`` from
(moto's) S3 into a "/mnt/models" folder, lays out the mounted key Secret, and runs
the exact command of the shipped ``nbscale`` ClusterServingRuntime plus the
InferenceService's model args and env (the token from its Secret), in a mount namespace
where /mnt/models and the key Secret are mounted at their paths (where the machine allows
it; else the paths are pointed at the test's folders). The one change: the runtime binds
127.0.0.1 on a free port instead of 0.0.0.0:8080 (tests listen on loopback only). Then it writes the
InferenceService's status (Ready, url) and ``Endpoint.predict`` goes through it.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from nbscale.backends.kubeflow import manifests as mf
from nbscale.endpoints import deploy, endpoint
from nbscale.errors import BackendUnavailable, SpecError
from tests.support import REPO
from tests.support.emulators import container_env, free_port
from tests.support.kserve_gateway import Gateway
from tests.support.kube_emulator import KubeApi, KubeEmulator, condition
from tests.support.kube_schemas import validate
from tests.support.kubeflow import MOUNT_NS, NS, pod_mounts
from tests.support.serving import forward, mlp

RUNTIME = yaml.safe_load((REPO / "deploy/kserve/nbscale-runtime.yaml").read_text())

pytestmark = pytest.mark.slow


class FakeKServe:
    """Plays KServe's controller, storage initializer and the predictor pod."""

    def __init__(self, api: KubeApi, emulator: KubeEmulator, s3: str, tmp: Path):
        self.api = api
        self.kube = emulator
        self.pods: dict[str, list[str]] = {}
        self.ports: dict[str, list[tuple[int, int]]] = {}
        self.s3 = s3
        self.tmp = tmp
        self.procs: dict[str, list[subprocess.Popen]] = {}
        self.seen: dict[str, str] = {}  # name -> storageUri already served
        self.crash: set[str] = set()
        self.gateways: dict[str, Gateway] = {}
        self.sessions: set[str] | None = None  # Dex's sessions; None: no auth proxy
        self.bearers: set[str] = set()  # ID tokens the auth proxy takes as bearer tokens
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.wait(0.5):
            try:
                items = self.api.custom.list_namespaced_custom_object(
                    mf.KSERVE_GROUP, mf.KSERVE_VERSION, NS, "inferenceservices"
                )["items"]
                for isvc in items:
                    name = isvc["metadata"]["name"]
                    uri = isvc["spec"]["predictor"]["model"]["storageUri"]
                    if self.seen.get(name) != uri:
                        self.seen[name] = uri
                        self.reconcile(isvc)
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                self.errors.append(exc)

    def reconcile(self, isvc: dict) -> None:
        name = isvc["metadata"]["name"]
        if name in self.crash:
            self.api.create_pod(
                NS,
                f"{name}-predictor-0",
                {"serving.kserve.io/inferenceservice": name},
                {
                    "phase": "Running",
                    "containerStatuses": [
                        {
                            "name": "kserve-container",
                            "image": "x",
                            "imageID": "",
                            "ready": False,
                            "restartCount": 4,
                            "state": {
                                "waiting": {"reason": "CrashLoopBackOff", "message": "back-off 80s"}
                            },
                            "lastState": {"terminated": {"reason": "Error", "exitCode": 1}},
                        }
                    ],
                },
            )
            self.api.custom.patch_namespaced_custom_object(
                mf.KSERVE_GROUP,
                mf.KSERVE_VERSION,
                NS,
                "inferenceservices",
                name,
                {"status": {"conditions": [condition("Ready", "False", "RevisionMissing")]}},
            )
            return
        for proc in self.procs.pop(name, []):
            proc.terminate()
            proc.wait(20)
        for pod in self.pods.pop(name, []):
            self.kube.unexpose(NS, pod)
            self.api.core.delete_namespaced_pod(pod, NS)
        pred = isvc["spec"]["predictor"]
        model = pred["model"]
        root = self.tmp / f"isvc-{name}-{len(self.seen)}-{time.monotonic_ns()}"
        # the storage initializer: storageUri's objects into /mnt/models, with nothing but
        # what KServe derives from the predictor's ServiceAccount
        mnt = root / "mnt" / "models"
        storage_initializer(self.api, pred, model["storageUri"], mnt, root)
        # the key Secret volume
        (vol,) = pred["volumes"]
        secret = self.api.core.read_namespaced_secret(vol["secret"]["secretName"], NS)
        keyfile = root / "keys" / "keys.json"
        keyfile.parent.mkdir(parents=True)
        keyfile.write_bytes(base64.b64decode(secret.data["keys.json"]))
        os.chmod(keyfile, 0o400)
        env = {}
        for e in model["env"]:
            if "valueFrom" in e:
                ref = e["valueFrom"]["secretKeyRef"]
                s = self.api.core.read_namespaced_secret(ref["name"], NS)
                env[e["name"]] = base64.b64decode(s.data[ref["key"]]).decode()
            elif MOUNT_NS:  # mounted where the InferenceService says
                env[e["name"]] = e["value"]
            else:
                env[e["name"]] = e["value"].replace(mf.KEY_MOUNT, str(keyfile.parent))
        (container,) = RUNTIME["spec"]["containers"]
        ports = []
        # the Deployment's replicas: one predictor pod (a real runtime process) each
        for i in range(max(1, int(pred.get("minReplicas") or 0))):
            port, mport = free_port(), free_port()
            # tests listen on loopback only: the one change to the runtime's command
            local = {"0.0.0.0": "127.0.0.1", "8080": str(port), str(mf.METRICS_PORT): str(mport)}
            if not MOUNT_NS:
                local["/mnt/models"] = str(mnt)
            args = [local.get(a, a) for a in container["args"]]
            argv = [*container["command"], *args, *model.get("args", [])]
            if MOUNT_NS:  # the storage initializer's folder and the key Secret, as in the pod
                argv = pod_mounts(
                    {"/mnt/models": str(mnt), mf.KEY_MOUNT: str(keyfile.parent)}, argv
                )
            home = root / f"home-{i}"
            home.mkdir()
            penv = container_env(
                home, **env, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}"
            )
            log = open(root / f"predictor-{i}.log", "wb")  # noqa: SIM115
            proc = subprocess.Popen(argv, env=penv, stdout=log, stderr=subprocess.STDOUT)
            self.procs.setdefault(name, []).append(proc)
            self.argv = argv
            wait_ready(proc, port, root / f"predictor-{i}.log")
            # the pod as the kubelet reports it, its metrics port on the pod network
            pod = f"{name}-predictor-{i}"
            self.api.create_pod(
                NS,
                pod,
                {"serving.kserve.io/inferenceservice": name},
                {
                    "phase": "Running",
                    "podIP": "127.0.0.1",
                    "conditions": [condition("Ready")],
                    "containerStatuses": [
                        {
                            "name": "kserve-container",
                            "image": "x",
                            "imageID": "",
                            "ready": True,
                            "restartCount": 0,
                            "state": {"running": {"startedAt": "2026-12-01T00:00:00Z"}},
                        }
                    ],
                },
            )
            self.kube.expose(NS, pod, mf.METRICS_PORT, ("127.0.0.1", mport))
            self.pods.setdefault(name, []).append(pod)
            ports.append((port, mport))
        self.ports[name] = ports
        port = ports[0][0]
        # the external URL goes through the ingress gateway (and Dex, where configured);
        # the cluster-local address straight to the predictor
        old = self.gateways.pop(name, None)
        if old is not None:
            old.stop()
        gateway = self.gateways[name] = Gateway(("127.0.0.1", port), self.sessions, self.bearers)
        self.api.custom.patch_namespaced_custom_object(
            mf.KSERVE_GROUP,
            mf.KSERVE_VERSION,
            NS,
            "inferenceservices",
            name,
            {
                "status": {
                    "observedGeneration": isvc["metadata"].get("generation", 1),
                    "url": gateway.url,
                    "address": {"url": f"http://127.0.0.1:{port}"},
                    "conditions": [condition("PredictorReady"), condition("Ready")],
                    "components": {"predictor": {"url": f"http://127.0.0.1:{port}"}},
                }
            },
        )

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        for gateway in self.gateways.values():
            gateway.stop()
        for procs in self.procs.values():
            for proc in procs:
                proc.terminate()
                proc.wait(20)


S3_ANNOTATION = "serving.kserve.io/s3-"
DOWNLOAD = """
import os, sys, boto3
bucket, prefix, dest = sys.argv[1:4]
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
for obj in s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")["Contents"]:
    target = os.path.join(dest, obj["Key"][len(prefix) + 1 :])
    os.makedirs(os.path.dirname(target), exist_ok=True)
    s3.download_file(bucket, obj["Key"], target)
"""


def storage_initializer(api: KubeApi, predictor: dict, uri: str, dest: Path, root: Path) -> None:
    """KServe's S3 storage initializer: its environment is built from the predictor's
    ServiceAccount alone (the ``serving.kserve.io/s3-*`` annotations, the keys of the
    attached Secret), and it runs in a process that has nothing else."""
    account = predictor.get("serviceAccountName")
    assert account, (
        "the predictor names no ServiceAccount: the storage initializer has no S3 access"
    )
    sa = api.core.read_namespaced_service_account(account, NS)
    notes = sa.metadata.annotations or {}
    env = {"PATH": os.environ["PATH"], "HOME": str(root)}
    endpoint = notes.get(S3_ANNOTATION + "endpoint")
    assert endpoint, f"ServiceAccount {account} has no {S3_ANNOTATION}endpoint annotation"
    https = notes.get(S3_ANNOTATION + "usehttps", "1") == "1"
    env["AWS_ENDPOINT_URL"] = f"{'https' if https else 'http'}://{endpoint}"
    env["S3_USE_HTTPS"] = "1" if https else "0"
    env["AWS_REGION"] = notes.get(S3_ANNOTATION + "region", "us-east-1")
    found = False
    for ref in sa.secrets or []:
        try:
            secret = api.core.read_namespaced_secret(ref.name, NS)
        except ApiException as exc:  # KServe logs a Secret it cannot find and goes on
            if exc.status == 404:
                continue
            raise
        data = {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}
        if "AWS_ACCESS_KEY_ID" in data and "AWS_SECRET_ACCESS_KEY" in data:
            env["AWS_ACCESS_KEY_ID"] = data["AWS_ACCESS_KEY_ID"]
            env["AWS_SECRET_ACCESS_KEY"] = data["AWS_SECRET_ACCESS_KEY"]
            found = True
    assert found, f"no Secret with S3 keys is attached to ServiceAccount {account}"
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    subprocess.run(
        [sys.executable, "-c", DOWNLOAD, bucket, prefix.rstrip("/"), str(dest)],
        env=env,
        check=True,
        capture_output=True,
    )


def wait_ready(proc: subprocess.Popen, port: int, log: Path) -> None:
    """Readiness as KServe probes it: /v2/health/ready, no token."""
    import http.client

    deadline = time.monotonic() + 120
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/v2/health/ready")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(log.read_text())
        time.sleep(0.1)


@pytest.fixture
def kserve(cluster, kube, s3_url, tmp_path):
    fake = FakeKServe(cluster, kube, s3_url, tmp_path)
    yield fake
    fake.close()
    assert not fake.errors, fake.errors


def test_deploy_predict_canary_promote_and_undeploy(kserve, cluster, kube, tmp_path):
    api = cluster
    model = mlp()
    x = np.random.default_rng(0).random((4, 64), dtype=np.float32)

    # combinations KServe rejects are refused before anything is sent
    before = len(kube.writes())
    with pytest.raises(SpecError, match="MIN <= MAX|min 3 > max 1"):
        deploy(model, name="digits", replicas=(3, 1), backend="kf")
    with pytest.raises(SpecError, match="no previous version"):
        deploy(model, name="digits", backend="kf", options={"canary_traffic_percent": 10})
    with pytest.raises(SpecError, match="port"):
        deploy(model, name="digits", backend="kf", port=8085)
    with pytest.raises(SpecError, match="scale-metric"):
        deploy(model, name="digits", backend="kf", options={"scale_metric": "qps"})
    assert len(kube.writes()) == before

    # --dry-run: the exact InferenceService, nothing sent, nothing stored
    dry = deploy(
        model,
        name="digits",
        replicas=(0, 3),
        backend="kf",
        dry_run=True,
        options={"scale_metric": "concurrency", "scale_target": 4, "container_concurrency": 8},
    )
    docs = list(yaml.safe_load_all(dry.text()))
    # the Secrets only named; the storage initializer's ServiceAccount in full
    assert [d["kind"] for d in docs] == ["ServiceAccount", "InferenceService"]
    assert [n.split(" in namespace")[0].split(" would")[0] for n in dry.notes] == [
        "Secret nbscale-keys-emu",  # the user's own (the context's user: emu)
        "Secret nbscale-token-digits",
        "ServiceAccount nbscale-serving",
    ]
    account, isvc_doc = docs
    validate(isvc_doc)
    # the predictor mounts only its user's keys
    mounted = [
        v["secret"]["secretName"] for v in isvc_doc["spec"]["predictor"]["volumes"] if "secret" in v
    ]
    assert mounted == ["nbscale-keys-emu"]
    assert isvc_doc["spec"]["predictor"]["serviceAccountName"] == "nbscale-serving"
    assert isvc_doc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    assert account["secrets"] == [{"name": "minio-creds"}]
    port = s3_port(kserve.s3)
    assert account["metadata"]["annotations"] == {
        "serving.kserve.io/s3-endpoint": f"127.0.0.1:{port}",
        "serving.kserve.io/s3-usehttps": "0",
    }
    assert isvc_doc["spec"]["predictor"]["minReplicas"] == 0
    assert isvc_doc["spec"]["predictor"]["scaleMetric"] == "concurrency"
    assert len(kube.writes()) == before

    # a ServiceAccount of the user's keeps its own annotations and Secrets
    api.core.create_namespaced_service_account(
        NS,
        {
            "metadata": {"name": "nbscale-serving", "annotations": {"team": "ml"}},
            "secrets": [{"name": "registry-token"}],
        },
    )
    ep = deploy(model, name="digits", replicas=(1, 3), backend="kf", max_batch_size=16)
    assert ep.status == "READY" and ep.url == kserve.gateways["digits"].url  # status.url
    sa = api.core.read_namespaced_service_account("nbscale-serving", NS)
    assert [s.name for s in sa.secrets] == ["registry-token", "minio-creds"]
    assert sa.metadata.annotations["team"] == "ml"
    assert sa.metadata.annotations["serving.kserve.io/s3-usehttps"] == "0"
    isvc = api.custom.get_namespaced_custom_object(
        mf.KSERVE_GROUP, mf.KSERVE_VERSION, NS, "inferenceservices", "digits"
    )
    validate({k: v for k, v in isvc.items() if k != "status"})
    assert isvc["spec"]["predictor"]["model"]["args"][:2] == ["--max-batch-size", "16"]
    # V2 through the service URL, with the token from the endpoint's Secret
    np.testing.assert_allclose(ep.predict(x), forward(model, x), rtol=1e-5, atol=1e-6)
    assert ep.metadata()["inputs"][0]["shape"] == [-1, 64]
    m = endpoint("digits").metrics()
    assert m["requests"] >= 1 and m["errors"] == 0 and m["p50_ms"] is not None
    # the artifact went up once, content-addressed; deploying it again sends nothing new
    uri = isvc["spec"]["predictor"]["model"]["storageUri"]
    assert "/models/tree/" in uri

    # a new version as a 10 % canary, then promoted
    model2 = mlp(seed=1)
    ep2 = deploy(model2, name="digits", backend="kf", options={"canary_traffic_percent": 10})
    isvc = api.custom.get_namespaced_custom_object(
        mf.KSERVE_GROUP, mf.KSERVE_VERSION, NS, "inferenceservices", "digits"
    )
    assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert isvc["spec"]["predictor"]["model"]["storageUri"] != uri
    assert ep2.record.config["canary"] == 10
    ep2.promote()
    isvc = api.custom.get_namespaced_custom_object(
        mf.KSERVE_GROUP, mf.KSERVE_VERSION, NS, "inferenceservices", "digits"
    )
    # promoted: the field removed (the latest revision takes all the traffic), not left set
    assert "canaryTrafficPercent" not in isvc["spec"]["predictor"]
    with pytest.raises(Exception, match="no canary to roll back"):
        ep2.rollback()
    np.testing.assert_allclose(ep2.predict(x), forward(model2, x), rtol=1e-5, atol=1e-6)

    # a third version as a canary, rolled back: the previous artifact, and no
    # canaryTrafficPercent left at 0 (every later update's revision would get no traffic)
    uri2 = isvc["spec"]["predictor"]["model"]["storageUri"]
    ep3 = deploy(mlp(seed=2), name="digits", backend="kf", options={"canary_traffic_percent": 20})
    ep3.rollback()
    isvc = api.custom.get_namespaced_custom_object(
        mf.KSERVE_GROUP, mf.KSERVE_VERSION, NS, "inferenceservices", "digits"
    )
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == uri2
    assert "canaryTrafficPercent" not in isvc["spec"]["predictor"]
    validate({k: v for k, v in isvc.items() if k != "status"})

    ep2.scale(0, 5)
    isvc = api.custom.get_namespaced_custom_object(
        mf.KSERVE_GROUP, mf.KSERVE_VERSION, NS, "inferenceservices", "digits"
    )
    assert (isvc["spec"]["predictor"]["minReplicas"], isvc["spec"]["predictor"]["maxReplicas"]) == (
        0,
        5,
    )
    ep2.delete()
    assert (
        api.custom.list_namespaced_custom_object(
            mf.KSERVE_GROUP, mf.KSERVE_VERSION, NS, "inferenceservices"
        )["items"]
        == []
    )


def s3_port(url: str) -> int:
    import urllib.parse

    return urllib.parse.urlsplit(url).port


def test_in_a_notebook_pod_predict_uses_the_cluster_local_address(kserve, cluster, monkeypatch):
    """Kubeflow's gateway sits behind Dex: a pod of the cluster goes to status.address.url."""
    kserve.sessions = set()  # Dex: no session is valid for a pod
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")  # a pod (kubeconfig still set)
    model = mlp()
    x = np.random.default_rng(0).random((2, 64), dtype=np.float32)
    ep = deploy(model, name="digits", backend="kf")
    ((port, _),) = kserve.ports["digits"]
    assert ep.url == f"http://127.0.0.1:{port}"
    np.testing.assert_allclose(ep.predict(x), forward(model, x), rtol=1e-5, atol=1e-6)
    assert kserve.gateways["digits"].forwarded == 0
    ep.delete()


def test_from_outside_predict_goes_through_the_gateway_with_the_session_cookie(
    kserve, cluster, monkeypatch
):
    kserve.sessions = {"s3ss10n"}
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    model = mlp()
    x = np.random.default_rng(0).random((2, 64), dtype=np.float32)
    monkeypatch.setenv("NBSCALE_KFP_COOKIE", "authservice_session=s3ss10n")
    ep = deploy(model, name="digits", backend="kf")
    gateway = kserve.gateways["digits"]
    assert ep.url == gateway.url
    np.testing.assert_allclose(ep.predict(x), forward(model, x), rtol=1e-5, atol=1e-6)
    assert gateway.forwarded >= 1 and gateway.redirected == 0
    # without the session Dex redirects to its login page: the call fails, nothing served
    monkeypatch.delenv("NBSCALE_KFP_COOKIE")
    endpoint("digits").close()
    with pytest.raises(Exception):  # noqa: B017 - the client's error for a 302
        endpoint("digits").predict(x)
    assert gateway.redirected >= 1
    endpoint("digits").delete()


def test_from_outside_a_gateway_bearer_token_goes_with_the_endpoints_own_beside_it(
    kserve, cluster, monkeypatch
):
    """An auth proxy that takes a Dex ID token as ``Authorization: Bearer`` passes the
    header on: the endpoint's own token then travels in ``X-Nbscale-Token``."""
    kserve.sessions, kserve.bearers = set(), {"dex-id-token"}
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("NBSCALE_KFP_COOKIE", raising=False)
    monkeypatch.setenv("NBSCALE_KFP_TOKEN", "dex-id-token")
    model = mlp()
    x = np.random.default_rng(0).random((2, 64), dtype=np.float32)
    ep = deploy(model, name="digits", backend="kf")
    gateway = kserve.gateways["digits"]
    np.testing.assert_allclose(ep.predict(x), forward(model, x), rtol=1e-5, atol=1e-6)
    assert gateway.forwarded >= 1 and gateway.redirected == 0
    endpoint("digits").delete()


def test_a_crash_looping_predictor_is_failing_never_ready(kserve, cluster):
    kserve.crash.add("broken")
    with pytest.raises(BackendUnavailable, match="CrashLoopBackOff"):
        deploy(mlp(), name="broken", backend="kf")
    # nothing is left behind: the InferenceService and the record are gone
    assert (
        cluster.custom.list_namespaced_custom_object(
            mf.KSERVE_GROUP, mf.KSERVE_VERSION, NS, "inferenceservices"
        )["items"]
        == []
    )


def _v2(port: int, token: str, x: np.ndarray, name: str = "digits", tensor: str = "x") -> int:
    """One V2 infer request straight to a predictor pod (Knative's part); its status."""
    import http.client
    import json

    body = json.dumps(
        {
            "inputs": [
                {
                    "name": tensor,
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "data": x.ravel().tolist(),
                }
            ]
        }
    )
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(
            "POST",
            f"/v2/models/{name}/infer",
            body,
            {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def _load(port: int, token: str, n: int, tensor: str, rows: int = 4, threads: int = 4) -> list[int]:
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(port)
    xs = [rng.random((rows, 64), dtype=np.float32) for _ in range(n)]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda x: _v2(port, token, x, tensor=tensor), xs))


def _direct(ports: list[tuple[int, int]]) -> list:
    """Each pod's /metrics read straight from its metrics port (the ground truth)."""
    import urllib.request

    from nbscale import scrapes as mon

    out = []
    for _, mport in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10) as resp:
            out.append(mon.parse(resp.read().decode()))
    return out


def test_metrics_come_from_every_ready_pod_through_the_api_server_pod_proxy(kserve, cluster, kube):
    from nbscale import scrapes as mon
    from nbscale.backends.local.endpoints import token_for
    from nbscale.errors import NbscaleError

    ep = deploy(mlp(), name="digits", replicas=(2, 2), backend="kf")
    assert ep.status == "READY"
    ports = kserve.ports["digits"]
    assert len(ports) == 2
    token = token_for("digits")
    tensor = ep.metadata()["inputs"][0]["name"]
    # load on both pods; pod 1 also gets requests the model refuses (a 4xx each)
    codes0 = _load(ports[0][0], token, 40, tensor)
    codes1 = _load(ports[1][0], token, 25, tensor)
    bad = [_v2(ports[1][0], token, np.zeros((2, 63), np.float32), tensor=tensor) for _ in range(3)]
    assert set(codes0) == set(codes1) == {200} and set(bad) == {400}

    m = endpoint("digits").metrics()
    truth = mon.row(mon.combine(_direct(ports), 0.0, 2.0))
    assert m["pods"] == ["digits-predictor-0", "digits-predictor-1"]
    assert m["Invocations"] == 68 == truth["Invocations"]
    assert (m["Invocation4XXErrors"], m["Invocation5XXErrors"]) == (3, 0)
    assert m["Instances"] == 2 and m["InvocationsPerInstance"] == 34.0
    for name in mon.NAMES:
        assert name in m
    p = [m[f"ModelLatency_p{q}"] for q in mon.QUANTILES]
    assert None not in p and p[0] <= p[1] <= p[2]
    # the percentiles of the summed histograms of both pods, exactly
    assert p == [truth[f"ModelLatency_p{q}"] for q in mon.QUANTILES]
    assert m["OverheadLatency_p99"] is None  # Knative's queue-proxy's part, not the runtime's
    assert m["latency_unit"] == "microseconds" and m["p50_ms"] == p[0] / 1000.0
    # read through the API server's pod proxy, on the metrics port, of the ready pods only
    proxied = {(r["pod"], r["port"], r["path"]) for r in kube.proxy_requests}
    assert proxied == {
        ("digits-predictor-0", str(mf.METRICS_PORT), "/metrics"),
        ("digits-predictor-1", str(mf.METRICS_PORT), "/metrics"),
    }

    # a pod that is not ready (starting, or being replaced) is not read
    cluster.create_pod(
        NS,
        "digits-predictor-new",
        {"serving.kserve.io/inferenceservice": "digits"},
        {"phase": "Running", "conditions": [condition("Ready", "False")]},
    )
    before = _direct(ports)
    assert set(_load(ports[1][0], token, 12, tensor)) == {200}
    m2 = endpoint("digits").metrics()
    after = _direct(ports)
    # the next row covers what happened since the previous look, summed per pod
    assert m2["Invocations"] == 12 and m2["Invocation4XXErrors"] == 0
    assert m2["Period"] is not None and m2["Period"] > 0
    assert m2["requests"] == 80 and m2["errors"] == 3  # since the pods started
    interval = mon.row(
        mon.combine([mon.since(a, b) for a, b in zip(after, before, strict=True)], 0.0, 2.0)
    )
    assert [m2[f"ModelLatency_p{q}"] for q in mon.QUANTILES] == [
        interval[f"ModelLatency_p{q}"] for q in mon.QUANTILES
    ]
    assert len(m2["sagemaker_series"]) == 2
    assert "digits-predictor-new" not in {r["pod"] for r in kube.proxy_requests}

    # a ready pod whose metrics port does not answer: one message naming the pod and port
    kube.unexpose(NS, "digits-predictor-1")
    with pytest.raises(NbscaleError, match=r"/metrics of pod digits-predictor-1 \(port 8095\)"):
        endpoint("digits").metrics()
    ep.delete()
