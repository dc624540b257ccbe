"""The settings of a ``[backends.NAME] type = "kubeflow"`` table, checked once.

.. code-block:: toml

    [backends.kf]
    type = "kubeflow"
    storage = "s3://nbscale/work"                 # bundles and outputs (MinIO or S3)
    # optional
    context = "kind-kubeflow"                     # kube context (default: the current one)
    namespace = "team-a"                          # default: the context's namespace, else "default"
    endpoint_url = "http://127.0.0.1:9000"        # the object store as this machine sees it
    pod_endpoint_url = "http://minio-service.kubeflow:9000"   # ... and as the pods see it
    storage_secret = "nbscale-s3"                 # Secret with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY
    runtime = "torch-distributed"                 # a ClusterTrainingRuntime (or runtime_kind = "TrainingRuntime")
    image = "pytorch/pytorch:2.13.0-cuda13.0-cudnn9-runtime"
    cpu = "2"                                     # per node; default: procs per node
    memory = "8Gi"                                # per node
    node_selector = { "nvidia.com/gpu.product" = "NVIDIA-H100-80GB-HBM3" }
    tolerations = [{ key = "nvidia.com/gpu", operator = "Exists", effect = "NoSchedule" }]
    service_account = "nbscale"
    key_secret = "nbscale-keys"                   # the Secret nbscale writes the signing keys to
    labels = { team = "ml" }
    annotations = {}
    wheelhouse = true                             # install nbscale's runtime wheels in a stock image
    kfp_host = "http://127.0.0.1:8888"            # Kubeflow Pipelines API
    serving_runtime = "nbscale"                   # the ClusterServingRuntime (deploy/kserve/)
    serving_image = "..."                         # or a custom predictor container image
    # --spot: the pods go to spot nodes (both optional, at least one for --spot to work)
    spot_node_selector = { "karpenter.sh/capacity-type" = "spot" }
    spot_tolerations = [{ key = "spot", operator = "Exists", effect = "NoSchedule" }]
    checkpoint_volume = "nbscale-checkpoints"     # a ReadWriteMany PVC: nbscale.checkpoint's
                                                  # folder, so a replaced pod resumes
    # cost (nbscale.cost): USD per node hour
    prices = { "g5.xlarge" = 1.006 }              # per instance type (spec.instance_type)
    spot_prices = { "g5.xlarge" = 0.40 }          # ... on spot nodes
    spot_discount = 0.6                           # else: share saved on spot nodes
    node_hour_price = 0.20                        # else: a node ...
    gpu_hour_price = 2.50                         # ... plus its GPUs

A setting nbscale does not know is refused (a typo must not be silently ignored);
credentials never appear here: the pods read them from ``storage_secret``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ...config import BackendConfig
from ...cost import check_price_settings
from ...errors import SpecError

DEFAULT_IMAGE = "pytorch/pytorch:2.13.0-cuda13.0-cudnn9-runtime"  # the torch-distributed runtime's
DEFAULT_RUNTIME = "torch-distributed"
KEY_SECRET = "nbscale-keys"  # the same Secret the compiled KFP pipelines mount
KEY_MOUNT = "/var/run/secrets/nbscale"
CONFIGMAP_LIMIT = 900 * 1024  # a ConfigMap holds at most 1 MiB; stay clear of it
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY = re.compile(
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)

KNOWN = {
    "storage",
    "context",
    "kubeconfig",
    "namespace",
    "endpoint_url",
    "pod_endpoint_url",
    "region",
    "storage_secret",
    "runtime",
    "runtime_kind",
    "image",
    "image_pull_secrets",
    "cpu",
    "memory",
    "node_selector",
    "tolerations",
    "service_account",
    "key_secret",
    "labels",
    "annotations",
    "wheelhouse",
    "configmap_limit",
    "kfp_host",
    "kfp_namespace",
    "kfp_experiment",
    "serving_runtime",
    "serving_image",
    "poll_seconds",
    "spot_node_selector",
    "spot_tolerations",
    "checkpoint_volume",
    "prices",
    "spot_prices",
    "spot_discount",
    "price_per_node_hour",
    "node_hour_price",
    "gpu_hour_price",
}
CHECKPOINT_MOUNT = "/var/run/nbscale/checkpoints"
TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}


@dataclass(frozen=True)
class KubeflowSettings:
    name: str
    storage: str | None = None
    context: str | None = None
    kubeconfig: str | None = None
    namespace: str | None = None
    endpoint_url: str | None = None
    pod_endpoint_url: str | None = None
    region: str | None = None
    storage_secret: str | None = None
    runtime: str = DEFAULT_RUNTIME
    runtime_kind: str = "ClusterTrainingRuntime"
    image: str = DEFAULT_IMAGE
    image_pull_secrets: tuple[str, ...] = ()
    cpu: str | None = None
    memory: str | None = None
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()
    service_account: str | None = None
    key_secret: str = KEY_SECRET
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    wheelhouse: bool = True
    configmap_limit: int = CONFIGMAP_LIMIT
    kfp_host: str | None = None
    kfp_namespace: str | None = None
    kfp_experiment: str = "nbscale"
    serving_runtime: str = "nbscale"
    serving_image: str | None = None
    poll_seconds: float = 2.0
    spot_node_selector: dict[str, str] = field(default_factory=dict)
    spot_tolerations: tuple[dict[str, Any], ...] = ()
    checkpoint_volume: str | None = None

    def require_spot(self) -> None:
        """``--spot`` needs to know which nodes are spot nodes in this cluster."""
        if not (self.spot_node_selector or self.spot_tolerations):
            raise SpecError(
                "spot",
                f"the {self.name} backend (kubeflow) has no spot nodes configured",
                f"add spot_node_selector (and spot_tolerations) to [backends.{self.name}], e.g. "
                'spot_node_selector = { "karpenter.sh/capacity-type" = "spot" }; or drop --spot',
            )

    def storage_options(self) -> dict[str, Any]:
        return {
            "storage": self.storage,
            "endpoint_url": self.endpoint_url,
            "region": self.region,
        }

    def require_storage(self, what: str) -> str:
        if not self.storage:
            raise SpecError(
                f"[backends.{self.name}] storage",
                f"is not set; {what} needs object storage the pods can reach",
                'add storage = "s3://BUCKET/PREFIX" (and endpoint_url for MinIO)',
            )
        return self.storage


def _where(name: str, key: str) -> str:
    return f"[backends.{name}] {key}"


def _str_map(name: str, key: str, value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise SpecError(
            _where(name, key), "must be a table of strings", f'e.g. {key} = {{ a = "b" }}'
        )
    return dict(value)


def _quantity(name: str, key: str, value: Any) -> str | None:
    if value is None:
        return None
    text = str(value)
    if not _QUANTITY.match(text):
        raise SpecError(
            _where(name, key), f"{value!r} is not a Kubernetes quantity", 'e.g. "2", "500m", "8Gi"'
        )
    return text


def _dns_name(name: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not _DNS1123.match(value) or len(value) > 253:
        raise SpecError(
            _where(name, key),
            f"{value!r} is not a Kubernetes object name",
            "use lower-case letters, digits and dashes",
        )
    return value


def settings(config: BackendConfig) -> KubeflowSettings:
    raw = dict(config.settings)
    unknown = sorted(set(raw) - KNOWN)
    if unknown:
        raise SpecError(
            _where(config.name, unknown[0]),
            "is not a setting of the kubeflow backend",
            f"known settings: {', '.join(sorted(KNOWN))}",
        )
    name = config.name
    kw: dict[str, Any] = {"name": name}
    for key in (
        "storage",
        "context",
        "kubeconfig",
        "endpoint_url",
        "pod_endpoint_url",
        "region",
        "image",
        "kfp_host",
        "kfp_namespace",
        "kfp_experiment",
        "serving_image",
        "runtime_kind",
    ):
        if key in raw:
            if not isinstance(raw[key], str) or not raw[key]:
                raise SpecError(_where(name, key), "must be a non-empty string")
            kw[key] = raw[key]
    if kw.get("storage") and not kw["storage"].startswith("s3://"):
        raise SpecError(
            _where(name, "storage"),
            f"{kw['storage']!r} is not an s3:// URI",
            "e.g. s3://bucket/nbscale",
        )
    if kw.get("runtime_kind", "ClusterTrainingRuntime") not in (
        "ClusterTrainingRuntime",
        "TrainingRuntime",
    ):
        raise SpecError(
            _where(name, "runtime_kind"), "must be ClusterTrainingRuntime or TrainingRuntime"
        )
    for key in (
        "namespace",
        "runtime",
        "storage_secret",
        "service_account",
        "key_secret",
        "serving_runtime",
    ):
        if key in raw:
            kw[key] = _dns_name(name, key, raw[key])
    for key in ("cpu", "memory"):
        kw[key] = _quantity(name, key, raw.get(key))
    for key in ("node_selector", "spot_node_selector", "labels", "annotations"):
        if key in raw:
            kw[key] = _str_map(name, key, raw[key])
    for key in ("tolerations", "spot_tolerations"):
        if key in raw:
            tol = raw[key]
            if not isinstance(tol, list) or not all(
                isinstance(t, dict) and set(t) <= TOLERATION_KEYS for t in tol
            ):
                raise SpecError(
                    _where(name, key),
                    f"must be a list of tables with {', '.join(sorted(TOLERATION_KEYS))}",
                    f'e.g. {key} = [{{ key = "nvidia.com/gpu", operator = "Exists" }}]',
                )
            kw[key] = tuple(dict(t) for t in tol)
    if "checkpoint_volume" in raw:
        kw["checkpoint_volume"] = _dns_name(name, "checkpoint_volume", raw["checkpoint_volume"])
    check_price_settings(name, raw)
    if "image_pull_secrets" in raw:
        kw["image_pull_secrets"] = tuple(
            _dns_name(name, "image_pull_secrets", s) for s in raw["image_pull_secrets"]
        )
    if "wheelhouse" in raw:
        if not isinstance(raw["wheelhouse"], bool):
            raise SpecError(_where(name, "wheelhouse"), "must be true or false")
        kw["wheelhouse"] = raw["wheelhouse"]
    for key, kind in (("configmap_limit", int), ("poll_seconds", (int, float))):
        if key in raw:
            if not isinstance(raw[key], kind) or isinstance(raw[key], bool) or raw[key] < 0:
                raise SpecError(_where(name, key), "must be a number >= 0")
            kw[key] = raw[key]
    if kw.get("configmap_limit", 0) > CONFIGMAP_LIMIT:
        raise SpecError(
            _where(name, "configmap_limit"),
            f"at most {CONFIGMAP_LIMIT} bytes fit in a ConfigMap",
            f"set at most {CONFIGMAP_LIMIT}",
        )
    return KubeflowSettings(**kw)
