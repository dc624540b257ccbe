"""The settings of a ``[backends.NAME] type = "sagemaker"`` table, checked once.

.. code-block:: toml

    [backends.aws]
    type = "sagemaker"
    region = "eu-west-1"
    role_arn = "arn:aws:iam::123456789012:role/nbscale-training"
    storage = "s3://my-bucket/nbscale"          # bundles, outputs, checkpoints, models
    instance_type = "ml.g5.xlarge"              # default for jobs without --instance-type
    # optional
    image = "763104351884.dkr.ecr.eu-west-1.amazonaws.com/pytorch-training:..."
    volume_size_gb = 30
    spot = false                                 # managed spot for every job
    max_wait = 7200                              # spot: seconds to wait for capacity + run
    retry_attempts = 2                           # RetryStrategy.MaximumRetryAttempts
    keep_alive_seconds = 600                     # warm pool the next job of the same shape reuses
    subnets = ["subnet-..."]
    security_group_ids = ["sg-..."]
    kms_key_id = "arn:aws:kms:..."               # outputs and volumes
    tags = { team = "ml" }
    endpoint_url = "http://127.0.0.1:5000"       # an emulator (tests)
    wheelhouse = "./wheels"                      # the runtime wheels a stock image installs
                                                 # (default: built once per nbscale version)

A missing role ARN, storage or region, or no AWS credentials at all, is one
message naming the setting to add. Credentials come from boto3's standard chain
and are never read into nbscale's own objects.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Any

from ...config import BackendConfig
from ...cost import check_price_settings
from ...errors import BackendUnavailable, MissingDependency, SpecError

ROLE_RE = re.compile(r"^arn:aws[a-z\-]*:iam::\d{12}:role/[\w+=,.@\-/]+$")
INSTANCE_RE = re.compile(r"^ml\.[a-z0-9]+\.[a-z0-9]+$")
# AWS Deep Learning Containers account that publishes the stock framework images
DLC_ACCOUNT = "763104351884"
TORCH_IMAGE_VERSION = "2.5.1"
DEFAULT_INSTANCE = "ml.m5.xlarge"
_clients: dict[tuple[str, str, str | None], Any] = {}
_sessions: dict[str, Any] = {}
_clients_lock = threading.Lock()

KNOWN = {
    "region",
    "role_arn",
    "storage",
    "instance_type",
    "image",
    "serving_image",
    "volume_size_gb",
    "spot",
    "max_wait",
    "retry_attempts",
    "keep_alive_seconds",
    "subnets",
    "security_group_ids",
    "kms_key_id",
    "tags",
    "endpoint_url",
    "key_secret_name",
    "poll_seconds",
    "price_per_node_hour",
    "prices",
    "spot_prices",
    "spot_discount",
    "data_capture_percent",
    "rollback_alarms",
    "wheelhouse",
    "pipeline_image",
}


def _table(name: str, key: str) -> str:
    return f"[backends.{name}] {key}"


def is_gpu_instance(instance_type: str) -> bool:
    family = instance_type.split(".")[1] if instance_type.count(".") >= 2 else ""
    return family[:1] in ("g", "p") or family.startswith("trn")


def stock_training_image(region: str, instance_type: str) -> str:
    """The AWS Deep Learning Container for PyTorch training (SageMaker flavour)."""
    if is_gpu_instance(instance_type):
        tag = f"{TORCH_IMAGE_VERSION}-gpu-py311-cu124-ubuntu22.04-sagemaker"
    else:
        tag = f"{TORCH_IMAGE_VERSION}-cpu-py311-ubuntu22.04-sagemaker"
    return f"{DLC_ACCOUNT}.dkr.ecr.{region}.amazonaws.com/pytorch-training:{tag}"


def stock_inference_image(region: str, instance_type: str | None) -> str:
    """The stock SageMaker PyTorch inference image, which serves the nbscale artifact layout."""
    if instance_type and is_gpu_instance(instance_type):
        tag = f"{TORCH_IMAGE_VERSION}-gpu-py311-cu124-ubuntu22.04-sagemaker"
    else:
        tag = f"{TORCH_IMAGE_VERSION}-cpu-py311-ubuntu22.04-sagemaker"
    return f"{DLC_ACCOUNT}.dkr.ecr.{region}.amazonaws.com/pytorch-inference:{tag}"


@dataclass(frozen=True)
class SageMakerSettings:
    name: str
    region: str
    role_arn: str
    storage: str
    instance_type: str = DEFAULT_INSTANCE
    image: str | None = None
    serving_image: str | None = None
    volume_size_gb: int = 30
    spot: bool = False
    max_wait: int | None = None
    retry_attempts: int | None = None
    keep_alive_seconds: int | None = None
    subnets: tuple[str, ...] = ()
    security_group_ids: tuple[str, ...] = ()
    kms_key_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    endpoint_url: str | None = None
    key_secret_name: str = ""
    poll_seconds: float = 5.0
    data_capture_percent: int | None = None
    rollback_alarms: tuple[str, ...] = ()
    wheelhouse: str | None = None
    price_per_node_hour: float | None = None
    pipeline_image: str | None = None

    @property
    def bucket(self) -> str:
        return self.storage.removeprefix("s3://").split("/", 1)[0]

    @property
    def prefix(self) -> str:
        rest = self.storage.removeprefix("s3://").split("/", 1)
        return rest[1].strip("/") if len(rest) > 1 else ""

    def uri(self, *parts: str) -> str:
        key = "/".join(p.strip("/") for p in (self.prefix, *parts) if p)
        return f"s3://{self.bucket}/{key}"

    def storage_options(self) -> dict[str, Any]:
        return {"storage": self.storage, "endpoint_url": self.endpoint_url, "region": self.region}

    def training_image(self, instance_type: str, override: str | None = None) -> str:
        return override or self.image or stock_training_image(self.region, instance_type)

    # -- boto3 clients, made on demand ----------------------------------------------
    def session(self):
        """One boto3 session per region in this process (credentials are resolved once and
        refreshed by botocore when they expire)."""
        try:
            import boto3
        except ImportError:
            raise MissingDependency("boto3", "sagemaker") from None
        with _clients_lock:
            found = _sessions.get(self.region)
            if found is None:
                found = _sessions[self.region] = boto3.session.Session(region_name=self.region)
            return found

    def client(self, service: str):
        """A boto3 client, made once per process for a service, region and endpoint:
        botocore reads each service's model (megabytes of JSON) when a client is made, and
        a notebook submits many jobs. Clients are thread-safe; credentials refresh inside."""
        import os

        endpoint = self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
        key = (service, self.region, endpoint)
        session = self.session()
        with _clients_lock:
            found = _clients.get(key)
            if found is None:
                from botocore.config import Config

                found = _clients[key] = session.client(
                    service,
                    endpoint_url=self.endpoint_url or None,
                    config=Config(retries={"mode": "standard", "max_attempts": 5}),
                )
            return found

    def require_credentials(self) -> None:
        """One message when boto3's chain finds no credentials at all."""
        if self.session().get_credentials() is None:
            raise BackendUnavailable(
                f"the {self.name} backend found no AWS credentials",
                "set AWS_PROFILE (a profile in ~/.aws/credentials) or AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or run where a role provides them",
            )


