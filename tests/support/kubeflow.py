"""Playing Kubeflow's controllers and kubelet for the kubeflow tests: the TrainJob's pods as local
processes with the TrainJob's exact command, environment and volumes.

The pods are built as the Trainer builds them (``jobset_of``): from the ClusterTrainingRuntime
the TrainJob names (the ``torch-distributed`` runtime of a Trainer release, rendered from its
Helm chart, or nbscale's own in deploy/kubeflow/) merged with the TrainJob: ``trainer``'s
image, command, args, env, numNodes and resourcesPerNode, the torch plugin's ``PET_*``
variables, then every ``runtimePatches`` entry's pod and container overrides; JobSet's and
Job's defaults fill the rest (``restartPolicy: OnFailure``, ``backoffLimit: 6``). Those two
decide what happens to a node whose container exits non-zero: run again in the same pod
(OnFailure) or in a new one (Never) until the Job has failed more than ``backoffLimit``
times, as the Job controller counts."""

from __future__ import annotations

import base64
import copy
import os
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nbscale.backends.kubeflow import manifests as mf
from nbscale.celljob import prepare_cell
from nbscale.specs import Entry, JobSpec
from tests.support.emulators import container_env, free_port
from tests.support.kube_emulator import KubeApi, KubeEmulator, condition
from tests.support.kube_schemas import TRAINER_RELEASES, torch_runtime

REPO = Path(__file__).resolve().parents[2]
NBSCALE_RUNTIME = REPO / "deploy" / "kubeflow" / "nbscale-torch-distributed.yaml"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
TORCH_PORT = 29400  # the torch plugin's PET_MASTER_PORT

NS = "team-a"
CELL = """\
import torch.distributed as dist
t = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(t)
print("rank", dist.get_rank(), "of", dist.get_world_size(), "sees", t.item())
total = t.item() * factor
world = dist.get_world_size()
"""


def _cell(outputs=("total", "world"), nodes=2, factor=10.0, pad=0, source=None):
    import torch

    spec = JobSpec(entry=Entry("module", "placeholder"), name="kf-cell", backend="kf", nodes=nodes)
    ns = {"torch": torch, "factor": factor}
    if pad:
        ns["pad"] = os.urandom(pad)
    source = source or CELL + ("n = len(pad)\n" if pad else "")
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


def cluster_runtime(name: str, release: str = TRAINER_RELEASES[0]) -> dict[str, Any]:
    """The ClusterTrainingRuntime ``name`` as installed on a cluster of Trainer ``release``."""
    if name == "torch-distributed":
        return torch_runtime(release)
    if name == "nbscale-torch-distributed":
        return yaml.safe_load(NBSCALE_RUNTIME.read_text())
    raise LookupError(f"ClusterTrainingRuntime {name} is not installed")


def _merge_named(base: list[dict], extra: list[dict], key: str = "name") -> list[dict]:
    """A list map merged as a strategic merge patch does: same key, fields merged."""
    out = [copy.deepcopy(item) for item in base]
    for item in extra:
        found = next((o for o in out if o.get(key) == item.get(key)), None)
        if found is None:
            out.append(copy.deepcopy(item))
        else:
            for k, v in item.items():
                if k == "env":
                    found["env"] = _merge_named(found.get("env") or [], v)
                elif k == "volumeMounts":
                    found["volumeMounts"] = _merge_named(found.get("volumeMounts") or [], v)
                else:
                    found[k] = copy.deepcopy(v)
    return out


def _patch_pod(template: dict, patch: dict) -> None:
    """One runtimePatches entry's pod template onto the JobSet's pod template."""
    meta = template.setdefault("metadata", {})
    for part in ("labels", "annotations"):
        if (patch.get("metadata") or {}).get(part):
            meta[part] = {**(meta.get(part) or {}), **patch["metadata"][part]}
    spec = template.setdefault("spec", {})
    for k, v in (patch.get("spec") or {}).items():
        if k in ("containers", "initContainers", "volumes"):
            spec[k] = _merge_named(spec.get(k) or [], v)
        elif k in ("tolerations", "imagePullSecrets", "schedulingGates"):
            spec[k] = [*(spec.get(k) or []), *copy.deepcopy(v)]
        elif k == "nodeSelector":
            spec[k] = {**(spec.get(k) or {}), **v}
        else:
            spec[k] = copy.deepcopy(v)


