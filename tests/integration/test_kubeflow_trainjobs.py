"""The namespace's TrainJobs, nbscale's and others', as the Kubeflow SDK's TrainerClient
sees them: ``nbscale jobs --backend kf`` lists them all (those nbscale did not start marked
foreign), ``nbscale attach`` adopts one by name so status, logs and ``Job.wait(status=)``
work on it, ``nbscale runtimes`` lists the training runtimes, and ``nbscale logs`` reads one
node or all, the last lines, or those of the last minutes (from the API server).

Against kmock's Kubernetes emulator (tests/support/kube_emulator.py); the test plays the
Trainer and JobSet controllers and the kubelet: it makes the pods JobSet would make (its
labels), serves their logs and writes the TrainJob's status.
"""

from __future__ import annotations

import json
import time

import pytest

from nbscale.cli import main
from nbscale.errors import NbscaleError, NotFound, SpecError
from nbscale.jobs import attach
from nbscale.jobs import job as job_handle
from tests.support.kube_emulator import condition
from tests.support.kubeflow import NS, _cell

FOREIGN = "llm-finetune"  # a TrainJob made with the Kubeflow SDK, not with nbscale
JOBSET = "jobset.sigs.k8s.io/jobset-name"


def foreign_trainjob(api, name: str = FOREIGN, nodes: int = 2) -> dict:
    body = {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": {"name": name, "namespace": NS, "labels": {"team": "nlp"}},
        "spec": {
            "runtimeRef": {"name": "torch-distributed"},
            "trainer": {
                "numNodes": nodes,
                "image": "pytorch/pytorch:2.10.0-cuda12.8-cudnn9-runtime",
                "command": ["torchrun", "train.py"],
            },
        },
    }
    return api.custom.create_namespaced_custom_object(
        "trainer.kubeflow.org", "v1alpha1", NS, "trainjobs", body
    )


def jobset_pods(api, name: str, nodes: int, phase: str) -> list[str]:
    """The node pods JobSet makes for TrainJob ``name`` (its labels, not nbscale's)."""
    out = []
    for node in range(nodes):
        pod = f"{name}-node-0-{node}-x{node}"
        labels = {
            JOBSET: name,
            "jobset.sigs.k8s.io/replicatedjob-name": "node",
            "batch.kubernetes.io/job-completion-index": str(node),
        }
        api.create_pod(NS, pod, labels, {"phase": phase})
        out.append(pod)
    return out


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_jobs_lists_every_trainjob_of_the_namespace_foreign_ones_marked(cluster, kube, capsys):
    own = _cell(nodes=1).submit()
    foreign_trainjob(cluster)
    code, out, _ = run_cli(capsys, "jobs", "--backend", "kf", "--json")
    assert code == 0
    found = {j["name"]: j for j in json.loads(out)}
    mine = found[own.record.native_id]
    assert mine["job_id"] == own.id and mine["attached"] == own.id and not mine["foreign"]
    other = found[FOREIGN]
    assert other["foreign"] and other["job_id"] is None and other["attached"] is None
    assert other["status"] == "PENDING" and other["nodes"] == 2
    assert other["runtime"] == "ClusterTrainingRuntime/torch-distributed"
    # the table marks the foreign one and says how to attach
    code, out, err = run_cli(capsys, "jobs", "--backend", "kf")
    line = next(ln for ln in out.splitlines() if ln.startswith(FOREIGN))
    assert "foreign" in line.split()
    assert "nbscale attach NAME --backend kf" in err
    # --status narrows by nbscale's words
    cluster.patch_trainjob_status(NS, FOREIGN, {"conditions": [condition("Complete")]})
    code, out, _ = run_cli(capsys, "jobs", "--backend", "kf", "--status", "succeeded", "--json")
    assert [j["name"] for j in json.loads(out)] == [FOREIGN]