def _int(name: str, key: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SpecError(_table(name, key), f"must be a whole number {low}..{high}, got {value!r}")
    return value


def _strings(name: str, key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise SpecError(_table(name, key), "must be a list of strings", f'write {key} = ["..."]')
    return tuple(value)


def _default_region() -> str | None:
    try:
        import boto3
    except ImportError:
        raise MissingDependency("boto3", "sagemaker") from None
    return boto3.session.Session().region_name


def settings(bconf: BackendConfig) -> SageMakerSettings:
    """Check a backend table; raise one ``SpecError`` naming the first setting to fix."""
    raw = dict(bconf.settings)
    name = bconf.name
    unknown = sorted(set(raw) - KNOWN)
    if unknown:
        raise SpecError(
            _table(name, unknown[0]),
            "is not a SageMaker backend setting",
            f"known settings: {', '.join(sorted(KNOWN))}",
        )
    check_price_settings(name, raw)
    role = raw.get("role_arn")
    if not role:
        raise SpecError(
            _table(name, "role_arn"),
            "is missing: SageMaker runs jobs as an IAM role",
            f'add role_arn = "arn:aws:iam::ACCOUNT:role/ROLE" to [backends.{name}]',
        )
    if not isinstance(role, str) or not ROLE_RE.match(role):
        raise SpecError(
            _table(name, "role_arn"),
            f"{role!r} is not an IAM role ARN",
            "write arn:aws:iam::123456789012:role/NAME",
        )
    storage = raw.get("storage")
    if not storage:
        raise SpecError(
            _table(name, "storage"),
            "is missing: bundles, outputs and models go to S3",
            f'add storage = "s3://BUCKET/PREFIX" to [backends.{name}]',
        )
    if not isinstance(storage, str) or not re.match(
        r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/|$)", storage
    ):
        raise SpecError(
            _table(name, "storage"),
            f"{storage!r} is not an S3 location",
            'write "s3://BUCKET/PREFIX"',
        )
    region = raw.get("region") or _default_region()
    if not region:
        raise SpecError(
            _table(name, "region"),
            "is missing and boto3 has no default region",
            f'add region = "us-east-1" (or your region) to [backends.{name}], or set AWS_REGION',
        )
    instance = raw.get("instance_type", DEFAULT_INSTANCE)
    if not isinstance(instance, str) or not INSTANCE_RE.match(instance):
        raise SpecError(
            _table(name, "instance_type"),
            f"{instance!r} is not a SageMaker instance type",
            'write e.g. "ml.m5.xlarge" or "ml.g5.2xlarge"',
        )
    spot = raw.get("spot", False)
    if not isinstance(spot, bool):
        raise SpecError(_table(name, "spot"), "must be true or false")
    tags = raw.get("tags") or {}
    if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
        raise SpecError(
            _table(name, "tags"), "must be a table of strings", 'write tags = { team = "ml" }'
        )
    kms = raw.get("kms_key_id")
    if kms is not None and (not isinstance(kms, str) or not kms):
        raise SpecError(_table(name, "kms_key_id"), "must be a KMS key id or ARN")
    subnets = _strings(name, "subnets", raw["subnets"]) if "subnets" in raw else ()
    groups = (
        _strings(name, "security_group_ids", raw["security_group_ids"])
        if "security_group_ids" in raw
        else ()
    )
    if bool(subnets) != bool(groups):
        raise SpecError(
            _table(name, "subnets" if not subnets else "security_group_ids"),
            "is missing: a VPC configuration needs both subnets and security_group_ids",
            "give both, or neither",
        )
    poll = raw.get("poll_seconds", 5.0)
    if isinstance(poll, bool) or not isinstance(poll, int | float) or poll < 0:
        raise SpecError(_table(name, "poll_seconds"), "must be a number of seconds >= 0")
    return SageMakerSettings(
        name=name,
        region=str(region),
        role_arn=role,
        storage=storage.rstrip("/"),
        instance_type=instance,
        image=raw.get("image") or None,
        serving_image=raw.get("serving_image") or None,
        volume_size_gb=_int(name, "volume_size_gb", raw.get("volume_size_gb", 30), 1, 16384),
        spot=spot,
        max_wait=(
            _int(name, "max_wait", raw["max_wait"], 1, 28 * 24 * 3600)
            if "max_wait" in raw
            else None
        ),
        retry_attempts=(
            _int(name, "retry_attempts", raw["retry_attempts"], 1, 30)
            if "retry_attempts" in raw
            else None
        ),
        keep_alive_seconds=(
            _int(name, "keep_alive_seconds", raw["keep_alive_seconds"], 0, 21600)
            if "keep_alive_seconds" in raw
            else None
        ),
        subnets=subnets,
        security_group_ids=groups,
        kms_key_id=kms,
        tags={str(k): v for k, v in tags.items()},
        endpoint_url=raw.get("endpoint_url") or None,
        key_secret_name=str(raw.get("key_secret_name") or f"nbscale/{name}/signing-keys"),
        poll_seconds=float(poll),
        data_capture_percent=(
            _int(name, "data_capture_percent", raw["data_capture_percent"], 1, 100)
            if "data_capture_percent" in raw
            else None
        ),
        rollback_alarms=(
            _strings(name, "rollback_alarms", raw["rollback_alarms"])
            if "rollback_alarms" in raw
            else ()
        ),
        wheelhouse=_wheelhouse(name, raw.get("wheelhouse")),
        price_per_node_hour=(
            float(raw["price_per_node_hour"]) if "price_per_node_hour" in raw else None
        ),
        pipeline_image=raw.get("pipeline_image") or None,
    )


def _wheelhouse(name: str, value: Any) -> str | None:
    if value is None:
        return None
    from pathlib import Path

    if not isinstance(value, str) or not list(Path(value).expanduser().glob("*.whl")):
        raise SpecError(
            _table(name, "wheelhouse"),
            f"{value!r} is not a folder of wheels",
            "build one with: python -m nbscale.runtime.wheelhouse --kind job -o FOLDER",
        )
    return str(Path(value).expanduser())


def prewarm(bconf: BackendConfig) -> None:
    """Make this process's clients ahead of the first job (a notebook loading nbscale calls
    it in a background thread): a client costs a second of JSON parsing when first made."""
    try:
        found = settings(bconf)
        for service in ("s3", "secretsmanager", "sagemaker"):
            found.client(service)
    except Exception:  # noqa: BLE001, S110 - a warm-up only: submit reports any problem
        return


def forget_clients() -> None:
    """Drop this process's sessions and clients (after credentials or endpoints change)."""
    with _clients_lock:
        _sessions.clear()
        _clients.clear()
