"""``--spot`` on Kubeflow: the backend's spot node selector and tolerations on the TrainJob's
pods, a checkpoint PVC that outlives a reclaimed node, spot prices in the cost.

The preemption test plays the Trainer controller and the kubelet as tests/test_kubeflow_jobs.py
does: the TrainJob's exact node command runs as a local process in a mount namespace with the
TrainJob's volumes at their mountPaths (the PVC is a folder that outlives the pod); the node is
reclaimed (SIGKILL, no grace) after a few checkpoints, and the pod that replaces it resumes
through ``nbscale.checkpoint`` and finishes the training.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nbscale import config as nbconfig
from nbscale import cost
from nbscale.backends.kubeflow import manifests as mf
from nbscale.backends.kubeflow.settings import CHECKPOINT_MOUNT, settings
from nbscale.celljob import prepare_cell
from nbscale.config import BackendConfig
from nbscale.errors import SpecError
from nbscale.jobs import job as job_handle
from nbscale.jobs import submit
from nbscale.results import load_results
from nbscale.specs import Entry, JobSpec
from nbscale.store import get_store
from nbscale.store.jobs import SUCCEEDED, JobRecord, insert_job
from tests.support.emulators import container_env, free_port
from tests.support.kube_emulator import KubeApi, condition
from tests.support.kube_schemas import validate
from tests.support.kubeflow import MOUNT_NS, NS, _pod_name, _secret_value, _trainjob, pod_mounts

SPOT = """
spot_node_selector = { "karpenter.sh/capacity-type" = "spot" }
spot_tolerations = [{ key = "spot", operator = "Exists", effect = "NoSchedule" }]
checkpoint_volume = "nbscale-checkpoints"
tolerations = [{ key = "nvidia.com/gpu", operator = "Exists", effect = "NoSchedule" }]
"""

CELL = """\
import time
import torch
import nbscale.checkpoint as ckpt

model = torch.nn.Linear(1, 1, bias=False)
torch.nn.init.zeros_(model.weight)
state = ckpt.load(model=model)
resumed = state.step if state else -1
for step in range(resumed + 1, steps):
    with torch.no_grad():
        model.weight += 1.0
    ckpt.save(step, model=model)
    print("step", step, flush=True)
    time.sleep(pause)
