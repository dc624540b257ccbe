"""The kubeflow job backend through the real ``kubernetes`` client, against kmock's
Kubernetes emulator on 127.0.0.1 (and moto's S3 for the bundle and the outputs).

The test plays the controllers: it reads the TrainJob nbscale created, makes the
node pods, moves their state, serves their logs, and writes the TrainJob's status
back. (The node container run as the TrainJob says: tests/contract/test_kubeflow_jobs.py.)
"""

from __future__ import annotations

import base64
import io
import json
import time
import zipfile
from pathlib import Path

import pytest

from nbscale import keys
from nbscale.backends.kubeflow import manifests as mf
from nbscale.errors import BackendUnavailable, SpecError
from nbscale.jobs import job as job_handle
from nbscale.specs import Entry, JobSpec
from nbscale.store import get_store
from nbscale.store.jobs import events
from tests.support.emulators import (
    PLANTED_SECRET,
    free_port,
)
from tests.support.kube_emulator import condition
from tests.support.kube_schemas import validate
from tests.support.kubeflow import (
    NS,
    _cell,
    _make_pods,
    _pod_name,
    _trainjob,
)
from tests.support.notebooks import write_notebook


def same_entries(data: bytes, path: Path) -> bool:
    """The same bundle: every entry's bytes equal (the copy sent has epoch timestamps)."""
    with zipfile.ZipFile(io.BytesIO(data)) as a, zipfile.ZipFile(path) as b:
        assert {i.date_time for i in a.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        return a.namelist() == b.namelist() and all(a.read(n) == b.read(n) for n in a.namelist())


def test_submit_status_events_logs_and_cancel(cluster, kube):
    api = cluster
    prepared = _cell()
    job = prepared.submit()
    rec = job.record
    assert rec.backend_type == "kubeflow" and rec.native_id == mf.object_name(job.id)
    body = _trainjob(api, job)
    validate(body)  # what reached the API server is a valid TrainJob
    trainer = body["spec"]["trainer"]
    assert trainer["numNodes"] == 2 and trainer["numProcPerNode"] == 1
    assert trainer["command"] == mf.COMMAND
    # the key travels as the user's own Secret (the kube context's user: emu); the TrainJob
    # names it, holds no key bytes
    secret = api.core.read_namespaced_secret("nbscale-keys-emu", NS)
    assert secret.metadata.annotations[mf.USER_ANNOTATION] == "emu"
    doc = json.loads(base64.b64decode(secret.data["keys.json"]))
    assert doc["bundle"] == keys.load("bundle").hex()
    assert keys.load("bundle").hex() not in json.dumps(body)
    assert PLANTED_SECRET not in json.dumps(body)
    # a small bundle travels in a ConfigMap owned by the TrainJob
    cm = api.core.read_namespaced_config_map(f"{rec.native_id}-bundle", NS)
    assert same_entries(base64.b64decode(cm.binary_data["cell.zip"]), prepared.bundle_path)
    assert cm.metadata.owner_references[0].name == rec.native_id

    # nothing scheduled yet: the job is queued
    assert job.refresh().info["phase"] == "queued"
    # the scheduler cannot place node 1, node 0 cannot pull its image: both said, at once
    _make_pods(api, job, 2, {"phase": "Pending"})
    api.patch_pod_status(
        NS,
        _pod_name(job, 1),
        {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                }
            ],
        },
    )
    api.patch_pod_status(
        NS,
        _pod_name(job, 0),
        {
            "phase": "Pending",
            "containerStatuses": [
                {
                    "name": "node",
                    "image": "x",
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "state": {
                        "waiting": {
                            "reason": "ImagePullBackOff",
                            "message": 'Back-off pulling image "pytorch/nope"',
                        }
                    },
                }
            ],
        },
    )
    # and the scheduler's Warning event for node 1 (it stays in the API after the pod runs)
    api.core.create_namespaced_event(
        NS,
        {
            "metadata": {"name": f"{_pod_name(job, 1)}.1", "namespace": NS},
            "type": "Warning",
            "reason": "FailedScheduling",
            "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
            "involvedObject": {"kind": "Pod", "name": _pod_name(job, 1), "namespace": NS},
        },
    )
    time.sleep(1.05)
    rec = job.refresh()
    assert rec.status == "PENDING"
    assert "ImagePullBackOff" in rec.info["phase"] and "pytorch/nope" in rec.info["phase"]
    reported = [e["data"] for e in events(get_store(), job.id) if e["type"] == "pod"]
    reasons = {(e["node"], e["reason"]) for e in reported}
    assert reasons == {(0, "ImagePullBackOff"), (1, "Unschedulable"), (1, "FailedScheduling")}
    assert any("Insufficient nvidia.com/gpu" in e["message"] for e in reported)

    # the pods run: the job runs, and every node's log comes home split by rank
    for node in range(2):
        api.patch_pod_status(
            NS,
            _pod_name(job, node),
            {"phase": "Running", "containerStatuses": [], "conditions": []},
        )
    kube.set_log(NS, _pod_name(job, 0), ["nbscale: job node 0/2", "[rank 0] epoch 1 loss 0.5"])
    kube.set_log(NS, _pod_name(job, 1), ["[rank 1] epoch 1 loss 0.6"])
    time.sleep(1.05)
    assert job.refresh().status == "RUNNING"
    time.sleep(1.05)
    assert job.ranks() == [0, 1]
    assert job.logs(0) == "[node 0] nbscale: job node 0/2\nepoch 1 loss 0.5\n"
    assert job.logs(1) == "epoch 1 loss 0.6\n"
    kube.set_log(NS, _pod_name(job, 1), ["[rank 1] epoch 2 loss 0.4"])
    time.sleep(1.05)
    job.ranks()
    assert job.logs(1) == "epoch 1 loss 0.6\nepoch 2 loss 0.4\n"  # no line twice
    log_reqs = [r for r in kube.log_requests if r["pod"] == _pod_name(job, 1)]
    assert log_reqs[-1].get("sinceSeconds") and log_reqs[-1]["timestamps"].lower() == "true"
    selectors = [
        r.params.get("labelSelector")
        for r in kube.requests()
        if r.resource and "pods" in str(r.resource)
    ]
    assert f"{mf.JOB_LABEL}={job.id}" in selectors
    # events are listed per object of the job, never every Warning of the namespace
    event_selectors = {
        r.params.get("fieldSelector")
        for r in kube.requests()
        if r.resource and "events" in str(r.resource) and str(r.method).upper().endswith("GET")
    }
    assert event_selectors and all(
        sel.startswith("involvedObject.name=") for sel in event_selectors
    ), event_selectors
    assert f"involvedObject.name={rec.native_id},type=Warning" in event_selectors
    assert f"involvedObject.name={_pod_name(job, 1)},type=Warning" in event_selectors

    # cancel deletes the TrainJob and the ConfigMap
    rec = job.cancel()
    assert rec.status == "CANCELLED"
    assert [t for t in api.trainjobs(NS) if t["metadata"]["name"] == rec.native_id] == []
    with pytest.raises(Exception) as err:
        api.core.read_namespaced_config_map(f"{rec.native_id}-bundle", NS)
    assert getattr(err.value, "status", None) == 404