def test_attach_a_foreign_trainjob_then_status_logs_and_wait(cluster, kube, capsys):
    foreign_trainjob(cluster)
    code, out, err = run_cli(capsys, "attach", FOREIGN, "--backend", "kf")
    assert code == 0, err
    job_id = out.strip()
    assert "no results are expected" in err
    handle = job_handle(job_id)
    rec = handle.record
    assert rec.native_id == FOREIGN and rec.info["foreign"] and rec.info["attached"]
    assert rec.info["expect_outputs"] is False and rec.spec["nodes"] == 2
    # attaching again finds the same row
    assert attach(FOREIGN, backend="kf").id == job_id
    # the Trainer starts it: JobSet's pods (no nbscale label), both logging
    pods = jobset_pods(cluster, FOREIGN, 2, "Running")
    for node, pod in enumerate(pods):
        kube.set_log(NS, pod, [f"node {node} step {i}" for i in range(6)])
    cluster.patch_trainjob_status(
        NS,
        FOREIGN,
        {
            "jobsStatus": [
                {
                    "name": "node",
                    "active": 2,
                    "ready": 2,
                    "succeeded": 0,
                    "failed": 0,
                    "suspended": 0,
                }
            ]
        },
    )
    assert handle.wait(status="running", timeout=20, poll=0.05).status == "RUNNING"
    # one node's log, from the copy nbscale keeps
    code, out, _ = run_cli(capsys, "logs", job_id, "--node", "1")
    assert "node 1 step 5" in out and "node 0 step" not in out
    # the last lines of each rank, and of one node by the API server's clock and tail
    code, out, _ = run_cli(capsys, "logs", job_id, "--tail", "2")
    assert [ln.split("] ", 1)[1] for ln in out.splitlines()] == [
        "[node 0] node 0 step 4",
        "[node 0] node 0 step 5",
        "[node 1] node 1 step 4",
        "[node 1] node 1 step 5",
    ]
    code, out, _ = run_cli(capsys, "logs", job_id, "--node", "0", "--since", "5m", "--tail", "3")
    assert out.splitlines() == [f"[node 0] node 0 step {i}" for i in (3, 4, 5)]
    tail = [r for r in kube.log_requests if r.get("tailLines") == "3"]
    assert tail and tail[-1]["pod"] == pods[0] and int(tail[-1]["sinceSeconds"]) == 300
    code, out, _ = run_cli(capsys, "logs", job_id, "--since", "5m")
    assert sorted(out.splitlines()) == sorted(
        [f"[node {n}] node {n} step {i}" for n in (0, 1) for i in range(6)]
    )
    # it ends: nothing to collect from a job nbscale did not start, so no failure for it
    cluster.patch_trainjob_status(NS, FOREIGN, {"conditions": [condition("Complete")]})
    done = handle.wait(status="SUCCEEDED", timeout=20, poll=0.05)
    assert done.status == "SUCCEEDED" and done.error is None
    # a status it can no longer reach: said at once, not after a timeout
    started = time.monotonic()
    with pytest.raises(NbscaleError, match="will never be RUNNING: it ended SUCCEEDED"):
        handle.wait(status="RUNNING", timeout=30)
    assert time.monotonic() - started < 5


def test_wait_for_a_status_refuses_unknown_ones_and_sees_a_failure(cluster, kube):
    foreign_trainjob(cluster)
    handle = attach(FOREIGN, backend="kf")
    with pytest.raises(SpecError, match="unknown status 'DONE'.*use one of PENDING, RUNNING"):
        handle.wait(status="DONE")
    cluster.patch_trainjob_status(
        NS, FOREIGN, {"conditions": [condition("Failed", reason="BackoffLimitExceeded")]}
    )
    with pytest.raises(NbscaleError, match="will never be SUCCEEDED: it ended FAILED"):
        handle.wait(status="SUCCEEDED", timeout=20, poll=0.05)
    assert handle.wait(status="failed", timeout=5).error.startswith("BackoffLimitExceeded")


def test_attach_names_what_is_missing(cluster, kube, capsys):
    with pytest.raises(NotFound, match="no TrainJob 'nope' in namespace team-a"):
        attach("nope", backend="kf")
    code, _, err = run_cli(capsys, "attach", "nope", "--backend", "kf")
    assert code != 0 and "nbscale jobs --backend kf" in err


def test_attaching_nbscales_own_trainjob_finds_its_row(cluster, kube):
    own = _cell(nodes=1).submit()
    assert attach(own.record.native_id, backend="kf").id == own.id


def test_runtimes_lists_cluster_and_namespace_runtimes(cluster, kube, capsys):
    cluster.custom.create_namespaced_custom_object(
        "trainer.kubeflow.org",
        "v1alpha1",
        NS,
        "trainingruntimes",
        {
            "apiVersion": "trainer.kubeflow.org/v1alpha1",
            "kind": "TrainingRuntime",
            "metadata": {
                "name": "torch-small",
                "namespace": NS,
                "labels": {"trainer.kubeflow.org/framework": "torch"},
            },
            "spec": {
                "mlPolicy": {"numNodes": 1, "torch": {}},
                "template": {
                    "spec": {
                        "replicatedJobs": [
                            {
                                "name": "node",
                                "template": {
                                    "spec": {
                                        "template": {
                                            "spec": {
                                                "containers": [
                                                    {"name": "node", "image": "ghcr.io/a/t:1"}
                                                ]
                                            }
                                        }
                                    }
                                },
                            }
                        ]
                    }
                },
            },
        },
    )
    code, out, _ = run_cli(capsys, "runtimes", "--backend", "kf", "--json")
    assert code == 0
    found = {(r["kind"], r["name"]): r for r in json.loads(out)}
    cluster_rt = found[("ClusterTrainingRuntime", "torch-distributed")]
    assert cluster_rt["framework"] == "torch" and cluster_rt["nodes"] == 1
    assert cluster_rt["images"] == ["node: pytorch/pytorch:2.10.0-cuda12.8-cudnn9-runtime"]
    assert found[("TrainingRuntime", "torch-small")]["namespace"] == NS
    code, out, _ = run_cli(capsys, "runtimes", "--backend", "kf")
    assert "torch-distributed" in out and "torch-small" in out


def test_a_backend_without_platform_jobs_refuses_clearly(cluster, kube, capsys):
    code, _, err = run_cli(capsys, "attach", "x", "--backend", "local")
    assert code != 0 and "cannot attach to 'x'" in err
    code, _, err = run_cli(capsys, "runtimes", "--backend", "local")
    assert code != 0 and "cannot list runtimes" in err