def jobset_of(trainjob: dict[str, Any], runtime: dict[str, Any]) -> dict[str, Any]:
    """The JobSet the Trainer makes of ``trainjob`` on ``runtime`` (its spec), defaults filled."""
    spec = copy.deepcopy(runtime["spec"]["template"]["spec"])
    trainer = trainjob["spec"].get("trainer") or {}
    name = trainjob["metadata"]["name"]
    nnodes = trainer.get("numNodes") or runtime["spec"]["mlPolicy"].get("numNodes") or 1
    nproc = trainer.get("numProcPerNode", 1)
    for patch in trainjob["spec"].get("runtimePatches") or []:
        patched = (patch.get("trainingRuntimeSpec") or {}).get("template") or {}
        for rjob in (patched.get("spec") or {}).get("replicatedJobs") or []:
            (target,) = [r for r in spec["replicatedJobs"] if r["name"] == rjob["name"]]
            tpl = target["template"]
            for part in ("labels", "annotations"):
                extra = (rjob.get("template", {}).get("metadata") or {}).get(part)
                if extra:
                    tpl.setdefault("metadata", {})[part] = {
                        **(tpl["metadata"].get(part) or {}),
                        **extra,
                    }
            pod = ((rjob.get("template") or {}).get("spec") or {}).get("template")
            if pod:
                _patch_pod(tpl["spec"]["template"], pod)
    for rjob in spec["replicatedJobs"]:
        rjob.setdefault("replicas", 1)  # JobSet's defaults
        job = rjob["template"]["spec"]
        job.setdefault("backoffLimit", 6)  # Job's default
        job.setdefault("completionMode", "Indexed")
        pod = job["template"]["spec"]
        pod.setdefault("restartPolicy", "OnFailure")  # JobSet's webhook default
        if rjob["name"] != mf.NODE:
            continue
        job["parallelism"] = job["completions"] = nnodes
        (container,) = [c for c in pod["containers"] if c["name"] == mf.NODE]
        for k in ("image", "command", "args"):
            if trainer.get(k) is not None:
                container[k] = copy.deepcopy(trainer[k])
        if trainer.get("resourcesPerNode"):
            container["resources"] = copy.deepcopy(trainer["resourcesPerNode"])
        pet = [
            {"name": "PET_NNODES", "value": str(nnodes)},
            {"name": "PET_NPROC_PER_NODE", "value": str(nproc)},
            {
                "name": "PET_NODE_RANK",
                "valueFrom": {
                    "fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX}']"}
                },
            },
            {"name": "PET_MASTER_ADDR", "value": f"{name}-{mf.NODE}-0-0.{name}"},
            {"name": "PET_MASTER_PORT", "value": str(TORCH_PORT)},
        ]
        container["env"] = _merge_named(container.get("env") or [], trainer.get("env") or [])
        container["env"] = _merge_named(container["env"], pet)
    return {
        "metadata": {"name": name, "namespace": trainjob["metadata"]["namespace"]},
        "spec": spec,
    }


def node_job(jobset: dict[str, Any]) -> dict[str, Any]:
    """The Job spec of the ``node`` replicated job."""
    (rjob,) = [r for r in jobset["spec"]["replicatedJobs"] if r["name"] == mf.NODE]
    return rjob["template"]["spec"]


def installed_runtime(api: KubeApi, ref: dict[str, Any], release: str) -> dict[str, Any]:
    """The runtime a TrainJob names, read from the cluster as the Trainer reads it (the
    release's own when the cluster has none: a TrainJob the webhook did not check)."""
    try:
        if ref.get("kind") == "TrainingRuntime":
            return api.custom.get_namespaced_custom_object(
                mf.TRAINER_GROUP, mf.TRAINER_VERSION, NS, "trainingruntimes", ref["name"]
            )
        return api.custom.get_cluster_custom_object(
            mf.TRAINER_GROUP, mf.TRAINER_VERSION, "clustertrainingruntimes", ref["name"]
        )
    except Exception as exc:  # noqa: BLE001
        if getattr(exc, "status", None) != 404:
            raise
    return cluster_runtime(ref["name"], release)


def install_runtime(api: KubeApi, runtime: dict[str, Any]) -> None:
    """``kubectl apply`` of a ClusterTrainingRuntime (deploy/kubeflow/)."""
    api.custom.create_cluster_custom_object(
        mf.TRAINER_GROUP, mf.TRAINER_VERSION, "clustertrainingruntimes", runtime
    )


def trainer_pods(trainjob: dict[str, Any], release: str = TRAINER_RELEASES[0]) -> list[dict]:
    """The node pods of ``trainjob`` (metadata and spec), as the Trainer, JobSet and the Job
    controller make them on a cluster of ``release``."""
    runtime = cluster_runtime(trainjob["spec"]["runtimeRef"]["name"], release)
    return pods_of(trainjob, jobset_of(trainjob, runtime))


