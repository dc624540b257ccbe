"""A reclaimed spot node on Kubeflow resumes from its checkpoint, as the pod contract says.

The test plays the Trainer controller and the kubelet as tests/contract/test_kubeflow_jobs.py
does: the TrainJob's exact node command runs as a local process in a mount namespace with the
TrainJob's volumes at their mountPaths (the PVC is a folder that outlives the pod); the node is
reclaimed (SIGKILL, no grace) after a few checkpoints, and the pod that replaces it resumes
through ``nbscale.checkpoint`` and finishes the training."""

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

from nbscale.backends.kubeflow import manifests as mf
from nbscale.celljob import prepare_cell
from nbscale.jobs import job as job_handle
from nbscale.results import load_results
from nbscale.specs import Entry, JobSpec
from tests.support.emulators import container_env, free_port
from tests.support.kube_emulator import KubeApi, condition
from tests.support.kubeflow import (
    MOUNT_NS,
    NS,
    SPOT,
    _pod_name,
    _secret_value,
    _trainjob,
    add_settings,
    pod_mounts,
    pod_spec,
)

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