def test_a_failed_trainjob_reports_the_controllers_reason(cluster, kube):
    api = cluster
    job = _cell(nodes=1).submit()
    _make_pods(api, job, 1, {"phase": "Running"})
    time.sleep(1.05)
    assert job.refresh().info["phase"] == "running"
    api.patch_trainjob_status(
        NS,
        job.record.native_id,
        {"conditions": [condition("Failed", reason="JobFailed", message="node-0 backoff limit")]},
    )
    time.sleep(1.05)
    rec = job.refresh()
    assert rec.status == "FAILED" and "node-0 backoff limit" in rec.error


def crashed(restarts: int, reason: str = "Error", code: int = 1) -> dict:
    """A node container that exited ``code`` and waits to be restarted (OnFailure)."""
    return {
        "phase": "Running",
        "containerStatuses": [
            {
                "name": "node",
                "image": "x",
                "imageID": "",
                "ready": False,
                "restartCount": restarts,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}},
                "lastState": {"terminated": {"reason": reason, "exitCode": code}},
            }
        ],
    }


def test_a_node_that_exits_non_zero_fails_the_job_at_once_with_the_first_traceback(cluster, kube):
    """The stock runtime restarts a failed container (OnFailure, backoffLimit 6): nbscale
    does not wait for it, nor report "pending ... CrashLoopBackOff": the job fails at the
    first non-zero exit, the first run's log is read with previous=true, and the TrainJob
    is deleted so the cell does not run again."""
    api = cluster
    job = _cell(nodes=1).submit()
    name = job.record.native_id
    _make_pods(api, job, 1, {"phase": "Running"})
    kube.set_log(
        NS,
        _pod_name(job, 0),
        [
            "[rank 0] Traceback (most recent call last):",
            "[rank 0] ValueError: boom on the first run",
        ],
    )
    api.patch_pod_status(NS, _pod_name(job, 0), crashed(1))
    time.sleep(1.05)
    rec = job.refresh()
    assert rec.status == "FAILED", rec.info.get("phase")
    assert "node 0 exited with code 1" in rec.error
    assert [t for t in api.trainjobs(NS) if t["metadata"]["name"] == name] == []
    reads = [r for r in kube.log_requests if r["pod"] == _pod_name(job, 0)]
    assert any(str(r.get("previous")).lower() == "true" for r in reads), reads
    assert all(r.get("container") == "node" for r in reads)
    assert "ValueError: boom on the first run" in job.logs(0)
    (failed,) = [e["data"] for e in events(get_store(), job.id) if e["type"] == "node-failed"]
    assert failed["exit_code"] == 1 and failed["node"] == 0