def pods_of(trainjob: dict[str, Any], jobset: dict[str, Any]) -> list[dict]:
    """The node pods the Job controller makes of ``jobset``'s node job."""
    job = node_job(jobset)
    pods = []
    for node in range(job["parallelism"]):
        tpl = copy.deepcopy(job["template"])
        meta = tpl.get("metadata") or {}
        pods.append(
            {
                "metadata": {
                    "name": f"{trainjob['metadata']['name']}-{mf.NODE}-0-{node}",
                    "labels": {**(meta.get("labels") or {}), COMPLETION_INDEX: str(node)},
                    "annotations": {**(meta.get("annotations") or {}), COMPLETION_INDEX: str(node)},
                },
                "spec": tpl["spec"],
            }
        )
    return pods


@dataclass
class TrainerRun:
    """What the played Trainer did: every container run as (node, pod, exit code)."""

    codes: list[int]
    runs: list[tuple[int, str, int]] = field(default_factory=list)
    restart_policy: str = ""
    backoff_limit: int = 0


def _trainjob_exists(api: KubeApi, name: str) -> bool:
    return any(t["metadata"]["name"] == name for t in api.trainjobs(NS))


def _pod_env(api: KubeApi, container: dict, meta: dict, remap) -> dict[str, str]:
    env: dict[str, str] = {}
    for e in container.get("env") or []:
        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
        field_ref = (e.get("valueFrom") or {}).get("fieldRef")
        if ref:
            env[e["name"]] = _secret_value(api, ref)
        elif field_ref:
            path = field_ref["fieldPath"]
            key = path.split("['", 1)[1].rstrip("']")
            env[e["name"]] = meta["annotations"][key]
        else:
            env[e["name"]] = remap(e["value"])
    return env


def _lay_out_volumes(api: KubeApi, pod: dict, root: Path, shared: Path) -> dict[str, str]:
    """Each volume of the node container as the kubelet lays it out: {mountPath: folder}."""
    volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
    (container,) = [c for c in pod["spec"]["containers"] if c["name"] == mf.NODE]
    mounts: dict[str, str] = {}
    for m in container.get("volumeMounts") or []:
        vol = volumes[m["name"]]
        where = root / "volumes" / m["name"]
        if "persistentVolumeClaim" in vol:  # one folder for every pod that claims it
            where = shared / "pvc" / vol["persistentVolumeClaim"]["claimName"]
            where.mkdir(parents=True, exist_ok=True)
        elif not where.exists():
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
    return mounts


def _container_status(restarts: int, state: dict, last: dict | None = None) -> dict:
    out = {"name": mf.NODE, "image": "x", "imageID": "", "ready": "running" in state,
           "restartCount": restarts, "state": state}  # fmt: skip
    if last:
        out["lastState"] = last
    return out


