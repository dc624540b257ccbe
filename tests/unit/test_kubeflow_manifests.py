"""Every object the kubeflow backend generates validates against the published CRDs.

jsonschema checks the OpenAPI schema of the TrainJob, InferenceService and
ClusterServingRuntime CRDs in ../shared/schemas, and cel-python evaluates the CEL
rules the API server would run on create (name format and length, numProcPerNode
>= 1, managedBy...). The checker itself is shown to refuse bad objects, so a pass
means something.
"""

from __future__ import annotations

import base64
import copy
import io
import itertools
import json
import os
import zipfile

import pytest
import yaml

from nbscale.backends.kubeflow import manifests as mf
from nbscale.backends.kubeflow.jobs import KubeflowBackend
from nbscale.backends.kubeflow.settings import settings
from nbscale.config import BackendConfig
from nbscale.errors import SpecError
from nbscale.runtime.launch import decode_spec
from nbscale.specs import Entry, JobSpec
from nbscale.store import get_store
from nbscale.store.jobs import PENDING, JobRecord
from tests.support import REPO
from tests.support.kube_schemas import CELViolation, validate

# an image of the backend's own: the stock table has none for every kernel's versions
# (tests/unit/test_image_table.py covers the choice from the table)
BASE = {
    "storage": "s3://nb-bucket/work",
    "wheelhouse": False,
    "namespace": "team-a",
    "image": "registry.example.com/ml/torch:kernel",
}


def kf_settings(**extra):
    return settings(BackendConfig("kf", "kubeflow", {**BASE, **extra}))


def staged(job_id="cell-abc123", configmap=False, wheel_url=None):
    return mf.Staged(
        job_id=job_id,
        spec_b64="eyJ9",
        outputs_uri=f"s3://nb-bucket/work/jobs/{job_id}/outputs",
        bundle=f"{mf.BUNDLE_MOUNT}/cell.zip" if configmap else "s3://nb-bucket/work/b/cell.zip",
        configmap=f"{mf.object_name(job_id)}-bundle" if configmap else None,
        wheelhouse_url=wheel_url,
    )


SETTING_CASES = [
    {},
    {"cpu": "4", "memory": "16Gi"},
    {
        "node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    },
    {
        "service_account": "trainer",
        "image_pull_secrets": ["regcred"],
        "labels": {"team": "ml"},
        "annotations": {"owner": "someone@example.com"},
    },
    {"runtime": "torch-custom", "runtime_kind": "TrainingRuntime", "storage_secret": "minio-creds"},
    {"endpoint_url": "http://127.0.0.1:9000", "pod_endpoint_url": "http://minio:9000"},
]
SPEC_CASES = list(
    itertools.product(
        [1, 2, 8],  # nodes
        [1, 4],  # procs per node
        [0, 1],  # gpus per proc
        [None, 3600],  # max runtime
        [False, True],  # bundle in a ConfigMap
    )
)


@pytest.mark.parametrize("extra", SETTING_CASES, ids=lambda e: ",".join(e) or "defaults")
def test_trainjobs_validate_over_a_table_of_options(extra):
    conf = kf_settings(**extra)
    checked_rules = set()
    for nodes, procs, gpus, runtime, configmap in SPEC_CASES:
        spec = JobSpec(
            entry=Entry("module", "train.main"),
            name="fit-digits",
            nodes=nodes,
            procs_per_node=procs,
            gpus_per_proc=gpus,
            max_runtime=runtime,
            env={"LR": "0.1"},
            tags={"project": "digits"},
            # a 4-GPU node type: its processes default to its GPUs (1 -> 4)
            instance_type="g5.12xlarge" if gpus else None,
            image="ghcr.io/acme/train:1" if nodes == 8 else None,
        ).to_dict()
        body = mf.trainjob("fit-digits-0a1b2c", spec, conf, staged(configmap=configmap), "team-a")
        checked_rules |= {rule for _, rule, _ in validate(body)}
        trainer = body["spec"]["trainer"]
        assert trainer["numNodes"] == nodes
        assert trainer["numProcPerNode"] == (4 if gpus else procs)
        res = trainer["resourcesPerNode"]
        if gpus:
            assert res["limits"]["nvidia.com/gpu"] == "4"
            pod = body["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"][
                "replicatedJobs"
            ][0]["template"]["spec"]["template"]["spec"]
            assert pod["nodeSelector"]["node.kubernetes.io/instance-type"] == "g5.12xlarge"
        else:
            assert "nvidia.com/gpu" not in res.get("limits", {})
        assert body["spec"].get("activeDeadlineSeconds") == runtime
        assert trainer["image"] == ("ghcr.io/acme/train:1" if nodes == 8 else conf.image)
        if extra.get("cpu"):
            assert res["requests"]["cpu"] == "4" and res["limits"]["memory"] == "16Gi"
    # the create-time rules that apply to a TrainJob were all evaluated
    assert "self >= 1" in checked_rules
    assert any("metadata.name.matches" in r for r in checked_rules)


def test_the_pod_gets_the_key_secret_by_name_mounted_read_only_and_nothing_else():
    conf = kf_settings(storage_secret="minio-creds", key_secret="team-keys")
    body = mf.trainjob("j-1", JobSpec(entry=Entry("module", "m")).to_dict(), conf, staged(), "ns")
    text = json.dumps(body)
    patch = body["spec"]["runtimePatches"][0]
    assert patch["manager"] == mf.MANAGER
    pod = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"][
        "template"
    ]["spec"]
    (vol,) = [v for v in pod["volumes"] if v["name"] == "nbscale-keys"]
    assert vol["secret"]["secretName"] == "team-keys" and vol["secret"]["defaultMode"] == 0o400
    (container,) = pod["containers"]
    assert container["name"] == "node"
    assert {"name": "nbscale-keys", "mountPath": mf.KEY_MOUNT, "readOnly": True} in container[
        "volumeMounts"
    ]
    env = {e["name"]: e for e in body["spec"]["trainer"]["env"]}
    assert env["NBSCALE_KEY_FILE"]["value"] == f"{mf.KEY_MOUNT}/keys.json"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "minio-creds",
        "key": "AWS_SECRET_ACCESS_KEY",
    }
    assert "value" not in env["AWS_SECRET_ACCESS_KEY"]
    assert "podTemplateOverrides" not in text  # v2.2 replaced it with runtimePatches


