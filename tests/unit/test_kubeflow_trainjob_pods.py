"""The node pods a TrainJob of nbscale's gets, built as the Trainer builds them: the runtime of
each supported Trainer release merged with the TrainJob (tests/support/kubeflow.py,
``trainer_pods``), never nbscale's own patch read back. Istio, the backend's annotations,
fail-fast restarts, one key Secret per user, and the previous run's log of a restarted
container."""

from __future__ import annotations

import base64
import json
from types import SimpleNamespace

import kubernetes
import pytest
import yaml

from nbscale.backends.kubeflow import manifests as mf
from nbscale.backends.kubeflow.cluster import Cluster, KubeError
from nbscale.backends.kubeflow.jobs import KubeflowBackend, ensure_key_secret
from nbscale.backends.kubeflow.settings import settings
from nbscale.config import BackendConfig
from nbscale.specs import Entry, JobSpec
from tests.support.kube_schemas import TRAINER_RELEASES, validate
from tests.support.kubeflow import (
    NBSCALE_RUNTIME,
    cluster_runtime,
    jobset_of,
    node_job,
    trainer_pods,
)

BASE = {
    "storage": "s3://nb-bucket/work",
    "wheelhouse": False,
    "namespace": "team-a",
    "image": "registry.example.com/ml/torch:kernel",
}


def kf_settings(**extra):
    return settings(BackendConfig("kf", "kubeflow", {**BASE, **extra}))


def trainjob(conf, key_secret=None, nodes=2, job_id="cell-abc123"):
    staged = mf.Staged(
        job_id=job_id,
        spec_b64="eyJ9",
        outputs_uri=f"s3://nb-bucket/work/jobs/{job_id}/outputs",
        bundle="s3://nb-bucket/work/b/cell.zip",
        key_secret=key_secret,
    )
    spec = JobSpec(entry=Entry("module", "m"), nodes=nodes).to_dict()
    return mf.trainjob(job_id, spec, conf, staged, "team-a")


@pytest.mark.parametrize("release", TRAINER_RELEASES)
def test_the_pods_get_the_backends_annotations_and_no_istio_sidecar(release):
    conf = kf_settings(annotations={"owner": "ml-team"})
    body = trainjob(conf)
    validate(body)  # every supported release's CRD
    pods = trainer_pods(body, release)
    assert len(pods) == 2
    for node, pod in enumerate(pods):
        notes = pod["metadata"]["annotations"]
        assert notes[mf.ISTIO_INJECT] == "false"
        assert notes["owner"] == "ml-team"
        assert pod["metadata"]["labels"][mf.JOB_LABEL] == "cell-abc123"
        # the trainer's fields on the runtime's container
        (container,) = pod["spec"]["containers"]
        assert container["image"] == conf.image and container["command"] == mf.COMMAND
        env = {e["name"]: e for e in container["env"]}
        assert env["PET_NNODES"]["value"] == "2" and "NBSCALE_KEY_FILE" in env
        assert pod["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] == str(
            node
        )
    # the TrainJob itself keeps them too
    assert body["metadata"]["annotations"]["owner"] == "ml-team"
    # istio_sidecar = true: the profile's injection decides
    kept = trainer_pods(trainjob(kf_settings(istio_sidecar=True)), release)
    assert mf.ISTIO_INJECT not in (kept[0]["metadata"].get("annotations") or {})


def test_istio_sidecar_is_a_strict_boolean():
    from nbscale.errors import SpecError

    with pytest.raises(SpecError, match="istio_sidecar"):
        kf_settings(istio_sidecar="yes")


@pytest.mark.parametrize("release", TRAINER_RELEASES)
def test_the_stock_runtime_reruns_a_failed_node_and_nbscales_runtime_does_not(release):
    stock = jobset_of(trainjob(kf_settings()), cluster_runtime("torch-distributed", release))
    job = node_job(stock)
    # what JobSet and the Job controller default to: a raising cell runs 7 times
    assert job["template"]["spec"]["restartPolicy"] == "OnFailure"
    assert job["backoffLimit"] == 6
    runtime = yaml.safe_load(NBSCALE_RUNTIME.read_text())
    validate(runtime, release)  # the shipped ClusterTrainingRuntime, against that release
    body = trainjob(kf_settings(runtime="nbscale-torch-distributed"))
    assert body["spec"]["runtimeRef"]["name"] == "nbscale-torch-distributed"
    ours = node_job(jobset_of(body, runtime))
    assert ours["template"]["spec"]["restartPolicy"] == "Never"
    assert ours["backoffLimit"] == 0
    # a pod the cluster took away (spot) is replaced, not counted
    (rule,) = ours["podFailurePolicy"]["rules"]
    assert rule["action"] == "Ignore"
    assert rule["onPodConditions"][0]["type"] == "DisruptionTarget"


def test_each_user_has_a_key_secret_of_their_own_and_the_pods_mount_only_it():
    conf = kf_settings()
    names = {
        u: mf.key_secret_name(conf.key_secret, u)
        for u in ("alice", "bob", "alice@example.com", "Alice", "alice.example.com")
    }
    assert names["alice"] == "nbscale-keys-alice" and names["bob"] == "nbscale-keys-bob"
    assert len(set(names.values())) == len(names)  # two users never share one
    for name in names.values():
        validate(mf.key_secret(name, "{}", "team-a", "x"))  # a valid Secret name
        assert len(name) <= 253
    for user in ("alice", "bob"):
        body = trainjob(conf, key_secret=names[user])
        validate(body)
        for pod in trainer_pods(body):
            secrets = [v["secret"]["secretName"] for v in pod["spec"]["volumes"] if "secret" in v]
            assert secrets == [names[user]]