def test_an_oom_killed_node_fails_the_job_and_says_raise_memory(cluster, kube):
    api = cluster
    job = _cell(nodes=1).submit()
    _make_pods(api, job, 1, {"phase": "Running"})
    api.patch_pod_status(NS, _pod_name(job, 0), crashed(3, "OOMKilled", 137))
    time.sleep(1.05)
    rec = job.refresh()
    assert rec.status == "FAILED"
    assert "exited with code 137 (OOMKilled)" in rec.error and "raise memory" in rec.error


def test_a_pod_taken_by_the_cluster_is_not_a_failure(cluster, kube):
    """A spot reclaim (DisruptionTarget) ends the container with 137: the runtime replaces
    the pod, so nbscale keeps waiting."""
    api = cluster
    job = _cell(nodes=1).submit()
    _make_pods(api, job, 1, {"phase": "Running"})
    status = crashed(0, "Error", 137)
    status["phase"] = "Failed"
    status["containerStatuses"][0]["state"] = {"terminated": {"reason": "Error", "exitCode": 137}}
    status["conditions"] = [
        {"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet"}
    ]
    api.patch_pod_status(NS, _pod_name(job, 0), status)
    time.sleep(1.05)
    rec = job.refresh()
    assert rec.status in ("PENDING", "RUNNING") and rec.error is None
    assert [t for t in api.trainjobs(NS) if t["metadata"]["name"] == rec.native_id]
    job.cancel()


def test_the_trainjobs_own_warning_is_said_instead_of_queued(cluster, kube):
    """No pods ever come when the Trainer cannot make the JobSet: its Warning event on the
    TrainJob is the job's phase (and an event), not "queued" forever."""
    api = cluster
    job = _cell(nodes=1).submit()
    name = job.record.native_id
    assert job.refresh().info["phase"] == "queued"
    api.core.create_namespaced_event(
        NS,
        {
            "metadata": {"name": f"{name}.17a", "namespace": NS},
            "type": "Warning",
            "reason": "TrainJobResourcesCreationFailed",
            "message": "TrainJob resources reconciliation failed: jobsets.jobset.x-k8s.io "
            '"' + name + '" is forbidden: exceeded quota: team-a-quota',
            "involvedObject": {
                "kind": "TrainJob",
                "name": name,
                "namespace": NS,
                "apiVersion": "trainer.kubeflow.org/v1alpha1",
            },
        },
    )
    # someone else's Warning in the namespace is none of this job's business
    api.core.create_namespaced_event(
        NS,
        {
            "metadata": {"name": "other.1", "namespace": NS},
            "type": "Warning",
            "reason": "FailedScheduling",
            "message": "not ours",
            "involvedObject": {"kind": "Pod", "name": "someone-elses-pod", "namespace": NS},
        },
    )
    time.sleep(1.05)
    rec = job.refresh()
    assert rec.info["phase"].startswith(f"pending: TrainJob/{name} TrainJobResourcesCreationFailed")
    assert "exceeded quota" in rec.info["phase"]
    (ev,) = [e["data"] for e in events(get_store(), job.id) if e["type"] == "trainjob"]
    assert ev["reason"] == "TrainJobResourcesCreationFailed"
    assert "not ours" not in json.dumps([e["data"] for e in events(get_store(), job.id)])
    # the condition the Trainer sets when it gives up is the job's error
    api.patch_trainjob_status(
        NS,
        name,
        {
            "conditions": [
                condition(
                    "Failed",
                    reason="ResourcesCreationFailed",
                    message="exceeded quota: team-a-quota",
                )
            ]
        },
    )
    time.sleep(1.05)
    rec = job.refresh()
    assert rec.status == "FAILED" and "ResourcesCreationFailed" in rec.error


