"""Interop: the Kubeflow SDK's ``TrainerClient`` (PyPI ``kubeflow``) lists and reads a
TrainJob nbscale created, as it would on a cluster: its runtime, nodes, steps, status and
logs. And nbscale lists and attaches a TrainJob that TrainerClient's way of working made.

The cluster is kmock's emulator (tests/support/kube_emulator.py), which admits the TrainJob
as the Trainer's webhook would; the test plays JobSet and the kubelet (the pods JobSet
makes carry its labels; their logs).
"""

from __future__ import annotations

import kubernetes
import pytest

from nbscale.backends.kubeflow import manifests as mf
from nbscale.jobs import attach, platform_jobs
from tests.support.kube_emulator import condition
from tests.support.kubeflow import NS, _cell

kubeflow_trainer = pytest.importorskip("kubeflow.trainer")
from kubeflow.common.types import KubernetesBackendConfig  # noqa: E402


def trainer_client(url: str):
    conf = kubernetes.client.Configuration()
    conf.host = url
    return kubeflow_trainer.TrainerClient(
        backend_config=KubernetesBackendConfig(namespace=NS, client_configuration=conf)
    )


def jobset_pods(api, job, nodes: int, phase: str) -> list[str]:
    """The node pods JobSet makes for nbscale's TrainJob: JobSet's labels and the pod
    template's own (nbscale's job id)."""
    name = job.record.native_id
    out = []
    for node in range(nodes):
        pod = f"{name}-node-0-{node}-ab{node}"
        labels = {
            "jobset.sigs.k8s.io/jobset-name": name,
            "jobset.sigs.k8s.io/replicatedjob-name": "node",
            "batch.kubernetes.io/job-completion-index": str(node),
            mf.JOB_LABEL: job.id,
        }
        api.create_pod(NS, pod, labels, {"phase": phase})
        out.append(pod)
    return out


def test_trainerclient_lists_and_reads_a_trainjob_nbscale_created(cluster, kube):
    job = _cell(nodes=2).submit()
    name = job.record.native_id
    client = trainer_client(kube.url)

    assert name in [j.name for j in client.list_jobs()]
    assert "torch-distributed" in [r.name for r in client.list_runtimes()]
    got = client.get_job(name)
    assert got.runtime.name == "torch-distributed"
    assert got.num_nodes == 2 and got.status == "Created" and got.steps == []

    pods = jobset_pods(cluster, job, 2, "Running")
    for node, pod in enumerate(pods):
        kube.set_log(NS, pod, [f"[rank {node}] step 1", f"[rank {node}] step 2"])
    got = client.get_job(name)
    assert sorted(s.name for s in got.steps) == ["node-0", "node-1"]
    assert got.status == "Running"  # every node runs
    assert list(client.get_job_logs(name)) == ["[rank 0] step 1", "[rank 0] step 2"]

    cluster.patch_trainjob_status(NS, name, {"conditions": [condition("Complete")]})
    assert client.get_job(name).status == "Complete"
    # nbscale reads the same TrainJob as its own (not foreign)
    (mine,) = [j for j in platform_jobs("kf") if j["name"] == name]
    assert mine["job_id"] == job.id and not mine["foreign"] and mine["status"] == "SUCCEEDED"


def test_nbscale_attaches_a_trainjob_made_the_trainerclient_way(cluster, kube):
    client = trainer_client(kube.url)
    runtime = client.get_runtime("torch-distributed")
    # what TrainerClient.train(runtime=..., trainer=CustomTrainer(...)) sends, reduced to
    # the fields it sets for a plain command
    body = {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": {"name": "sdk-job", "namespace": NS},
        "spec": {
            "runtimeRef": {"name": runtime.name},
            "trainer": {"numNodes": 1, "command": ["python", "-c", "print('hi')"]},
        },
    }
    cluster.custom.create_namespaced_custom_object(
        "trainer.kubeflow.org", "v1alpha1", NS, "trainjobs", body
    )
    assert client.get_job("sdk-job").status == "Created"
    handle = attach("sdk-job", backend="kf")
    assert handle.record.info["foreign"] and handle.status() == "PENDING"
    cluster.patch_trainjob_status(NS, "sdk-job", {"conditions": [condition("Complete")]})
    assert handle.wait(status="SUCCEEDED", timeout=20, poll=0.05).error is None
    assert client.get_job("sdk-job").status == "Complete"
