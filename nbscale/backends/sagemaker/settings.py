"""The settings of a ``[backends.NAME] type = "sagemaker"`` table, checked once.

.. code-block:: toml

    [backends.aws]
    type = "sagemaker"
    region = "eu-west-1"
    role_arn = "arn:aws:iam::123456789012:role/nbscale-training"
    storage = "s3://my-bucket/nbscale"          # bundles, outputs, checkpoints, models
    instance_type = "ml.g5.xlarge"              # default for jobs without --instance-type
    endpoint_instance_type = "ml.m5.large"      # default for endpoints without --instance-type
    # optional
    image = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/nbscale:0.1"   # with nbscale in it
                                                 # (default: the AWS PyTorch image of the
                                                 # kernel's torch and Python, images.json)
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
from typing import Annotated, Any, ClassVar

from pydantic import (
    BeforeValidator,
    Field,
    StrictBool,
    StrictStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ...config import BackendConfig
from ...errors import BackendUnavailable, MissingDependency
from ..settings_base import RemoteSettings, Text, invalid

ROLE_RE = re.compile(r"^arn:aws[a-z\-]*:iam::\d{12}:role/[\w+=,.@\-/]+$")
INSTANCE_RE = re.compile(r"^ml\.[a-z0-9]+\.[a-z0-9]+$")
STORAGE_RE = re.compile(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/|$)")
DEFAULT_INSTANCE = "ml.m5.xlarge"
DEFAULT_ENDPOINT_INSTANCE = "ml.m5.large"
_clients: dict[tuple[str, str, str | None], Any] = {}
_sessions: dict[str, Any] = {}
_clients_lock = threading.Lock()


def _table(name: str, key: str) -> str:
    return f"[backends.{name}] {key}"


def is_gpu_instance(instance_type: str) -> bool:
    """Whether the instance type has CUDA GPUs (``images.json``'s instance table); a
    Trainium/Inferentia type or an unknown GPU family is refused with one message."""
    from .images import node

    return node(instance_type).gpus > 0


def stock_training_image(region: str, instance_type: str, backend: str = "NAME") -> str:
    """The AWS Deep Learning Container for PyTorch training in ``region`` whose torch and
    Python are the kernel's (``images.json``), CPU or GPU as the instance type is."""
    from .images import stock_image

    setting = f'image = "..." in [backends.{backend}]'
    return stock_image("training", region, is_gpu_instance(instance_type), setting)


def _whole(low: int, high: int) -> Any:
    """A whole number from ``low`` to ``high`` (not a bool, not a float)."""

    def check(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise invalid(f"must be a whole number {low}..{high}, got {value!r}")
        return value

    return Annotated[int, Field(ge=low, le=high), BeforeValidator(check)]


VolumeSize = _whole(1, 16384)
MaxWait = _whole(1, 28 * 24 * 3600)
Retries = _whole(1, 30)
KeepAlive = _whole(0, 21600)
Percent = _whole(1, 100)


def _backend(info: ValidationInfo) -> str:
    return str(info.data.get("name", "NAME"))


class SageMakerSettings(RemoteSettings):
    platform: ClassVar[str] = "sagemaker"

    # the order of the fields is the order problems are reported in
    role_arn: Text = Field(
        None,  # type: ignore[assignment] - refused by _role when missing
        validate_default=True,
        examples=["arn:aws:iam::123456789012:role/nbscale-training"],
    )
    storage: Text = Field(
        None,  # type: ignore[assignment] - refused by _storage when missing
        validate_default=True,
        examples=["s3://my-bucket/nbscale"],
    )
    region: Text = Field(
        None,  # type: ignore[assignment] - boto3's default region, else refused
        validate_default=True,
        examples=["eu-west-1"],
    )
    instance_type: Text = Field(DEFAULT_INSTANCE, examples=["ml.g5.xlarge"])
    # endpoints have their own default: a training GPU type would bill around the clock
    endpoint_instance_type: Text = Field(DEFAULT_ENDPOINT_INSTANCE, examples=["ml.c6i.large"])
    image: StrictStr | None = Field(None, examples=["ACCOUNT.dkr.ecr.REGION.amazonaws.com/x:1"])
    serving_image: StrictStr | None = Field(
        None, examples=["ACCOUNT.dkr.ecr.REGION.amazonaws.com/x:1"]
    )
    volume_size_gb: VolumeSize = Field(30, examples=[30])
    spot: StrictBool = Field(False, examples=[True])
    max_wait: MaxWait | None = Field(None, examples=[7200])
    retry_attempts: Retries | None = Field(None, examples=[2])
    keep_alive_seconds: KeepAlive | None = Field(None, examples=[600])
    subnets: tuple[str, ...] = Field((), examples=[["subnet-0123"]])
    security_group_ids: tuple[str, ...] = Field((), examples=[["sg-0123"]])
    kms_key_id: str | None = Field(None, examples=["arn:aws:kms:REGION:ACCOUNT:key/ID"])
    tags: dict[str, StrictStr] = Field(default_factory=dict, examples=[{"team": "ml"}])
    endpoint_url: StrictStr | None = Field(None, examples=["http://127.0.0.1:5000"])
    key_secret_name: Text = Field(
        None,  # type: ignore[assignment] - nbscale/NAME/signing-keys
        validate_default=True,
        examples=["nbscale/aws/signing-keys"],
    )
    poll_seconds: float = Field(5.0, examples=[5.0])
    data_capture_percent: Percent | None = Field(None, examples=[20])
    rollback_alarms: tuple[str, ...] = Field((), examples=[["my-endpoint-5xx"]])
    wheelhouse: str | None = Field(None, examples=["./wheels"])
    pipeline_image: StrictStr | None = Field(
        None, examples=["ACCOUNT.dkr.ecr.REGION.amazonaws.com/x:1"]
    )
    # cost (nbscale.cost reads them; checked by nbscale.cost.check_price_settings)
    price_per_node_hour: float | None = Field(None, examples=[1.5])
    prices: dict[str, float] = Field(default_factory=dict, examples=[{"ml.g5.xlarge": 1.2}])
    spot_prices: dict[str, float] = Field(default_factory=dict, examples=[{"ml.g5.xlarge": 0.5}])
    spot_discount: float | None = Field(None, examples=[0.6])

    @field_validator("role_arn", mode="before")
    @classmethod
    def _role(cls, value: Any, info: ValidationInfo) -> Any:
        if not value:
            raise invalid(
                "is missing: SageMaker runs jobs as an IAM role",
                f'add role_arn = "arn:aws:iam::ACCOUNT:role/ROLE" to [backends.{_backend(info)}]',
            )
        if not isinstance(value, str) or not ROLE_RE.match(value):
            raise invalid(
                f"{value!r} is not an IAM role ARN", "write arn:aws:iam::123456789012:role/NAME"
            )
        return value

    @field_validator("storage", mode="before")
    @classmethod
    def _storage(cls, value: Any, info: ValidationInfo) -> Any:
        if not value:
            raise invalid(
                "is missing: bundles, outputs and models go to S3",
                f'add storage = "s3://BUCKET/PREFIX" to [backends.{_backend(info)}]',
            )
        if not isinstance(value, str) or not STORAGE_RE.match(value):
            raise invalid(f"{value!r} is not an S3 location", 'write "s3://BUCKET/PREFIX"')
        return value.rstrip("/")

    @field_validator("region", mode="before")
    @classmethod
    def _region(cls, value: Any, info: ValidationInfo) -> Any:
        region = value or _default_region()
        if not region:
            raise invalid(
                "is missing and boto3 has no default region",
                f'add region = "us-east-1" (or your region) to [backends.{_backend(info)}], '
                "or set AWS_REGION",
            )
        return region

    @field_validator("instance_type", "endpoint_instance_type", mode="before")
    @classmethod
    def _instance(cls, value: Any) -> Any:
        if not isinstance(value, str) or not INSTANCE_RE.match(value):
            raise invalid(
                f"{value!r} is not a SageMaker instance type",
                'write e.g. "ml.m5.xlarge" or "ml.g5.2xlarge"',
            )
        return value

    @field_validator("image", "serving_image", "endpoint_url", "pipeline_image", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return value or None

    @field_validator("tags", mode="before")
    @classmethod
    def _no_tags(cls, value: Any) -> Any:
        return value or {}

    @field_validator("kms_key_id", mode="before")
    @classmethod
    def _kms(cls, value: Any) -> Any:
        if value is not None and (not isinstance(value, str) or not value):
            raise invalid("must be a KMS key id or ARN")
        return value

    @field_validator("subnets", "security_group_ids", "rollback_alarms", mode="before")
    @classmethod
    def _strings(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
            raise invalid("must be a list of strings", f'write {info.field_name} = ["..."]')
        return tuple(value)

    @field_validator("key_secret_name", mode="before")
    @classmethod
    def _key_secret(cls, value: Any, info: ValidationInfo) -> Any:
        return value or f"nbscale/{_backend(info)}/signing-keys"

    @field_validator("poll_seconds", mode="before")
    @classmethod
    def _seconds(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise invalid("must be a number of seconds >= 0")
        return float(value)

    @field_validator("wheelhouse", mode="before")
    @classmethod
    def _wheelhouse(cls, value: Any) -> Any:
        if value is None:
            return None
        from pathlib import Path

        if not isinstance(value, str) or not list(Path(value).expanduser().glob("*.whl")):
            raise invalid(
                f"{value!r} is not a folder of wheels",
                "build one with: python -m nbscale.runtime.wheelhouse --kind job -o FOLDER",
            )
        return str(Path(value).expanduser())

    @model_validator(mode="after")
    def _vpc(self) -> SageMakerSettings:
        if bool(self.subnets) != bool(self.security_group_ids):
            raise invalid(
                "is missing: a VPC configuration needs both subnets and security_group_ids",
                "give both, or neither",
                field="subnets" if not self.subnets else "security_group_ids",
            )
        return self

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
        """The job's own image, the backend's ``image``, else the stock image of the
        kernel's torch and Python in this region (refused when the table has none)."""
        return override or self.image or stock_training_image(self.region, instance_type, self.name)

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


def _default_region() -> str | None:
    try:
        import boto3
    except ImportError:
        raise MissingDependency("boto3", "sagemaker") from None
    return boto3.session.Session().region_name


#: the keys a ``type = "sagemaker"`` table may have
KNOWN = frozenset(SageMakerSettings.known_settings())


def settings(bconf: BackendConfig) -> SageMakerSettings:
    """Check a backend table; raise one ``SpecError`` naming the first setting to fix
    (``[backends.NAME] PATH: PROBLEM; FIX``)."""
    return SageMakerSettings.load(bconf)


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
