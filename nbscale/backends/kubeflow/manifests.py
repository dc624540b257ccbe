"""The Kubernetes objects nbscale sends, as plain dicts (what ``--dry-run`` prints).

- ``trainjob``: a Kubeflow Trainer ``TrainJob`` (``trainer.kubeflow.org/v1alpha1``,
  Trainer v2.2) that runs ``python -m nbscale.runtime.launch`` on every node; node
  selectors, tolerations and the key Secret's volume go through ``runtimePatches``.
  ``spec.spot`` adds the backend's ``spot_node_selector``/``spot_tolerations``; a
  ``checkpoint_volume`` (a PVC) is mounted on every node and
  ``NBSCALE_CHECKPOINT_DIR`` points ``nbscale.checkpoint`` into it (one folder per
  job), so the pod that replaces a reclaimed spot node resumes from the last checkpoint.
- ``bundle_configmap``: the cell bundle, when it is small enough to travel in a
  ConfigMap the job mounts (``binaryData``), instead of object storage.
- ``key_secret``: the signing keys (``nbscale.keys.export``) as an Opaque Secret, one per
  user (``key_secret_name``: ``nbscale-keys-alice``) in the namespace of the pods that
  mount it; the TrainJob and the InferenceService name it, never hold its bytes.

The job's pods get the backend's ``annotations`` and, unless ``istio_sidecar = true``,
``sidecar.istio.io/inject: "false"`` (an injected sidecar keeps running after the node
container ends, so the pod never reaches Succeeded). ``runtimePatches`` cannot set the
pods' ``restartPolicy`` or the Job's ``backoffLimit``: those come from the runtime
(``deploy/kubeflow/nbscale-torch-distributed.yaml``: ``Never`` and 0).
- ``inference_service``: a KServe ``InferenceService`` (``serving.kserve.io/v1beta1``)
  whose predictor runs the nbscale serving runtime.

Every builder is pure: same input, same dict, no cluster needed.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from ...errors import SpecError
from ...serving.busypoll import WINDOW_ENV as BUSY_POLL_ENV
from ..images import node_shape
from .images import node_gpus, stock_image
from .settings import CHECKPOINT_MOUNT, KEY_MOUNT, KubeflowSettings

TRAINER_GROUP = "trainer.kubeflow.org"
TRAINER_VERSION = "v1alpha1"
KSERVE_GROUP = "serving.kserve.io"
KSERVE_VERSION = "v1beta1"
MANAGER = "nbscale.io/nbscale"  # the owner of our runtimePatches entry
NODE = "node"  # the torch runtime's replicated job and container name
JOB_LABEL = "nbscale.io/job-id"
ENDPOINT_LABEL = "nbscale.io/endpoint"
MANAGED = {"app.kubernetes.io/managed-by": "nbscale"}
BUNDLE_MOUNT = "/var/run/nbscale/bundle"
KEY_FILE = f"{KEY_MOUNT}/keys.json"
WHEELS_DIR = "/tmp/nbscale-wheels"
# the serving runtime's token-free GET /metrics (deploy/kserve/nbscale-runtime.yaml, --metrics-port);
# a custom serving_image must answer there too for Endpoint.metrics()
METRICS_PORT = 8095
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)

# The container's shell stage: install the runtime wheels when the job carries them (a
# stock PyTorch image has no nbscale), then exec the launcher with the job's arguments.
ENTRY_SCRIPT = (
    'if [ -n "$NBSCALE_WHEELHOUSE_URL" ]; then '
    f"mkdir -p {WHEELS_DIR} && "
    "python -c 'import io,os,sys,urllib.request,zipfile;"
    'zipfile.ZipFile(io.BytesIO(urllib.request.urlopen(os.environ["NBSCALE_WHEELHOUSE_URL"]).read()))'
    f'.extractall("{WHEELS_DIR}")\' && '
    "python -m pip install --no-index --no-deps --disable-pip-version-check -q "
    f"{WHEELS_DIR}/*.whl || exit 1; fi; "
    'exec python -m nbscale.runtime.launch "$@"'
)
COMMAND = ["/bin/sh", "-c", ENTRY_SCRIPT, "nbscale-launch"]
ISTIO_INJECT = "sidecar.istio.io/inject"
USER_ANNOTATION = "nbscale.io/user"
_NOT_NAME = re.compile(r"[^a-z0-9]+")


def key_secret_name(prefix: str, user: str) -> str:
    """The key Secret of one user: ``PREFIX-USER`` with the user's name made a DNS label
    (``alice`` -> ``nbscale-keys-alice``); a name that had to change (``alice@example.com``)
    gets 6 hex digits of its hash, so two users never share a Secret."""
    slug = _NOT_NAME.sub("-", user.lower()).strip("-")[:40].strip("-")
    if slug != user or not slug:
        slug = f"{slug}-{hashlib.sha256(user.encode()).hexdigest()[:6]}".lstrip("-")
    return f"{prefix}-{slug}"[:253]


def object_name(job_id: str) -> str:
    """A TrainJob name (RFC 1035 label, at most 63 characters) for a job id."""
    name = job_id.lower()
    if not name[:1].isalpha():
        name = f"nb-{name}"
    return name[:63].rstrip("-")


def check_labels(what: str, labels: dict[str, str]) -> None:
    for key, value in labels.items():
        if not _LABEL_KEY.match(key) or len(key) > 316:
            raise SpecError(
                what, f"{key!r} is not a Kubernetes label key", "e.g. team or example.com/team"
            )
        if len(value) > 63 or not _LABEL_VALUE.match(value):
            raise SpecError(
                what,
                f"{key}={value!r}: a label value is at most 63 letters, digits, '-', '_', '.'",
                "shorten it or use an annotation",
            )


@dataclass(frozen=True)
class Staged:
    """Where the job's inputs are: ``bundle`` is an ``s3://`` URI or a path in the pod."""

    job_id: str
    spec_b64: str
    outputs_uri: str
    bundle: str | None = None
    configmap: str | None = None  # the ConfigMap holding the bundle (or script), if any
    configmap_key: str = "cell.zip"  # its file name in the mounted folder
    wheelhouse_url: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    key_secret: str | None = None  # the user's key Secret (default: the settings' key_secret)
    cuda_max: str | None = None  # the newest CUDA the cluster's Trainer runtime is set up for

    def args(self) -> list[str]:
        args = ["--job-id", self.job_id, "--spec", self.spec_b64, "--outputs", self.outputs_uri]
        if self.bundle:
            args += ["--bundle", self.bundle]
        return args