def test_bad_requests_are_refused_before_anything_is_sent(cluster, kube, tmp_path, monkeypatch):
    before = len(kube.requests())
    (tmp_path / "big.py").write_text("x = 1\n" * 200_000)
    (tmp_path / "big.ipynb").write_text(
        '{"cells": [], "metadata": {"pad": "' + "x" * 1_200_000 + '"}, "nbformat": 4, '
        '"nbformat_minor": 5}'
    )
    from nbscale.errors import NbscaleError
    from nbscale.jobs import submit
    from tests.support.kubeflow import add_settings

    # a script or notebook travels in its folder: a folder over the limit is refused
    add_settings(tmp_path / "nbscale-home", "code_limit_mb = 1\n")
    with pytest.raises(
        NbscaleError,
        match=r"over the 1.0 MB limit \(code_limit_mb in \[backends.kf\]\); the largest: big",
    ):
        submit(JobSpec(entry=Entry("script", str(tmp_path / "big.py")), backend="kf"))
    with pytest.raises(
        NbscaleError,
        match=r"over the 1.0 MB limit \(code_limit_mb in \[backends.kf\]\); the largest: big",
    ):
        submit(JobSpec(entry=Entry("notebook", str(tmp_path / "big.ipynb")), backend="kf"))
    with pytest.raises(SpecError, match="checkpoint_dir"):
        submit(JobSpec(entry=Entry("module", "m"), backend="kf", checkpoint_dir="/tmp/ck"))
    assert len(kube.requests()) == before
    # an unreachable cluster is one message naming the context and what to check
    dead = tmp_path / "dead-kubeconfig"
    dead.write_text(
        f"apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: 'http://127.0.0.1:{free_port()}'}}}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: kind-lab, context: {cluster: c, user: u}}]\ncurrent-context: kind-lab\n"
    )
    monkeypatch.setenv("KUBECONFIG", str(dead))
    with pytest.raises(BackendUnavailable, match="context 'kind-lab'.*cannot be reached"):
        submit(JobSpec(entry=Entry("module", "m"), backend="kf"))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(BackendUnavailable, match="no Kubernetes configuration"):
        submit(JobSpec(entry=Entry("module", "m"), backend="kf"))


# -- the container contract -------------------------------------------------------------


def test_nbscale_backends_says_whether_the_cluster_answers(
    cluster, nbscale_cli, monkeypatch, tmp_path
):
    out = json.loads(nbscale_cli("backends", "--json", check=True).stdout)
    kf = next(b for b in out if b["name"] == "kf")
    assert kf["reachable"] and "context 'emu'" in kf["detail"]
    dead = tmp_path / "dead"
    dead.write_text(
        f"apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: 'http://127.0.0.1:{free_port()}'}}}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: kind-lab, context: {cluster: c, user: u}}]\ncurrent-context: kind-lab\n"
    )
    monkeypatch.setenv("KUBECONFIG", str(dead))
    proc = nbscale_cli("backends", "--json")
    assert proc.returncode == 1
    kf = next(b for b in json.loads(proc.stdout) if b["name"] == "kf")
    assert (
        not kf["reachable"] and "kind-lab" in kf["detail"] and "cannot be reached" in kf["detail"]
    )


def test_a_stock_image_gets_the_runtime_wheels_by_a_url_of_that_one_object(
    cluster, kube, tmp_path, monkeypatch, nbscale_home
):
    """wheelhouse = true: the wheels go to S3 as one zip, and the pod's shell stage reads it
    through a presigned GET URL; the URL carries no secret key."""
    import urllib.request

    from nbscale.runtime import wheelhouse

    wheels = tmp_path / "wheelhouse"
    wheels.mkdir()
    (wheels / "nbscale_probe-1.0-py3-none-any.whl").write_bytes(b"PK-not-really-a-wheel")
    kinds: list[str] = []
    monkeypatch.setattr(wheelhouse, "build", lambda kind: kinds.append(kind) or wheels)
    config = (nbscale_home / "config.toml").read_text().replace("wheelhouse = false\n", "")
    (nbscale_home / "config.toml").write_text(config)
    job = _cell(nodes=1).submit()
    assert kinds == ["job"]
    env = {e["name"]: e.get("value") for e in _trainjob(cluster, job)["spec"]["trainer"]["env"]}
    url = env["NBSCALE_WHEELHOUSE_URL"]
    assert "/wheelhouse/sha256/" in url and "X-Amz-Signature=" in url
    assert PLANTED_SECRET not in url
    with urllib.request.urlopen(url, timeout=10) as resp:  # what the shell stage does
        data = resp.read()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.namelist() == ["nbscale_probe-1.0-py3-none-any.whl"]
    assert "NBSCALE_WHEELHOUSE_URL" in mf.ENTRY_SCRIPT and "--no-index" in mf.ENTRY_SCRIPT
    job.cancel()
    # a notebook job installs the closure that has papermill and ipykernel
    from nbscale.jobs import submit

    write_notebook(tmp_path / "nb.ipynb", "print('hi')")
    submit(JobSpec(entry=Entry.from_path(str(tmp_path / "nb.ipynb")), backend="kf")).cancel()
    assert kinds == ["job", "step"]