final = float(model.weight.item())
"""


def add_settings(nbscale_home: Path, text: str) -> None:
    conf = nbscale_home / "config.toml"
    conf.write_text(conf.read_text() + text)


def pod_spec(body: dict) -> dict:
    return body["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"][
        "replicatedJobs"
    ][0]["template"]["spec"]["template"]["spec"]


def test_spot_settings_are_checked(tmp_path):
    def conf(**kw):
        return settings(BackendConfig("kf", "kubeflow", {"storage": "s3://b/p", **kw}))

    s = conf(
        spot_node_selector={"cloud.google.com/gke-spot": "true"},
        spot_tolerations=[{"key": "spot", "operator": "Exists"}],
        checkpoint_volume="ckpts",
        spot_prices={"g5.xlarge": 0.4},
        spot_discount=0.6,
    )
    assert s.spot_node_selector == {"cloud.google.com/gke-spot": "true"}
    assert s.checkpoint_volume == "ckpts"
    s.require_spot()
    with pytest.raises(SpecError, match="no spot nodes configured.*spot_node_selector"):
        conf().require_spot()
    for bad, match in (
        ({"spot_tolerations": [{"key": "spot", "when": "always"}]}, "spot_tolerations"),
        ({"spot_node_selector": {"a": 1}}, "spot_node_selector"),
        ({"checkpoint_volume": "Not_A_Name"}, "checkpoint_volume"),
        ({"spot_discount": 1.5}, "spot_discount"),
        ({"spot_prices": {"g5.xlarge": -1}}, "spot_prices.g5.xlarge"),
        ({"prices": "cheap"}, "prices"),
        ({"gpu_hour_price": "x"}, "gpu_hour_price"),
    ):
        with pytest.raises(SpecError, match=match):
            conf(**bad)


def test_spot_is_refused_without_spot_nodes_and_sent_nothing(cluster, kube):
    before = len(kube.writes())
    with pytest.raises(SpecError, match="kf backend \\(kubeflow\\) has no spot nodes configured"):
        submit(JobSpec(entry=Entry("module", "m"), backend="kf", spot=True))
    assert len(kube.writes()) == before
    assert get_store().query("SELECT id FROM jobs") == []


def test_spot_pods_go_to_spot_nodes_with_a_checkpoint_volume(cluster, kube, nbscale_home):
    add_settings(nbscale_home, SPOT)
    job = submit(JobSpec(entry=Entry("module", "m"), backend="kf", spot=True, nodes=2))
    body = _trainjob(cluster, job)
    validate(body)  # against the Trainer CRD
    pod = pod_spec(body)
    assert pod["nodeSelector"] == {"karpenter.sh/capacity-type": "spot"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "spot", "operator": "Exists", "effect": "NoSchedule"},
    ]
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["nbscale-checkpoints"]["persistentVolumeClaim"] == {
        "claimName": "nbscale-checkpoints"
    }
    (container,) = pod["containers"]
    assert {"name": "nbscale-checkpoints", "mountPath": CHECKPOINT_MOUNT} in container[
        "volumeMounts"
    ]
    env = {e["name"]: e.get("value") for e in body["spec"]["trainer"]["env"]}
    assert env["NBSCALE_CHECKPOINT_DIR"] == f"{CHECKPOINT_MOUNT}/{job.id}"
    # without --spot: the same backend's pods stay off spot nodes (the checkpoints still go
    # to the volume, so any restarted pod resumes)
    plain = submit(JobSpec(entry=Entry("module", "m"), backend="kf", nodes=1))
    pod = pod_spec(_trainjob(cluster, plain))
    assert "nodeSelector" not in pod
    assert [t["key"] for t in pod["tolerations"]] == ["nvidia.com/gpu"]
    validate(_trainjob(cluster, plain))


def _start_pod(api: KubeApi, job, root: Path, pv_root: Path) -> subprocess.Popen:
    """The kubelet: one node pod of the TrainJob, its volumes at their mountPaths."""
    body = _trainjob(api, job)
    trainer = body["spec"]["trainer"]
    pod = pod_spec(body)
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts: dict[str, str] = {}
    for m in container["volumeMounts"]:
        vol = volumes[m["name"]]
        if "persistentVolumeClaim" in vol:  # the claim's volume outlives every pod
            where = pv_root / vol["persistentVolumeClaim"]["claimName"]
            where.mkdir(parents=True, exist_ok=True)
        else:
            where = root / "volumes" / m["name"]
            where.mkdir(parents=True)
            if "secret" in vol:
                s = api.core.read_namespaced_secret(vol["secret"]["secretName"], NS)
                for item in vol["secret"]["items"]:
                    (where / item["path"]).write_bytes(base64.b64decode(s.data[item["key"]]))
                    os.chmod(where / item["path"], vol["secret"]["defaultMode"])
            else:
                cm = api.core.read_namespaced_config_map(vol["configMap"]["name"], NS)
                for key, value in (cm.binary_data or {}).items():
                    (where / key).write_bytes(base64.b64decode(value))
                    os.chmod(where / key, vol["configMap"]["defaultMode"])
        mounts[m["mountPath"]] = str(where)
    env = {}
    for e in trainer["env"]:
        if "valueFrom" in e:
            env[e["name"]] = _secret_value(api, e["valueFrom"]["secretKeyRef"])
        else:
            env[e["name"]] = e["value"]
    home = root / "home"
    home.mkdir(parents=True)
    env = container_env(
        home,
        **env,
        PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        PET_NNODES="1",
        PET_NPROC_PER_NODE="1",
        PET_NODE_RANK="0",
        PET_MASTER_ADDR="127.0.0.1",
        PET_MASTER_PORT=str(free_port()),
    )
    env.pop("AWS_ENDPOINT_URL", None)  # the pod knows only what the TrainJob says
    argv = pod_mounts(mounts, [*trainer["command"], *trainer["args"]])
    log = open(root / "pod.log", "w")  # noqa: SIM115
    return subprocess.Popen(
        argv, env=env, cwd=home, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def reclaim(proc: subprocess.Popen) -> None:
    """The spot node goes away: every process of the pod is killed at once, no grace."""
    import psutil

    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    proc.wait(30)
    psutil.wait_procs(tree, timeout=30)
    assert not [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.slow
def test_a_reclaimed_spot_node_resumes_from_its_checkpoint(
    cluster,
    kube,
    nbscale_home,
    tmp_path,
):
    if not MOUNT_NS:
        pytest.skip("the volumes are mounted at their mountPaths: needs mount namespaces")
    import torch

    add_settings(nbscale_home, SPOT)
    spec = JobSpec(entry=Entry("module", "placeholder"), name="spot", backend="kf", spot=True)
    job = prepare_cell(
        CELL, {"torch": torch, "steps": 8, "pause": 0.3}, spec, outputs=["final", "resumed"]
    ).submit()
    pv = tmp_path / "pv"
    folder = pv / "nbscale-checkpoints" / job.id
    labels = {mf.JOB_LABEL: job.id, "batch.kubernetes.io/job-completion-index": "0"}

    # the first pod trains until the spot node is reclaimed: killed outright, mid-training
    first = _start_pod(cluster, job, tmp_path / "pod-a", pv)
    cluster.create_pod(NS, _pod_name(job, 0), labels, {"phase": "Running"})
    deadline = time.monotonic() + 180
    while not (folder / "ckpt-0000000002.pt").exists():
        assert first.poll() is None, (tmp_path / "pod-a" / "pod.log").read_text()
        assert time.monotonic() < deadline, (tmp_path / "pod-a" / "pod.log").read_text()
        time.sleep(0.05)
    reclaim(first)
    assert first.returncode != 0
    cluster.core.delete_namespaced_pod(_pod_name(job, 0), NS)
    saved = sorted(p.name for p in folder.glob("ckpt-*.pt"))
    assert saved and saved[-1] >= "ckpt-0000000002.pt"

    # the Job controller's replacement pod, on another node: same TrainJob, same volume
    second = _start_pod(cluster, job, tmp_path / "pod-b", pv)
    cluster.create_pod(NS, _pod_name(job, 0), labels, {"phase": "Running"})
    assert second.wait(240) == 0, (tmp_path / "pod-b" / "pod.log").read_text()
    cluster.patch_pod_status(NS, _pod_name(job, 0), {"phase": "Succeeded"})
    cluster.patch_trainjob_status(
        NS, _trainjob(cluster, job)["metadata"]["name"], {"conditions": [condition("Complete")]}
    )
    rec = job_handle(job.id).wait(timeout=60)
    assert rec.status == "SUCCEEDED", rec.error
    values = load_results(rec)
    # every step ran once in all: the second pod started after the last checkpoint
    assert values["final"] == 8.0
    assert values["resumed"] >= 2
    steps_b = re.findall(r"\bstep (\d+)\b", (tmp_path / "pod-b" / "pod.log").read_text())
    steps_a = re.findall(r"\bstep (\d+)\b", (tmp_path / "pod-a" / "pod.log").read_text())
    assert steps_b == [str(i) for i in range(values["resumed"] + 1, 8)] and steps_b
    assert steps_a[0] == "0"


KF_PRICED = """
[backends.kf]
type = "kubeflow"
storage = "s3://b/p"
prices = { "g5.xlarge" = 1.0 }
spot_prices = { "g5.xlarge" = 0.4 }
spot_discount = 0.5
"""


def _kf_record(job_id: str, seconds: float, **spec) -> JobRecord:
    now = time.time()
    return JobRecord(
        id=job_id,
        name="train",
        backend="kf",
        backend_type="kubeflow",
        status=SUCCEEDED,
        spec={"nodes": 2, "tags": {}, **spec},
        created=now - seconds - 10,
        started=now - seconds,
        ended=now,
    )


def test_spot_prices_and_savings_on_kubeflow(tmp_path):
    (tmp_path / "nbscale.toml").write_text(KF_PRICED)
    conf = nbconfig.load()
    settings(conf.backend("kf"))  # the price keys are settings of the backend
    # estimates: the spot price of the instance type, else the discount
    on = cost.spec_estimate({"backend": "kf", "nodes": 2, "instance_type": "g5.xlarge"}, conf)
    spot = cost.spec_estimate(
        {"backend": "kf", "nodes": 2, "instance_type": "g5.xlarge", "spot": True}, conf
    )
    assert (on["per_hour"], spot["per_hour"]) == (2.0, 0.8)
    other = cost.spec_estimate(
        {"backend": "kf", "nodes": 1, "gpus_per_proc": 1, "spot": True}, conf
    )
    assert other["price_per_node_hour"] == pytest.approx((0.20 + 2.50) * 0.5)
    # actual: 1.5 h on 2 spot nodes at 0.4, against 1.0 on demand
    store = get_store()
    insert_job(store, _kf_record("kf-spot", 5400, instance_type="g5.xlarge", spot=True))
    insert_job(store, _kf_record("kf-on", 3600, instance_type="g5.xlarge"))
    c = cost.record_costs(store_job("kf-spot"), conf)
    assert c["cost"] == pytest.approx(1.5 * 2 * 0.4, abs=1e-3)
    assert c["on_demand_cost"] == pytest.approx(1.5 * 2 * 1.0, abs=1e-3)
    assert c["spot_savings"] == pytest.approx(1.5 * 2 * 0.6, abs=1e-3) and c["spot"]
    c = cost.record_costs(store_job("kf-on"), conf)
    assert c["spot_savings"] == 0.0 and c["cost"] == pytest.approx(2.0, abs=1e-3)
    report = cost.cost_report(by="backend", config=conf)
    assert report["total"]["spot_savings"] == pytest.approx(1.8, abs=1e-3)


def store_job(job_id: str) -> JobRecord:
    from nbscale.store.jobs import get_job

    return get_job(get_store(), job_id)