def _env(spec: dict[str, Any], settings: KubeflowSettings, staged: Staged) -> list[dict]:
    env: list[dict[str, Any]] = [
        {"name": k, "value": str(v)} for k, v in sorted((spec.get("env") or {}).items())
    ]
    env.append({"name": "NBSCALE_KEY_FILE", "value": KEY_FILE})
    env.append({"name": "PYTHONUNBUFFERED", "value": "1"})
    if settings.pod_endpoint_url or settings.endpoint_url:
        env.append(
            {
                "name": "NBSCALE_S3_ENDPOINT_URL",
                "value": settings.pod_endpoint_url or settings.endpoint_url,
            }
        )
        env.append(
            {
                "name": "AWS_ENDPOINT_URL_S3",
                "value": settings.pod_endpoint_url or settings.endpoint_url,
            }
        )
    if settings.region:
        env.append({"name": "AWS_REGION", "value": settings.region})
    if settings.storage_secret:
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            env.append(
                {
                    "name": var,
                    "valueFrom": {"secretKeyRef": {"name": settings.storage_secret, "key": var}},
                }
            )
    if staged.wheelhouse_url:
        env.append({"name": "NBSCALE_WHEELHOUSE_URL", "value": staged.wheelhouse_url})
    env.extend({"name": k, "value": v} for k, v in sorted(staged.extra_env.items()))
    if settings.checkpoint_volume:  # on the PVC: outlives the pod, read by its replacement
        env.append(
            {"name": "NBSCALE_CHECKPOINT_DIR", "value": f"{CHECKPOINT_MOUNT}/{staged.job_id}"}
        )
    return env


def resolve(spec: dict[str, Any], settings: KubeflowSettings) -> dict[str, Any]:
    """The spec with the node's real shape. On a node type whose GPUs the table knows
    (``images.json``; ``spec.instance_type``) every process gets GPUs (1 unless
    ``gpus_per_proc`` says more), ``procs_per_node`` left at 1 becomes one process per
    ``gpus_per_proc`` GPUs of the node, and asking for more GPUs than it has is refused.
    On other nodes the job asks for ``procs_per_node x gpus_per_proc`` GPUs."""
    gpus = node_gpus(spec.get("instance_type"))
    if gpus is None:  # a node type the table does not know: the job asks for its GPUs
        return spec
    return node_shape(spec, spec["instance_type"], gpus, "node type")