def test_the_checker_refuses_what_the_api_server_refuses():
    body = mf.trainjob(
        "j-1", JobSpec(entry=Entry("module", "m")).to_dict(), kf_settings(), staged(), "ns"
    )
    validate(body)
    bad = copy.deepcopy(body)
    bad["spec"]["trainer"]["numProcPerNode"] = 0
    with pytest.raises(CELViolation, match="self >= 1"):
        validate(bad)
    bad = copy.deepcopy(body)
    bad["metadata"]["name"] = "9-starts-with-a-digit"
    with pytest.raises(CELViolation, match="matches"):
        validate(bad)
    bad = copy.deepcopy(body)
    bad["metadata"]["name"] = "a" * 64
    with pytest.raises(CELViolation, match="size"):
        validate(bad)
    bad = copy.deepcopy(body)
    bad["spec"]["managedBy"] = "someone-else"
    with pytest.raises(CELViolation, match="managedBy|self in"):
        validate(bad)
    bad = copy.deepcopy(body)
    del bad["spec"]["runtimeRef"]
    with pytest.raises(Exception, match="runtimeRef"):
        validate(bad)
    bad = copy.deepcopy(body)
    bad["spec"]["trainer"]["resourcesPerNode"]["requests"]["cpu"] = "two"
    with pytest.raises(Exception, match="does not match"):
        validate(bad)


def test_object_names_are_rfc1035_labels_for_every_job_id():
    for job_id in ("7up-abc123", "a" * 40 + "-abcdef", "x-1", "0-0"):
        name = mf.object_name(job_id)
        body = mf.trainjob(
            job_id,
            JobSpec(entry=Entry("module", "m")).to_dict(),
            kf_settings(),
            staged(job_id),
            "n",
        )
        validate(body)
        assert body["metadata"]["name"] == name and len(name) <= 63


def test_bad_settings_and_labels_are_one_message_each():
    with pytest.raises(SpecError, match="cpu.*not a Kubernetes quantity"):
        kf_settings(cpu="lots")
    with pytest.raises(SpecError, match="runtim.*is not a setting"):
        kf_settings(runtim="torch-distributed")
    with pytest.raises(SpecError, match="storage.*s3://"):
        kf_settings(storage="/tmp/x")
    with pytest.raises(SpecError, match="tolerations"):
        kf_settings(tolerations=[{"key": "a", "bogus": 1}])
    with pytest.raises(SpecError, match="label value"):
        mf.trainjob(
            "j-1",
            JobSpec(entry=Entry("module", "m"), tags={"why": "has spaces in it"}).to_dict(),
            kf_settings(),
            staged(),
            "n",
        )


