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
    image = "registry.example.com/team/torch:2.5"  # default: the pytorch/pytorch image of
                                                  # the kernel's torch and Python (images.json)
    cpu = "2"                                     # per node; default: procs per node
    memory = "8Gi"                                # per node
    node_selector = { "nvidia.com/gpu.product" = "NVIDIA-H100-80GB-HBM3" }
    tolerations = [{ key = "nvidia.com/gpu", operator = "Exists", effect = "NoSchedule" }]
    service_account = "nbscale"
    key_secret = "nbscale-keys"                   # prefix of the per-user key Secret (nbscale-keys-USER)
    istio_sidecar = false                         # true: keep Istio's sidecar in the job's pods
    labels = { team = "ml" }
    annotations = {}
    wheelhouse = true                             # install nbscale's runtime wheels in a stock image
    kfp_host = "http://127.0.0.1:8888"            # Kubeflow Pipelines API (in a Kubeflow
                                                  # notebook: default ml-pipeline.kubeflow)
    kfp_namespace = "team-a"                      # where runs, step pods and the key Secret go
    kfp_secret = "kfp-credentials"                # Secret with "token" or "cookie" for KFP
    deployment_mode = "Standard"                  # KServe: Serverless (default) or Standard
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
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, ConfigDict, Field, StrictInt, StrictStr, field_validator
from typing_extensions import TypedDict

from ...config import BackendConfig
from ...errors import SpecError
from ..settings_base import RemoteSettings, Text, invalid

# None: the pytorch/pytorch image of the kernel's torch and Python (images.json)
DEFAULT_IMAGE = None
DEFAULT_RUNTIME = "torch-distributed"
KEY_SECRET = "nbscale-keys"  # the same Secret the compiled KFP pipelines mount
KEY_MOUNT = "/var/run/secrets/nbscale"
CONFIGMAP_LIMIT = 900 * 1024  # a ConfigMap holds at most 1 MiB; stay clear of it
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY = re.compile(
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
CHECKPOINT_MOUNT = "/var/run/nbscale/checkpoints"
TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}


def _k8s_name(value: Any) -> Any:
    if not isinstance(value, str) or not _DNS1123.match(value) or len(value) > 253:
        raise invalid(
            f"{value!r} is not a Kubernetes object name",
            "use lower-case letters, digits and dashes",
        )
    return value


def _quantity(value: Any) -> Any:
    if value is None:
        return None
    text = (
        str(value) if isinstance(value, str | int | float) and not isinstance(value, bool) else ""
    )
    if not _QUANTITY.match(text):
        raise invalid(f"{value!r} is not a Kubernetes quantity", 'e.g. "2", "500m", "8Gi"')
    return text


#: a Kubernetes object name (DNS-1123: lower-case letters, digits and dashes)
K8sName = Annotated[str, BeforeValidator(_k8s_name)]
#: a Kubernetes quantity ("2", "500m", "8Gi"); a TOML number is taken as its text
Quantity = Annotated[str, BeforeValidator(_quantity)]
StrMap = dict[StrictStr, StrictStr]