def image_of(spec: dict[str, Any], settings: KubeflowSettings, cuda_max: str | None = None) -> str:
    """The job's image, the backend's, else the stock image of the kernel's torch and
    Python with no newer CUDA than ``cuda_max`` (the cluster's Trainer runtime's,
    ``images.cuda_cap``), refused, naming the nearest, when the table has none."""
    own = spec.get("image") or settings.image
    if own:
        return own
    return stock_image(bool(spec.get("gpus_per_proc")), settings.name, cuda_max=cuda_max)


def procs_of(resources: dict[str, Any], spec: dict[str, Any]) -> int:
    """``numProcPerNode``: one process per ``gpus_per_proc`` of ``resourcesPerNode``'s
    ``nvidia.com/gpu``; ``procs_per_node`` on a node without GPUs."""
    gpus = int(resources["requests"].get("nvidia.com/gpu") or 0)
    per_proc = int(spec.get("gpus_per_proc") or 0)
    return gpus // per_proc if gpus and per_proc else int(spec.get("procs_per_node") or 1)


def node_resources(spec: dict[str, Any], settings: KubeflowSettings) -> dict[str, Any]:
    procs = int(spec.get("procs_per_node") or 1)
    gpus = int(spec.get("gpus_per_proc") or 0) * procs
    requests: dict[str, Any] = {"cpu": settings.cpu or str(procs)}
    if settings.memory:
        requests["memory"] = settings.memory
    limits: dict[str, Any] = {}
    if settings.memory:
        limits["memory"] = settings.memory
    if gpus:
        requests["nvidia.com/gpu"] = str(gpus)
        limits["nvidia.com/gpu"] = str(gpus)
    out: dict[str, Any] = {"requests": requests}
    if limits:
        out["limits"] = limits
    return out


def job_labels(job_id: str, spec: dict[str, Any], settings: KubeflowSettings) -> dict[str, str]:
    labels = {**settings.labels, **(spec.get("tags") or {}), **MANAGED, JOB_LABEL: job_id}
    check_labels("tags", labels)
    return labels


def trainjob(
    job_id: str, spec: dict[str, Any], settings: KubeflowSettings, staged: Staged, namespace: str
) -> dict[str, Any]:
    """The TrainJob that runs ``spec`` on ``spec['nodes']`` pods of the torch runtime."""
    spec = resolve(spec, settings)
    name = object_name(job_id)
    labels = job_labels(job_id, spec, settings)
    node_selector = dict(settings.node_selector)
    if spec.get("instance_type"):
        node_selector["node.kubernetes.io/instance-type"] = spec["instance_type"]
    tolerations = [dict(t) for t in settings.tolerations]
    if spec.get("spot"):
        settings.require_spot()
        node_selector.update(settings.spot_node_selector)
        tolerations += [dict(t) for t in settings.spot_tolerations]
    volumes: list[dict[str, Any]] = [
        {
            "name": "nbscale-keys",
            "secret": {
                "secretName": staged.key_secret or settings.key_secret,
                "defaultMode": 0o400,
                "items": [{"key": "keys.json", "path": "keys.json"}],
            },
        }
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "nbscale-keys", "mountPath": KEY_MOUNT, "readOnly": True}
    ]
    if settings.checkpoint_volume:
        volumes.append(
            {
                "name": "nbscale-checkpoints",
                "persistentVolumeClaim": {"claimName": settings.checkpoint_volume},
            }
        )
        mounts.append({"name": "nbscale-checkpoints", "mountPath": CHECKPOINT_MOUNT})
    if staged.configmap:
        volumes.append(
            {
                "name": "nbscale-bundle",
                "configMap": {"name": staged.configmap, "defaultMode": 0o400},
            }
        )
        mounts.append({"name": "nbscale-bundle", "mountPath": BUNDLE_MOUNT, "readOnly": True})
    pod_spec: dict[str, Any] = {
        "containers": [{"name": NODE, "volumeMounts": mounts}],
        "volumes": volumes,
    }
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if settings.service_account:
        pod_spec["serviceAccountName"] = settings.service_account
    if settings.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s} for s in settings.image_pull_secrets]
    resources = node_resources(spec, settings)
    trainer: dict[str, Any] = {
        "image": image_of(spec, settings, staged.cuda_max),
        "command": list(COMMAND),
        "args": staged.args(),
        "env": _env(spec, settings, staged),
        "numNodes": int(spec.get("nodes") or 1),
        "numProcPerNode": procs_of(resources, spec),
        "resourcesPerNode": resources,
    }
    body: dict[str, Any] = {
        "apiVersion": f"{TRAINER_GROUP}/{TRAINER_VERSION}",
        "kind": "TrainJob",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": {**settings.annotations, "nbscale.io/job-name": spec.get("name") or ""},
        },
        "spec": {
            "runtimeRef": {
                "apiGroup": TRAINER_GROUP,
                "kind": settings.runtime_kind,
                "name": settings.runtime,
            },
            "trainer": trainer,
            "runtimePatches": [
                {
                    "manager": MANAGER,
                    "trainingRuntimeSpec": {
                        "template": {
                            "spec": {
                                "replicatedJobs": [
                                    {
                                        "name": NODE,
                                        "template": {
                                            "spec": {
                                                "template": {
                                                    "metadata": pod_metadata(job_id, settings),
                                                    "spec": pod_spec,
                                                }
                                            }
                                        },
                                    }
                                ]
                            }
                        }
                    },
                }
            ],
        },
    }
    if spec.get("max_runtime"):
        body["spec"]["activeDeadlineSeconds"] = int(spec["max_runtime"])
    return body


