"""Playing Kubeflow's controllers and kubelet for the kubeflow tests: the TrainJob's pods as local
processes with the TrainJob's exact command, environment and volumes."""

from __future__ import annotations

import base64
import os
import shlex
import subprocess
import sys
from pathlib import Path

from nbscale.backends.kubeflow import manifests as mf
from nbscale.celljob import prepare_cell
from nbscale.specs import Entry, JobSpec
from tests.support.emulators import container_env, free_port
from tests.support.kube_emulator import KubeApi, KubeEmulator, condition

NS = "team-a"
CELL = """\
import torch.distributed as dist
t = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(t)
print("rank", dist.get_rank(), "of", dist.get_world_size(), "sees", t.item())
total = t.item() * factor
world = dist.get_world_size()
"""


def _cell(outputs=("total", "world"), nodes=2, factor=10.0, pad=0):
    import torch

    spec = JobSpec(entry=Entry("module", "placeholder"), name="kf-cell", backend="kf", nodes=nodes)
    ns = {"torch": torch, "factor": factor}
    if pad:
        ns["pad"] = os.urandom(pad)
    source = CELL + ("n = len(pad)\n" if pad else "")
    return prepare_cell(source, ns, spec, outputs=list(outputs))


def _trainjob(api: KubeApi, job) -> dict:
    (body,) = [t for t in api.trainjobs(NS) if t["metadata"]["labels"][mf.JOB_LABEL] == job.id]
    return body


def _pod_name(job, node: int) -> str:
    return f"{mf.object_name(job.id)}-node-0-{node}"


def _make_pods(api: KubeApi, job, nnodes: int, status: dict) -> None:
    for node in range(nnodes):
        labels = {mf.JOB_LABEL: job.id, "batch.kubernetes.io/job-completion-index": str(node)}
        api.create_pod(NS, _pod_name(job, node), labels, status)


def _secret_value(api: KubeApi, ref: dict) -> str:
    secret = api.core.read_namespaced_secret(ref["name"], NS)
    return base64.b64decode(secret.data[ref["key"]]).decode()


def _mount_namespaces() -> bool:
    """Whether a process can get a mount namespace of its own here (root, util-linux)."""
    try:
        return (
            subprocess.run(
                ["unshare", "-m", "--propagation", "private", "true"], capture_output=True
            ).returncode
            == 0
        )
    except OSError:
        return False


MOUNT_NS = _mount_namespaces()


def pod_mounts(mounts: dict[str, str], argv: list[str]) -> list[str]:
    """Run ``argv`` in a mount namespace of its own where each volume is bind-mounted at its
    ``mountPath`` (over a fresh tmpfs on its top folder, /run or /mnt, as in a pod; nothing
    changes on this machine)."""
    tops = sorted({"/" + os.path.realpath(t).strip("/").split("/")[0] for t in mounts})
    steps = [f"mount -t tmpfs tmpfs {top}" for top in tops]  # e.g. /run, /mnt: fresh, private
    for target, source in mounts.items():
        steps.append(f"mkdir -p {shlex.quote(target)}")
        steps.append(f"mount --bind {shlex.quote(source)} {shlex.quote(target)}")
    script = " && ".join(steps) + ' && exec "$@"'
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "pod", *argv]