def test_an_unreachable_cluster_is_said_not_raised_when_listing(
    cluster, kube, tmp_path, monkeypatch
):
    from nbscale.jobs import jobs

    job = _cell(nodes=1).submit()
    dead = tmp_path / "dead"
    dead.write_text(
        f"apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: 'http://127.0.0.1:{free_port()}'}}}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: kind-lab, context: {cluster: c, user: u}}]\ncurrent-context: kind-lab\n"
    )
    monkeypatch.setenv("KUBECONFIG", str(dead))
    (listed,) = [j for j in jobs() if j.id == job.id]
    rec = listed.record
    assert rec.status == "PENDING" and rec.info["phase"].startswith("unreachable: ")
    assert "kind-lab" in rec.info["phase"]
    assert job_handle(job.id).record.info["phase"] == "queued"  # nothing was written


def test_a_missing_key_secret_is_said_with_the_namespace_the_pods_need_it_in(cluster, kube):
    api = cluster
    job = _cell(nodes=1).submit()
    api.core.delete_namespaced_secret("nbscale-keys-emu", NS)
    _make_pods(api, job, 1, {"phase": "Pending"})
    api.core.create_namespaced_event(
        NS,
        {
            "metadata": {"name": f"{_pod_name(job, 0)}.mount", "namespace": NS},
            "type": "Warning",
            "reason": "FailedMount",
            "message": 'MountVolume.SetUp failed for volume "nbscale-keys" : secret '
            '"nbscale-keys-emu" not found',
            "involvedObject": {"kind": "Pod", "name": _pod_name(job, 0), "namespace": NS},
        },
    )
    time.sleep(1.05)
    phase = job.refresh().info["phase"]
    assert "FailedMount" in phase
    assert f"the key Secret nbscale-keys-emu must be in namespace {NS}" in phase
    job.cancel()


def test_on_a_trainer_v2_3_cluster_the_pods_are_built_from_its_own_runtime(
    cluster, tmp_path, monkeypatch
):
    """A cluster running Trainer v2.3.0 (its CRDs, its webhook, its chart's
    torch-distributed): the TrainJob is admitted, and the pods the Trainer makes of it
    carry the backend's annotations, no Istio sidecar and the user's key, and take
    JobSet's and the Job's restart defaults."""
    from tests.support.kube_emulator import KubeApi, KubeEmulator
    from tests.support.kubeflow import installed_runtime, jobset_of, node_job, pods_of

    emu = KubeEmulator(trainer_release="v2.3.0")
    try:
        monkeypatch.setenv("KUBECONFIG", str(emu.kubeconfig(tmp_path / "v23", NS)))
        monkeypatch.setenv("NBSCALE_USER", "alice@example.com")
        job = _cell(nodes=2).submit()
        api = KubeApi(emu.url)
        body = _trainjob(api, job)
        runtime = installed_runtime(api, body["spec"]["runtimeRef"], "v2.3.0")
        assert (
            "cuda13"
            in runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"][
                "template"
            ]["spec"]["containers"][0]["image"]
        )  # v2.3's chart, not v2.2's
        jobset = jobset_of(body, runtime)
        secret = mf.key_secret_name("nbscale-keys", "alice@example.com")
        for pod in pods_of(body, jobset):
            assert pod["metadata"]["annotations"][mf.ISTIO_INJECT] == "false"
            vols = [v["secret"]["secretName"] for v in pod["spec"]["volumes"] if "secret" in v]
            assert vols == [secret]
        assert node_job(jobset)["backoffLimit"] == 6
        assert api.core.read_namespaced_secret(secret, NS).metadata.annotations == {
            mf.USER_ANNOTATION: "alice@example.com"
        }
    finally:
        emu.stop()