def pod_annotations(settings: KubeflowSettings) -> dict[str, str]:
    """What nbscale's pods (job nodes, pipeline steps) are annotated with: the backend's
    ``annotations`` and Istio's injection switched off unless ``istio_sidecar``."""
    annotations = dict(settings.annotations)
    if not settings.istio_sidecar:
        annotations[ISTIO_INJECT] = "false"
    return annotations


def pod_metadata(job_id: str, settings: KubeflowSettings) -> dict[str, Any]:
    """The node pods' labels and annotations (``pod_annotations``)."""
    annotations = pod_annotations(settings)
    meta: dict[str, Any] = {"labels": {**MANAGED, JOB_LABEL: job_id}}
    if annotations:
        meta["annotations"] = annotations
    return meta


def bundle_configmap(
    job_id: str,
    data: bytes,
    namespace: str,
    owner: dict[str, Any] | None = None,
    key: str = "cell.zip",
) -> dict[str, Any]:
    """The ConfigMap that carries a small bundle or a script (``binaryData``, base64)."""
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": f"{object_name(job_id)}-bundle",
            "namespace": namespace,
            "labels": {**MANAGED, JOB_LABEL: job_id},
        },
        "binaryData": {key: base64.b64encode(data).decode()},
        "immutable": True,
    }
    if owner:  # deleted with its TrainJob by the garbage collector, too
        body["metadata"]["ownerReferences"] = [owner]
    return body


def owner_reference(obj: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        "blockOwnerDeletion": False,
    }


def key_secret(name: str, document: str, namespace: str, user: str | None = None) -> dict[str, Any]:
    """The Secret holding ``nbscale.keys.export(...)`` (sent, never printed or stored);
    ``user``: whose keys, in an annotation."""
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(MANAGED)}
    if user:
        meta["annotations"] = {USER_ANNOTATION: user}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": meta,
        "data": {"keys.json": base64.b64encode(document.encode()).decode()},
    }


def secret_note(body: dict[str, Any], purpose: str) -> str:
    """What ``--dry-run`` says of a Secret it would create or update: its name, namespace
    and keys on stderr, never its data, and never the object itself (a placeholder value
    would make ``kubectl apply`` create a broken Secret)."""
    meta = body["metadata"]
    keys = ", ".join(sorted(body.get("data", {})))
    return (
        f"Secret {meta['name']} in namespace {meta['namespace']} would be created or updated "
        f"({purpose}; keys: {keys}; its data is never shown)"
    )


def shell_line(container: dict[str, Any]) -> str:
    """The container's command and arguments as one shell line (for people)."""
    return shlex.join([*container.get("command", []), *container.get("args", [])])


# -- KServe --------------------------------------------------------------------