def _record(tmp_path, bundle_bytes: int) -> JobRecord:
    bundle = tmp_path / "cell.zip"
    with zipfile.ZipFile(bundle, "w") as zf:  # stands in for a signed bundle: never opened
        zf.writestr("inputs/000-x.pkl", os.urandom(bundle_bytes))
    spec = JobSpec(
        entry=Entry("bundle", str(bundle)), name="cell", nodes=2, procs_per_node=2, max_runtime=600
    )
    return JobRecord(
        id="cell-00aa11",
        name="cell",
        backend="kf",
        backend_type="kubeflow",
        status=PENDING,
        spec=spec.to_dict(),
        created=0.0,
        info={"job_dir": str(tmp_path / "job")},
    )


@pytest.mark.parametrize("size", [10_000, 950 * 1024])
def test_dry_run_prints_the_exact_objects_and_sends_nothing(tmp_path, monkeypatch, size):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))  # no cluster at all
    monkeypatch.setenv("NBSCALE_USER", "alice")  # whose keys, without a kube context
    backend = KubeflowBackend(BackendConfig("kf", "kubeflow", BASE), get_store())
    record = _record(tmp_path, size)
    dry = backend.dry_run(record)
    docs = list(yaml.safe_load_all(dry.text()))
    kinds = [d["kind"] for d in docs]
    for doc in docs:
        validate(doc)
    # the key Secret is named on stderr, never printed: `| kubectl apply -f -` must not
    # create a Secret with a placeholder value
    assert "Secret" not in kinds
    folder, secret = dry.notes  # what travels, and the Secret by name
    assert folder.startswith(f"the folder {tmp_path} would travel: 1 file, ")
    assert secret == (
        "Secret nbscale-keys-alice in namespace team-a would be created or updated (the signing keys;"
        " keys: keys.json; its data is never shown)"
    )
    trainjob = docs[0]
    pod = trainjob["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"][
        "replicatedJobs"
    ][0]["template"]["spec"]["template"]["spec"]
    assert [v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v] == [
        "nbscale-keys-alice"
    ]
    args = trainjob["spec"]["trainer"]["args"]
    spec = decode_spec(args[args.index("--spec") + 1])
    assert spec["entry"] == {"kind": "bundle", "target": "cell.zip", "parameters": {}}
    assert str(tmp_path) not in json.dumps(spec)  # no local path travels
    bundle_arg = args[args.index("--bundle") + 1]
    if size < 900 * 1024:
        assert kinds == ["TrainJob", "ConfigMap"]
        assert bundle_arg == f"{mf.BUNDLE_MOUNT}/cell.zip"
        cm = docs[1]
        sent = io.BytesIO(base64.b64decode(cm["binaryData"]["cell.zip"]))
        with zipfile.ZipFile(sent) as zf, zipfile.ZipFile(tmp_path / "cell.zip") as orig:
            assert zf.read("inputs/000-x.pkl") == orig.read("inputs/000-x.pkl")
    else:
        assert kinds == ["TrainJob"]
        assert bundle_arg.startswith("s3://nb-bucket/work/bundles/sha256/")
    assert trainjob["spec"]["activeDeadlineSeconds"] == 600
    assert trainjob["metadata"]["namespace"] == "team-a"
    assert not (tmp_path / "job").exists()  # nothing written