class Toleration(TypedDict, total=False):
    """One entry of ``tolerations``/``spot_tolerations``: a pod toleration as Kubernetes has it."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]

    key: StrictStr
    operator: Literal["Exists", "Equal"]
    value: StrictStr
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]
    tolerationSeconds: StrictInt


_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


class KubeflowSettings(RemoteSettings):
    platform: ClassVar[str] = "kubeflow"

    storage: Text | None = Field(None, examples=["s3://nbscale/work"])
    context: Text | None = Field(None, examples=["kind-kubeflow"])
    kubeconfig: Text | None = Field(None, examples=["~/.kube/config"])
    namespace: K8sName | None = Field(None, examples=["team-a"])
    endpoint_url: Text | None = Field(None, examples=["http://127.0.0.1:9000"])
    pod_endpoint_url: Text | None = Field(None, examples=["http://minio-service.kubeflow:9000"])
    region: Text | None = Field(None, examples=["us-east-1"])
    storage_secret: K8sName | None = Field(None, examples=["nbscale-s3"])
    runtime: K8sName = Field(DEFAULT_RUNTIME, examples=[DEFAULT_RUNTIME])
    runtime_kind: Literal["ClusterTrainingRuntime", "TrainingRuntime"] = Field(
        "ClusterTrainingRuntime", examples=["TrainingRuntime"]
    )
    image: Text | None = Field(
        DEFAULT_IMAGE, examples=["pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime"]
    )
    image_pull_secrets: tuple[K8sName, ...] = Field((), examples=[["regcred"]])
    cpu: Quantity | None = Field(None, examples=["2"])
    memory: Quantity | None = Field(None, examples=["8Gi"])
    node_selector: StrMap = Field(
        default_factory=dict, examples=[{"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}]
    )
    tolerations: tuple[Toleration, ...] = Field((), examples=[[_TOLERATION]])
    service_account: K8sName | None = Field(None, examples=["nbscale"])
    key_secret: K8sName = Field(KEY_SECRET, examples=[KEY_SECRET])
    labels: StrMap = Field(default_factory=dict, examples=[{"team": "ml"}])
    annotations: StrMap = Field(default_factory=dict, examples=[{"owner": "ml-team"}])
    istio_sidecar: bool = Field(False, strict=True, examples=[False])
    wheelhouse: bool = Field(True, strict=True, examples=[True])
    configmap_limit: StrictInt = Field(CONFIGMAP_LIMIT, examples=[CONFIGMAP_LIMIT])
    kfp_host: Text | None = Field(None, examples=["http://127.0.0.1:8888"])
    kfp_namespace: K8sName | None = Field(None, examples=["kubeflow"])
    # a Secret (in the kube namespace) whose key "token" or "cookie" authenticates to KFP
    kfp_secret: K8sName | None = Field(None, examples=["kfp-credentials"])
    kfp_experiment: Text = Field("nbscale", examples=["nbscale"])
    serving_runtime: K8sName = Field("nbscale", examples=["nbscale"])
    serving_image: Text | None = Field(None, examples=["registry.example.com/predictor:1"])
    # KServe's serving.kserve.io/deploymentMode: Knative (Serverless) or Standard (RawDeployment)
    deployment_mode: Literal["Serverless", "Knative", "RawDeployment", "Standard"] = Field(
        "Serverless", examples=["Standard"]
    )
    poll_seconds: float = Field(2.0, strict=True, examples=[2.0])
    spot_node_selector: StrMap = Field(
        default_factory=dict, examples=[{"karpenter.sh/capacity-type": "spot"}]
    )
    spot_tolerations: tuple[Toleration, ...] = Field(
        (), examples=[[{"key": "spot", "operator": "Exists", "effect": "NoSchedule"}]]
    )
    checkpoint_volume: K8sName | None = Field(None, examples=["nbscale-checkpoints"])
    # cost (nbscale.cost reads them; checked by nbscale.cost.check_price_settings)
    prices: dict[str, float] = Field(default_factory=dict, examples=[{"g5.xlarge": 1.006}])
    spot_prices: dict[str, float] = Field(default_factory=dict, examples=[{"g5.xlarge": 0.4}])
    spot_discount: float | None = Field(None, examples=[0.6])
    price_per_node_hour: float | None = Field(None, examples=[1.5])
    node_hour_price: float | None = Field(None, examples=[0.2])
    gpu_hour_price: float | None = Field(None, examples=[2.5])

    @field_validator("storage")
    @classmethod
    def _s3_uri(cls, value: str | None) -> str | None:
        if value and not value.startswith("s3://"):
            raise invalid(f"{value!r} is not an s3:// URI", "e.g. s3://bucket/nbscale")
        return value

    @field_validator("configmap_limit", "poll_seconds", mode="before")
    @classmethod
    def _non_negative(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise invalid("must be a number >= 0")
        return value

    @field_validator("configmap_limit")
    @classmethod
    def _fits_a_configmap(cls, value: int) -> int:
        if value > CONFIGMAP_LIMIT:
            raise invalid(
                f"at most {CONFIGMAP_LIMIT} bytes fit in a ConfigMap",
                f"set at most {CONFIGMAP_LIMIT}",
            )
        return value

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


#: the keys a ``type = "kubeflow"`` table may have
KNOWN = frozenset(KubeflowSettings.known_settings())


def settings(config: BackendConfig) -> KubeflowSettings:
    """Check a ``[backends.NAME] type = "kubeflow"`` table; one ``SpecError`` for the first
    problem (``[backends.NAME] PATH: PROBLEM; FIX``)."""
    return KubeflowSettings.load(config)