def run_nodes(
    api: KubeApi,
    kube: KubeEmulator,
    job,
    tmp_path: Path,
    network: list | None = None,
    python: Path | None = None,
) -> list[int]:
    """Play the Trainer controller and the kubelet: run every node of the TrainJob
    (``network``: one network namespace per node, from tests/support/kube_netns.py)."""
    body = _trainjob(api, job)
    trainer = body["spec"]["trainer"]
    pod = body["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"][
        "replicatedJobs"
    ][0]["template"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    nnodes, nproc = trainer["numNodes"], trainer["numProcPerNode"]
    port = free_port()
    procs = []
    for node in range(nnodes):
        root = tmp_path / f"pod-{node}"
        mounts: dict[str, str] = {}
        for m in container["volumeMounts"]:  # each volume as the kubelet lays it out
            vol = volumes[m["name"]]
            where = root / "volumes" / m["name"]
            where.mkdir(parents=True)
            if "secret" in vol:
                s = api.core.read_namespaced_secret(vol["secret"]["secretName"], NS)
                for item in vol["secret"]["items"]:
                    f = where / item["path"]
                    f.write_bytes(base64.b64decode(s.data[item["key"]]))
                    os.chmod(f, vol["secret"]["defaultMode"])
            else:
                cm = api.core.read_namespaced_config_map(vol["configMap"]["name"], NS)
                for key, value in (cm.binary_data or {}).items():
                    f = where / key
                    f.write_bytes(base64.b64decode(value))
                    os.chmod(f, vol["configMap"]["defaultMode"])
            mounts[m["mountPath"]] = str(where)

        def remap(text: str, mounts=mounts) -> str:
            if MOUNT_NS:  # the volumes are mounted where the TrainJob says: nothing to change
                return text
            for path, local in mounts.items():
                text = text.replace(path, local)
            return text

        env = {}
        for e in trainer["env"]:
            if "valueFrom" in e:
                env[e["name"]] = _secret_value(api, e["valueFrom"]["secretKeyRef"])
            else:
                env[e["name"]] = remap(e["value"])
        home = root / "home"
        home.mkdir()
        env = container_env(
            home,
            **env,
            # the image's python (``python``: e.g. a stock image's, without nbscale)
            PATH=f"{(python or Path(sys.executable)).parent}:{os.environ['PATH']}",
            PET_NNODES=str(nnodes),
            PET_NPROC_PER_NODE=str(nproc),
            PET_NODE_RANK=str(node),
            PET_MASTER_ADDR=network[0].address if network else "127.0.0.1",
            PET_MASTER_PORT=str(port),
        )
        if network:
            env["GLOO_SOCKET_IFNAME"] = "eth0"  # the pod's interface, not loopback
        env.pop("AWS_ENDPOINT_URL", None)  # the pod knows only what the TrainJob says
        argv = [*trainer["command"], *[remap(a) for a in trainer["args"]]]
        if MOUNT_NS:
            argv = pod_mounts(mounts, argv)
        if network:
            argv = network[node].wrap(argv)
        labels = {mf.JOB_LABEL: job.id, "batch.kubernetes.io/job-completion-index": str(node)}
        api.create_pod(NS, _pod_name(job, node), labels, {"phase": "Running"})
        procs.append(
            subprocess.Popen(
                argv, env=env, cwd=home, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    codes = []
    for node, proc in enumerate(procs):
        try:
            out = proc.communicate(timeout=240)[0]
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        kube.set_log(NS, _pod_name(job, node), out.splitlines())
        api.patch_pod_status(
            NS, _pod_name(job, node), {"phase": "Succeeded" if proc.returncode == 0 else "Failed"}
        )
        codes.append(proc.returncode)
    kind = "Complete" if codes == [0] * nnodes else "Failed"
    api.patch_trainjob_status(NS, body["metadata"]["name"], {"conditions": [condition(kind)]})
    return codes


SPOT = """
spot_node_selector = { "karpenter.sh/capacity-type" = "spot" }
spot_tolerations = [{ key = "spot", operator = "Exists", effect = "NoSchedule" }]
checkpoint_volume = "nbscale-checkpoints"
tolerations = [{ key = "nvidia.com/gpu", operator = "Exists", effect = "NoSchedule" }]
"""


def add_settings(nbscale_home: Path, text: str) -> None:
    conf = nbscale_home / "config.toml"
    conf.write_text(conf.read_text() + text)


def pod_spec(body: dict) -> dict:
    return body["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"][
        "replicatedJobs"
    ][0]["template"]["spec"]["template"]["spec"]