def test_inference_services_validate_over_a_table_of_options():
    cases = itertools.product(
        [(0, 1), (1, 1), (2, 10)],
        [None, "concurrency", "rps", "cpu"],
        [0, 1],
        [None, 10],
        [{}, {"serving_image": "ghcr.io/acme/serve:1"}],
    )
    for (lo, hi), metric, gpus, canary, extra in cases:
        opts = mf.ServingOptions(
            min_replicas=lo,
            max_replicas=hi,
            scale_metric=metric,
            scale_target=5 if metric else None,
            container_concurrency=8,
            timeout_s=30,
            gpus=gpus,
            memory="2Gi",
            canary_traffic_percent=canary,
        )
        body = mf.inference_service(
            "digits",
            "s3://nb-bucket/work/models/sha256/ab/model.tar.gz",
            kf_settings(**extra),
            opts,
            "team-a",
            {"max_batch_size": 16},
        )
        validate(body)
        pred = body["spec"]["predictor"]
        assert (pred["minReplicas"], pred["maxReplicas"]) == (lo, hi)
        assert pred.get("canaryTrafficPercent") == canary
        model = pred["model"]
        assert model["modelFormat"] == {"name": "nbscale"} and model["protocolVersion"] == "v2"
        assert ("image" in model) == bool(extra) and ("runtime" in model) == (not extra)
        if gpus:
            assert model["resources"]["limits"]["nvidia.com/gpu"] == "1"
        env = {e["name"]: e for e in model["env"]}
        assert "value" not in env["NBSCALE_SERVING_TOKEN"]  # from a Secret, by name
        # scaled on CPU, the runtime does not busy-poll (it would add CPU that serves nothing)
        polls = env.get("NBSCALE_BUSY_POLL_US", {}).get("value")
        assert polls == ("0" if metric == "cpu" else None)
    validate(mf.token_secret("digits", "t0k3n", "team-a"))


def test_the_shipped_serving_runtime_validates_and_serves_the_nbscale_format():
    doc = yaml.safe_load((REPO / "deploy/kserve/nbscale-runtime.yaml").read_text())
    validate(doc)
    assert doc["spec"]["supportedModelFormats"][0]["name"] == "nbscale"
    (container,) = doc["spec"]["containers"]
    assert container["command"][:3] == ["python", "-m", "nbscale.serving"]
    # the token-free metrics port Endpoint.metrics() reads through the pod proxy, scraped too
    args = container["args"]
    assert args[args.index("--metrics-port") + 1] == str(mf.METRICS_PORT)
    assert doc["spec"]["annotations"]["prometheus.kserve.io/port"] == str(mf.METRICS_PORT)


def test_the_local_endpoint_backend_refuses_what_it_does_not_have(nbscale_home):
    from nbscale.endpoints import deploy
    from nbscale.store.endpoints import list_endpoints
    from tests.support.serving import mlp

    with pytest.raises(SpecError, match="canary: the local endpoint backend does not use it"):
        deploy(mlp(), name="digits", options={"canary_traffic_percent": 10})
    with pytest.raises(SpecError, match="--dry-run: the local endpoint backend sends no manifest"):
        deploy(mlp(), name="digits", dry_run=True)
    assert list_endpoints(get_store()) == []


def test_pod_logs_are_copied_in_bounded_chunks_and_never_twice(tmp_path):
    from nbscale.backends.kubeflow.podlogs import (
        CHUNK,
        MAX_LINE,
        PodCursor,
        RankWriter,
        copy_pod_log,
    )
    from nbscale.runtime.jobdir import JobDir

    class Stream:  # an urllib3 response as the kubernetes client gives it
        def __init__(self, data: bytes):
            self.data = data
            self.biggest = 0

        def stream(self, amt, decode_content=True):
            for i in range(0, len(self.data), amt):
                self.biggest = max(self.biggest, len(self.data[i : i + amt]))
                yield self.data[i : i + amt]

    ts = "2026-12-01T07:00:00.000000001Z"
    huge = "x" * (MAX_LINE + 5000)
    lines = [
        f"{ts} [rank 0] a",
        f"{ts} [rank 0] a",
        f"{ts} launcher says hi",
        f"{ts} [rank 1] {huge}",
    ]
    jobdir = JobDir(tmp_path / "job").make()
    cursor = PodCursor()
    first = Stream(("\n".join(lines) + "\n").encode())
    writer = RankWriter(jobdir, node_rank=0, first_rank=0)
    copy_pod_log(first, cursor, writer)
    writer.close()
    assert first.biggest <= CHUNK
    assert jobdir.log(0).read_text() == "a\na\n[node 0] launcher says hi\n"
    rank1 = jobdir.log(1).read_text().splitlines()
    assert len(rank1) == 1 and len(rank1[0]) <= MAX_LINE  # cut once, its rest dropped
    # the same lines again (sinceSeconds reaches back a second) and one new line
    later = "2026-12-01T07:00:01.000000000Z"
    again = Stream(("\n".join([*lines, f"{later} [rank 0] b"]) + "\n").encode())
    writer = RankWriter(jobdir, node_rank=0, first_rank=0)
    copy_pod_log(again, cursor, writer)
    writer.close()
    assert jobdir.log(0).read_text() == "a\na\n[node 0] launcher says hi\nb\n"