class FakeCore:
    """The API server and kubelet for one restarted node pod: ``read_namespaced_pod_log``
    answers the current run, or with ``previous=True`` the run before the restart."""

    def __init__(self, runs, restarts, waiting):
        self.runs = runs  # each container run's lines, oldest first
        self.restarts = restarts
        self.waiting = waiting
        self.reads = []

    def list_namespaced_pod(self, namespace, label_selector=None):
        state = (
            kubernetes.client.V1ContainerState(
                waiting=kubernetes.client.V1ContainerStateWaiting(reason="CrashLoopBackOff")
            )
            if self.waiting
            else kubernetes.client.V1ContainerState(
                running=kubernetes.client.V1ContainerStateRunning()
            )
        )
        pod = kubernetes.client.V1Pod(
            metadata=kubernetes.client.V1ObjectMeta(
                name="j-node-0-0",
                labels={mf.JOB_LABEL: "j", "batch.kubernetes.io/job-completion-index": "0"},
            ),
            status=kubernetes.client.V1PodStatus(
                phase="Running",
                container_statuses=[
                    kubernetes.client.V1ContainerStatus(
                        name="node",
                        image="x",
                        image_id="",
                        ready=not self.waiting,
                        restart_count=self.restarts,
                        state=state,
                    )
                ],
            ),
        )
        return SimpleNamespace(items=[pod])

    def read_namespaced_pod_log(self, name, namespace, previous=False, container=None, **kw):
        self.reads.append({"previous": previous, "container": container})
        if previous:
            if self.restarts == 0:
                raise kubernetes.client.exceptions.ApiException(status=400, reason="Bad Request")
            lines = self.runs[-2]
        elif self.waiting:
            raise kubernetes.client.exceptions.ApiException(status=400, reason="Bad Request")
        else:
            lines = self.runs[-1]
        data = "".join(f"{ts} {text}\n" for ts, text in lines).encode()
        return SimpleNamespace(
            stream=lambda amt, decode_content=True: iter([data]), release_conn=lambda: None
        )


def backend_on(core, tmp_path, monkeypatch):
    monkeypatch.setenv("NBSCALE_HOME", str(tmp_path / "home"))
    from nbscale.store import get_store

    backend = KubeflowBackend(BackendConfig("kf", "kubeflow", dict(BASE)), get_store())
    cluster = Cluster(None, "emu", "team-a", "http://127.0.0.1", "alice")
    cluster.core = lambda: core  # type: ignore[method-assign]
    backend._cluster = cluster
    return backend


def test_a_restarted_container_has_its_first_runs_traceback_read_with_previous(
    tmp_path, monkeypatch
):
    from nbscale.runtime.jobdir import JobDir

    first = [
        ("2026-12-01T07:00:00.000000001Z", "[rank 0] step 1"),
        ("2026-12-01T07:00:01.000000001Z", "[rank 0] Traceback (most recent call last):"),
        ("2026-12-01T07:00:01.000000002Z", "[rank 0] ValueError: boom on the first run"),
    ]
    second = [("2026-12-01T07:00:30.000000001Z", "[rank 0] step 1")]
    core = FakeCore([first[:1]], restarts=0, waiting=False)
    backend = backend_on(core, tmp_path, monkeypatch)
    record = SimpleNamespace(
        id="j",
        native_id="j",
        spec={"procs_per_node": 1},
        info={"namespace": "team-a"},
    )
    jobdir = JobDir(tmp_path / "job")
    backend.fetch_logs(record, jobdir)  # the first run, while it runs
    assert jobdir.log(0).read_text() == "step 1\n"
    # it raised; the kubelet waits to restart it: only the previous run has a log now
    core.runs, core.restarts, core.waiting = [first, []], 1, True
    backend.fetch_logs(record, jobdir)
    assert core.reads[-1] == {"previous": True, "container": "node"}
    assert jobdir.log(0).read_text() == (
        "step 1\nTraceback (most recent call last):\nValueError: boom on the first run\n"
    )
    # running again: the new run's lines follow, the first run's are not read twice
    core.runs, core.waiting = [first, second], False
    backend.fetch_logs(record, jobdir)
    assert [r["previous"] for r in core.reads] == [False, True, False]
    assert jobdir.log(0).read_text().endswith("boom on the first run\nstep 1\n")


def test_a_key_secret_that_cannot_be_read_names_its_namespace():
    class Refusing:
        def read_namespaced_secret(self, name, namespace):
            raise kubernetes.client.exceptions.ApiException(status=403, reason="Forbidden")

    cluster = Cluster(None, "kind-kubeflow", "kubeflow-user-alice", "http://x", "alice")
    cluster.core = lambda: Refusing()  # type: ignore[method-assign]
    with pytest.raises(KubeError) as err:
        ensure_key_secret(cluster, kf_settings(), user="alice")
    text = str(err.value)
    assert "Secret nbscale-keys-alice in namespace kubeflow-user-alice" in text
    assert "403" in text and "pods of this job run in namespace kubeflow-user-alice" in text


def test_the_key_secret_says_whose_it_is():
    body = mf.key_secret("nbscale-keys-alice", json.dumps({"bundle": "00"}), "ns", "alice")
    assert body["metadata"]["annotations"] == {mf.USER_ANNOTATION: "alice"}
    assert json.loads(base64.b64decode(body["data"]["keys.json"])) == {"bundle": "00"}