def play_trainer(
    api: KubeApi,
    kube: KubeEmulator,
    job,
    tmp_path: Path,
    network: list | None = None,
    python: Path | None = None,
    release: str | None = None,
    restart_delay: float = 0.0,
) -> TrainerRun:
    """Play the Trainer controller, JobSet, the Job controller and the kubelet: run every node
    pod of the TrainJob (``network``: one network namespace per node, from
    tests/support/kube_netns.py), each failed container again as the runtime's restart policy
    and backoff limit say (``restart_delay``: the kubelet's back-off before a restart), and
    stop when the TrainJob is deleted."""
    body = _trainjob(api, job)
    name = body["metadata"]["name"]
    release = release or getattr(kube, "trainer_release", TRAINER_RELEASES[0])
    runtime = installed_runtime(api, body["spec"]["runtimeRef"], release)
    jobset = jobset_of(body, runtime)
    spec = node_job(jobset)
    pods = pods_of(body, jobset)
    policy = spec["template"]["spec"]["restartPolicy"]
    backoff = spec["backoffLimit"]
    result = TrainerRun([], restart_policy=policy, backoff_limit=backoff)
    port = free_port()
    lock = threading.Lock()
    failures = [0]

    def start(node: int, pod_name: str, root: Path) -> subprocess.Popen:
        pod = pods[node]
        (container,) = [c for c in pod["spec"]["containers"] if c["name"] == mf.NODE]
        mounts = _lay_out_volumes(api, pod, root, tmp_path)

        def remap(text: str) -> str:
            if MOUNT_NS:  # the volumes are mounted where the pod says: nothing to change
                return text
            for path, local in mounts.items():
                text = text.replace(path, local)
            return text

        env = _pod_env(api, container, pod["metadata"], remap)
        home = root / "home"
        home.mkdir(parents=True, exist_ok=True)
        # the cluster's DNS and pod network: the master's name is node 0's address here
        env["PET_MASTER_ADDR"] = network[0].address if network else "127.0.0.1"
        env["PET_MASTER_PORT"] = str(port)
        env = container_env(
            home,
            **env,
            # the image's python (``python``: e.g. a stock image's, without nbscale)
            PATH=f"{(python or Path(sys.executable)).parent}:{os.environ['PATH']}",
        )
        if network:
            env["GLOO_SOCKET_IFNAME"] = "eth0"  # the pod's interface, not loopback
        env.pop("AWS_ENDPOINT_URL", None)  # the pod knows only what the TrainJob says
        argv = [*container["command"], *[remap(a) for a in container.get("args") or []]]
        if MOUNT_NS:
            argv = pod_mounts(mounts, argv)
        if network:
            argv = network[node].wrap(argv)
        return subprocess.Popen(
            argv, env=env, cwd=home, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    def run_node(node: int) -> int:
        pod = pods[node]
        pod_name, root, restarts, attempt = pod["metadata"]["name"], tmp_path / f"pod-{node}", 0, 0
        meta = {
            "name": pod_name,
            "namespace": NS,
            **{k: v for k, v in pod["metadata"].items() if k != "name"},
        }
        api.core.create_namespaced_pod(
            NS,
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": meta,
                "spec": pod["spec"],
                "status": {"phase": "Running"},
            },  # fmt: skip
        )
        while True:
            proc = start(node, pod_name, root)
            try:
                out = proc.communicate(timeout=240)[0]
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
            code = proc.returncode
            kube.set_log(NS, pod_name, out.splitlines())
            with lock:
                result.runs.append((node, pod_name, code))
                if code:
                    failures[0] += 1
                again = bool(code) and failures[0] <= backoff
            term = {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                   "finishedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}  # fmt: skip
            if not again or not _trainjob_exists(api, name):
                phase = "Succeeded" if code == 0 else "Failed"
                _set_pod(api, pod_name, {"phase": phase, "containerStatuses": [
                    _container_status(restarts, term)]})  # fmt: skip
                return code
            if policy == "OnFailure":  # the same pod, its container again after a back-off
                restarts += 1
                _set_pod(api, pod_name, {"phase": "Running", "containerStatuses": [
                    _container_status(restarts, {"waiting": {"reason": "CrashLoopBackOff",
                                      "message": "back-off restarting failed container"}}, term)]})  # fmt: skip
            else:  # Never: the pod failed; the Job controller makes a new one
                _set_pod(api, pod_name, {"phase": "Failed", "containerStatuses": [
                    _container_status(0, term)]})  # fmt: skip
                attempt += 1
                pod_name = f"{pod['metadata']['name']}-{attempt}"
                root = tmp_path / f"pod-{node}-{attempt}"
                api.core.create_namespaced_pod(
                    NS,
                    {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "metadata": {**meta, "name": pod_name},
                        "spec": pod["spec"],
                        "status": {"phase": "Running"},
                    },  # fmt: skip
                )
            time.sleep(restart_delay)
            if not _trainjob_exists(api, name):  # deleted (and its pods with it)
                return code

    threads: list[threading.Thread] = []
    codes: dict[int, int] = {}
    errors: list[BaseException] = []

    def worker(node: int) -> None:
        try:
            codes[node] = run_node(node)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(exc)

    for node in range(len(pods)):
        t = threading.Thread(target=worker, args=(node,), daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    result.codes = [codes[n] for n in range(len(pods))]
    if _trainjob_exists(api, name):
        if result.codes == [0] * len(pods):
            cond = condition("Complete")
        else:
            cond = condition("Failed", reason="JobSetFailed",
                             message=f"jobset {name} failed: job {name}-{mf.NODE}-0 has failed "
                             "(BackoffLimitExceeded)")  # fmt: skip
        api.patch_trainjob_status(NS, name, {"conditions": [cond]})
    return result


def _set_pod(api: KubeApi, name: str, status: dict) -> None:
    try:
        api.patch_pod_status(NS, name, status)
    except Exception as exc:  # noqa: BLE001 - a pod deleted with its TrainJob
        if getattr(exc, "status", None) != 404:
            raise


def run_nodes(
    api: KubeApi,
    kube: KubeEmulator,
    job,
    tmp_path: Path,
    network: list | None = None,
    python: Path | None = None,
    release: str | None = None,
) -> list[int]:
    """``play_trainer``: each node's last exit code."""
    return play_trainer(api, kube, job, tmp_path, network, python, release).codes


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