def test_logs_options_are_checked(cluster, kube, capsys):
    own = _cell(nodes=1).submit()
    code, _, err = run_cli(capsys, "logs", own.id, "--node", "3")
    assert code != 0 and "has 1 node: 3 is not one of them" in err
    code, _, err = run_cli(capsys, "logs", own.id, "--since", "soon")
    assert code != 0 and "'soon' is not a duration" in err
    code, _, err = run_cli(capsys, "logs", own.id, "--rank", "0", "--node", "0")
    assert code != 0 and "--rank" in err


def test_attaching_a_trainjob_nbscale_made_elsewhere_keeps_its_id_and_outputs(cluster, kube):
    """Another notebook's nbscale made it (its job-id label): the row takes that id, and the
    outputs are expected where that job writes them."""
    from nbscale.backends.kubeflow import manifests as mf
    from nbscale.backends.kubeflow.settings import settings
    from nbscale.config import load
    from nbscale.specs import Entry, JobSpec

    conf = settings(load().backend("kf"))
    spec = JobSpec(entry=Entry("module", "train"), name="fit", backend="kf").to_dict()
    staged = mf.Staged(
        job_id="fit-elsewhere-1a2b3c",
        spec_b64="eyJ9",
        outputs_uri="s3://nb-bucket/work/jobs/fit-elsewhere-1a2b3c/outputs",
        bundle="s3://nb-bucket/work/b/cell.zip",
    )
    body = mf.trainjob("fit-elsewhere-1a2b3c", spec, conf, staged, NS)
    cluster.custom.create_namespaced_custom_object(
        "trainer.kubeflow.org", "v1alpha1", NS, "trainjobs", body
    )
    handle = attach(body["metadata"]["name"], backend="kf")
    assert handle.id == "fit-elsewhere-1a2b3c" and handle.name == "fit"
    info = handle.record.info
    assert not info["foreign"] and info["expect_outputs"]
    assert info["outputs_uri"] == staged.outputs_uri


def test_an_attached_foreign_trainjob_whose_node_fails_is_never_deleted(cluster, kube):
    """nbscale fails its own jobs at the first failed node and deletes their TrainJob; one it
    only attached to is watched: its runtime decides, and it is left in place."""
    foreign_trainjob(cluster, nodes=1)
    handle = attach(FOREIGN, backend="kf")
    crashed = {
        "phase": "Running",
        "containerStatuses": [
            {
                "name": "node",
                "image": "pytorch/pytorch:2.10.0-cuda12.8-cudnn9-runtime",
                "imageID": "",
                "ready": False,
                "restartCount": 1,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {
                    "terminated": {
                        "exitCode": 1,
                        "reason": "Error",
                        "finishedAt": "2026-12-06T03:00:00Z",
                    }
                },
            }
        ],
    }
    pod = f"{FOREIGN}-node-0-0-x0"
    labels = {
        JOBSET: FOREIGN,
        "jobset.sigs.k8s.io/replicatedjob-name": "node",
        "batch.kubernetes.io/job-completion-index": "0",
    }
    cluster.create_pod(NS, pod, labels, crashed)
    assert handle.refresh().status in ("PENDING", "RUNNING")
    assert (
        cluster.custom.get_namespaced_custom_object(
            "trainer.kubeflow.org", "v1alpha1", NS, "trainjobs", FOREIGN
        )["metadata"]["name"]
        == FOREIGN
    )
    # its own runtime gives up: the TrainJob's condition ends it, still not deleted by nbscale
    cluster.patch_trainjob_status(NS, FOREIGN, {"conditions": [condition("Failed")]})
    assert handle.wait(timeout=20, poll=0.05).status == "FAILED"
    assert cluster.custom.get_namespaced_custom_object(
        "trainer.kubeflow.org", "v1alpha1", NS, "trainjobs", FOREIGN
    )


def test_followers_copying_one_jobs_logs_at_once_copy_each_line_once(cluster, kube):
    """The panel, a CLI and a sweep's view may copy the same job's pod logs at the same time:
    the copies take turns, so no line is written twice and none is lost."""
    import threading

    from nbscale.runtime.jobdir import JobDir

    foreign_trainjob(cluster, nodes=1)
    handle = attach(FOREIGN, backend="kf")
    (pod,) = jobset_pods(cluster, FOREIGN, 1, "Running")
    backend, record = handle._backend, handle.record
    jobdir = JobDir(record.info["job_dir"])
    errors: list[BaseException] = []

    def copy() -> None:
        try:
            for _ in range(5):
                backend.fetch_logs(record, jobdir)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    for batch in range(4):
        kube.set_log(NS, pod, [f"line {batch}-{i}" for i in range(50)])
        threads = [threading.Thread(target=copy) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not errors, errors
    lines = jobdir.log(0).read_text().splitlines()
    copied = [ln.removeprefix("[node 0] ") for ln in lines if "] line " in ln]
    assert copied == [f"line {b}-{i}" for b in range(4) for i in range(50)]