@dataclass(frozen=True)
class ServingOptions:
    """What a KServe deployment can say beyond the replica range."""

    min_replicas: int = 1
    max_replicas: int = 1
    scale_metric: str | None = None  # concurrency | rps | cpu | memory
    scale_target: int | None = None
    container_concurrency: int | None = None
    timeout_s: int | None = None
    cpu: str | None = None
    memory: str | None = None
    gpus: int = 0
    canary_traffic_percent: int | None = None


def token_secret_name(endpoint: str) -> str:
    return f"nbscale-token-{endpoint}"[:253]


def token_secret(endpoint: str, token: str, namespace: str) -> dict[str, Any]:
    """The bearer token callers of the endpoint send (the predictor reads it from here)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": token_secret_name(endpoint),
            "namespace": namespace,
            "labels": {**MANAGED, ENDPOINT_LABEL: endpoint},
        },
        "data": {"token": base64.b64encode(token.encode()).decode()},
    }


def inference_service(
    name: str,
    storage_uri: str,
    settings: KubeflowSettings,
    opts: ServingOptions,
    namespace: str,
    config: dict[str, Any] | None = None,
    key_secret: str | None = None,
) -> dict[str, Any]:
    """An InferenceService whose predictor serves the packaged artifact at ``storage_uri``;
    its pods mount ``key_secret`` (the user's, ``key_secret_name``; default: the settings')."""
    requests: dict[str, Any] = {"cpu": opts.cpu or "1"}
    limits: dict[str, Any] = {}
    if opts.memory:
        requests["memory"] = limits["memory"] = opts.memory
    if opts.gpus:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(opts.gpus)
    env: list[dict[str, Any]] = [
        {"name": "NBSCALE_KEY_FILE", "value": KEY_FILE},
        {
            "name": "NBSCALE_SERVING_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": token_secret_name(name), "key": "token"}},
        },
    ]
    if opts.scale_metric == "cpu":
        # the HPA scales on the pods' CPU: the runtime's busy polling after an answer would
        # add CPU that serves nothing (``nbscale.serving.busypoll``)
        env.append({"name": BUSY_POLL_ENV, "value": "0"})
    args: list[str] = []
    for key in ("max_batch_size", "max_batch_delay_ms", "max_queue"):
        if config and config.get(key) is not None:
            args += [f"--{key.replace('_', '-')}", str(config[key])]
    model: dict[str, Any] = {
        "modelFormat": {"name": "nbscale"},
        "protocolVersion": "v2",
        "storageUri": storage_uri,
        "env": env,
        **({"args": args} if args else {}),
        "resources": {"requests": requests, **({"limits": limits} if limits else {})},
        "volumeMounts": [{"name": "nbscale-keys", "mountPath": KEY_MOUNT, "readOnly": True}],
    }
    if settings.serving_image:
        model["image"] = settings.serving_image
    else:
        model["runtime"] = settings.serving_runtime
    predictor: dict[str, Any] = {
        "model": model,
        "minReplicas": opts.min_replicas,
        "maxReplicas": opts.max_replicas,
        "volumes": [
            {
                "name": "nbscale-keys",
                "secret": {
                    "secretName": key_secret or settings.key_secret,
                    "defaultMode": 0o400,
                    "items": [{"key": "keys.json", "path": "keys.json"}],
                },
            }
        ],
    }
    if opts.scale_metric:
        predictor["scaleMetric"] = opts.scale_metric
    if opts.scale_target is not None:
        predictor["scaleTarget"] = opts.scale_target
    if opts.container_concurrency is not None:
        predictor["containerConcurrency"] = opts.container_concurrency
    if opts.timeout_s is not None:
        predictor["timeout"] = opts.timeout_s
    if opts.canary_traffic_percent is not None:
        predictor["canaryTrafficPercent"] = opts.canary_traffic_percent
    if settings.node_selector:
        predictor["nodeSelector"] = dict(settings.node_selector)
    if settings.tolerations:
        predictor["tolerations"] = [dict(t) for t in settings.tolerations]
    if settings.service_account:
        predictor["serviceAccountName"] = settings.service_account
    labels = {**settings.labels, **MANAGED, ENDPOINT_LABEL: name}
    check_labels("labels", labels)
    return {
        "apiVersion": f"{KSERVE_GROUP}/{KSERVE_VERSION}",
        "kind": "InferenceService",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": {
                **settings.annotations,
                "serving.kserve.io/deploymentMode": "Serverless",
            },
        },
        "spec": {"predictor": predictor},
    }
