"""The CreateTrainingJob request for a job: built from the spec alone, so ``--dry-run``
prints exactly what ``submit`` sends.

The container needs no boto3 and no custom image to get its inputs: each input is a
SageMaker channel (an S3 prefix SageMaker copies to ``/opt/ml/input/data/<channel>``
before the entry starts):

- ``bundle``: the signed job bundle, content-addressed in S3;
- ``spec``: the job's spec, base64 JSON (too long for a container argument);
- ``code``: a script entry's file (``nbscale run train.py``), run from there;
- ``runtime``: the wheels of nbscale's runtime, installed offline (``pip --no-index``)
  when the channel is there (a stock PyTorch image has no nbscale).

The entry installs the runtime and execs ``python -m nbscale.runtime.launch``, which
reads the hosts from ``/opt/ml/input/config/resourceconfig.json`` (with an entry point
of its own a container gets no ``SM_*`` variables from SageMaker's training toolkit).
Rank 0 (on algo-1, the first host) writes ``results.zip`` into ``/opt/ml/model``, which
SageMaker uploads as ``model.tar.gz`` when the job ends; every node also leaves
``nodes/<node>.json`` there, but the driver needs only algo-1's folder: each node's
record also goes to its CloudWatch stream, and a failed node's cause to
``/opt/ml/output/failure`` (the job's FailureReason).

``MetricDefinitions`` name the metrics the job's code passes to ``log_metric`` as literal
names: rank 0 prints each value as a metric line (``nbscale.sweeps.lines``), which these
regexes read, so SageMaker sends them to CloudWatch (the job's metrics in the console,
``FinalMetricDataList``). nbscale itself reads the same lines from the job's log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...errors import SpecError
from ...sweeps import lines
from ..images import node_shape
from .images import node
from .settings import SageMakerSettings

DEFAULT_MAX_RUNTIME = 24 * 3600
MAX_ARG = 256  # SageMaker's limit on one entry point string or argument
CHANNELS = ("bundle", "spec", "code", "runtime", "requirements")
LOG_GROUP = "/aws/sagemaker/TrainingJobs"
CHECKPOINT_PATH = "/opt/ml/checkpoints"
MAX_METRICS = 40  # MetricDefinitions of one training job

# Two short ``sh -c`` stages (SageMaker allows 256 characters per entry string): the
# first installs the runtime wheels when that channel is there and exports the job's
# secret environment (``jobenv``: read from Secrets Manager, never in the request), the
# second reads the spec and execs the launcher with the job's arguments.
DATA = "/opt/ml/input/data"
INSTALL_STAGE = (
    f"D={DATA};[ -d $D/runtime ]&&"
    "{ python -m pip install -q --no-index --no-deps $D/runtime/*.whl||exit 1;};"
    '[ -z "$NBSCALE_ENV_SECRET_ARN" ]||'
    '{ E=$(python -m nbscale.backends.sagemaker.jobenv)||exit 1;eval "$E";};'
    'exec "$@"'
)
LAUNCH_STAGE = (
    f'exec python -m nbscale.runtime.launch --spec "$(cat {DATA}/spec/spec.b64)" '
    f'--bundle {DATA}/bundle/cell.zip --outputs /opt/ml/model "$@"'
)
ENTRYPOINT = [
    *("/bin/sh", "-c", INSTALL_STAGE, "nbscale-setup"),
    *("/bin/sh", "-c", LAUNCH_STAGE, "nbscale-launch"),
]


@dataclass(frozen=True)
class Staged:
    """Where a job's inputs are (or will be) in S3: content-addressed prefixes."""

    bundle_prefix: str | None  # s3://.../sha256/<hex>/ (a cell's signed bundle)
    spec_prefix: str
    runtime_prefix: str | None = None
    key_secret_arn: str | None = None
    code_prefix: str | None = None  # the job's folder (code.zip)
    requirements_prefix: str | None = None  # the wheelhouse of its requirements
    env_secret_arn: str | None = None  # the job's --secret-env values


def spot_of(spec: dict[str, Any], settings: SageMakerSettings) -> bool:
    value = spec.get("spot")
    return settings.spot if value is None else bool(value)


def max_runtime_of(spec: dict[str, Any]) -> int:
    return int(spec.get("max_runtime") or DEFAULT_MAX_RUNTIME)


def budget_runtime(spec: dict[str, Any], settings: SageMakerSettings) -> int | None:
    """``--max-cost`` as the runtime it buys: SageMaker stops the job there (on-demand price,
    so a spot job stops no later than its budget allows)."""
    max_cost = spec.get("max_cost")
    if not max_cost:
        return None
    from ...cost import budget_price

    instance = spec.get("instance_type") or settings.instance_type
    # the backend's own prices, or nbscale's list price only in the list's own region
    price = budget_price(
        "sagemaker", settings.model_dump(exclude_none=True), instance, 0, settings.name
    )
    nodes = int(spec.get("nodes") or 1)
    return max(1, int(float(max_cost) / (price * nodes) * 3600))


def resolve(spec: dict[str, Any], settings: SageMakerSettings) -> dict[str, Any]:
    """The spec with the node's real shape: on a GPU instance type (``images.json``) every
    process gets GPUs (1 unless ``gpus_per_proc`` says more) and, when ``procs_per_node``
    is left at 1, there is one process per ``gpus_per_proc`` GPUs of the node, so an
    8-GPU ml.p4d.24xlarge runs 8 processes. More GPUs than the node has are refused here,
    and so are instance families that are not CUDA (Trainium, Inferentia)."""
    instance = spec.get("instance_type") or settings.instance_type
    return node_shape(spec, instance, node(instance).gpus, "instance type")


def fabric_env(instance_type: str) -> dict[str, str]:
    """The EFA variables the SageMaker training toolkit sets for an instance type (nbscale
    replaces its entry point): ``FI_PROVIDER=efa`` on EFA types, and
    ``FI_EFA_USE_DEVICE_RDMA=1`` and ``RDMAV_FORK_SAFE=1`` on those with RDMA. ``NCCL_SOCKET_IFNAME`` is the host's
    own (``resourceconfig.json``), set in the container by ``nbscale.runtime.hardware``."""
    found = node(instance_type)
    env = {}
    if found.efa:
        env["FI_PROVIDER"] = "efa"
    if found.rdma:  # and fork safety: a DataLoader's workers fork after RDMA is set up
        env["FI_EFA_USE_DEVICE_RDMA"] = "1"
        env["RDMAV_FORK_SAFE"] = "1"
    return env


def check_spec(spec: dict[str, Any], settings: SageMakerSettings) -> None:
    """What SageMaker itself would refuse, said before anything is uploaded; and a stock
    image that does not have the kernel's torch and Python."""
    instance = spec.get("instance_type") or settings.instance_type
    resolve(spec, settings)
    settings.training_image(instance, spec.get("image"))
    checkpoint = spec.get("checkpoint_dir")
    if checkpoint and not str(checkpoint).startswith("s3://"):
        raise SpecError(
            "checkpoint_dir",
            f"{checkpoint!r} is a local path; SageMaker syncs /opt/ml/checkpoints to S3",
            "give --checkpoint-dir s3://BUCKET/PREFIX, or leave it out for "
            f"{settings.uri('checkpoints', 'JOB')}",
        )
    runtime = max_runtime_of(spec)
    budget_runtime(spec, settings)  # a budget without a price is refused here
    if spot_of(spec, settings) and settings.max_wait is not None and settings.max_wait < runtime:
        raise SpecError(
            f"[backends.{settings.name}] max_wait",
            f"is {settings.max_wait} s, less than the job's max runtime ({runtime} s); "
            "SageMaker refuses MaxWaitTimeInSeconds below MaxRuntimeInSeconds",
            f"set max_wait >= {runtime}, or a shorter --max-runtime",
        )
    if len(spec.get("env") or {}) > 90:
        raise SpecError("env", "SageMaker allows 100 environment variables; nbscale uses a few")
    for key, value in (spec.get("env") or {}).items():
        if len(str(value)) > 512:
            raise SpecError("env", f"the value of {key} is longer than SageMaker's 512 characters")


def _channel(name: str, prefix: str) -> dict[str, Any]:
    return {
        "ChannelName": name,
        "DataSource": {
            "S3DataSource": {
                "S3DataType": "S3Prefix",
                "S3Uri": prefix,
                "S3DataDistributionType": "FullyReplicated",
            }
        },
        "InputMode": "File",
    }


def training_job_name(job_id: str) -> str:
    # nbscale ids are lower-case letters, digits and '-': SageMaker's pattern, 63 at most
    return job_id[:63].rstrip("-")


def metric_definitions(names) -> list[dict[str, str]]:
    """``MetricDefinitions`` for the metrics a job logs (``log_metric``'s metric lines, rank
    0's, sent to CloudWatch by SageMaker), at most SageMaker's 40."""
    return lines.metric_definitions(names)[:MAX_METRICS]


def build(
    job_id: str,
    spec: dict[str, Any],
    settings: SageMakerSettings,
    staged: Staged,
    metric_names: tuple[str, ...] | list[str] = (),
) -> dict[str, Any]:
    """The CreateTrainingJob request (boto3 keyword arguments) for one job; ``metric_names``:
    the names its code passes to ``log_metric`` (``MetricDefinitions``)."""
    spec = resolve(spec, settings)
    check_spec(spec, settings)
    instance = spec.get("instance_type") or settings.instance_type
    runtime = max_runtime_of(spec)
    budget = budget_runtime(spec, settings)
    if budget is not None:
        runtime = min(runtime, budget)
    name = training_job_name(job_id)
    channels = [_channel("spec", staged.spec_prefix)]
    if staged.bundle_prefix:
        channels.insert(0, _channel("bundle", staged.bundle_prefix))
    if staged.code_prefix:
        channels.append(_channel("code", staged.code_prefix))
    if staged.runtime_prefix:
        channels.append(_channel("runtime", staged.runtime_prefix))
    if staged.requirements_prefix:
        channels.append(_channel("requirements", staged.requirements_prefix))
    resource: dict[str, Any] = {
        "InstanceType": instance,
        "InstanceCount": int(spec.get("nodes") or 1),
        "VolumeSizeInGB": settings.volume_size_gb,
    }
    if settings.kms_key_id:
        resource["VolumeKmsKeyId"] = settings.kms_key_id
    if settings.keep_alive_seconds is not None:
        resource["KeepAlivePeriodInSeconds"] = settings.keep_alive_seconds
    env = {**fabric_env(instance), **{str(k): str(v) for k, v in (spec.get("env") or {}).items()}}
    if staged.key_secret_arn:
        env["NBSCALE_KEY_SECRET_ARN"] = staged.key_secret_arn
    if staged.env_secret_arn:  # --secret-env values: in Secrets Manager, only the ARN here
        env["NBSCALE_ENV_SECRET_ARN"] = staged.env_secret_arn
    output: dict[str, Any] = {"S3OutputPath": settings.uri("jobs")}
    if settings.kms_key_id:
        output["KmsKeyId"] = settings.kms_key_id
    tags = {**settings.tags, **(spec.get("tags") or {}), "nbscale:job-id": job_id}
    request: dict[str, Any] = {
        "TrainingJobName": name,
        "AlgorithmSpecification": {
            "TrainingImage": settings.training_image(instance, spec.get("image")),
            "TrainingInputMode": "File",
            "ContainerEntrypoint": list(ENTRYPOINT),
            "ContainerArguments": ["--job-id", job_id],
        },
        "RoleArn": settings.role_arn,
        "InputDataConfig": channels,
        "OutputDataConfig": output,
        "ResourceConfig": resource,
        "StoppingCondition": {"MaxRuntimeInSeconds": runtime},
        "Environment": env,
        "Tags": [{"Key": str(k), "Value": str(v)} for k, v in sorted(tags.items())],
    }
    definitions = metric_definitions(metric_names)
    if definitions:
        request["AlgorithmSpecification"]["MetricDefinitions"] = definitions
    spot = spot_of(spec, settings)
    retries = settings.retry_attempts
    if spot:
        request["EnableManagedSpotTraining"] = True
        request["StoppingCondition"]["MaxWaitTimeInSeconds"] = max(
            settings.max_wait or 2 * runtime, runtime
        )
    if spot or retries or spec.get("checkpoint_dir") or int(spec.get("max_restarts") or 0):
        request["CheckpointConfig"] = {
            "S3Uri": spec.get("checkpoint_dir") or settings.uri("checkpoints", name),
            "LocalPath": CHECKPOINT_PATH,
        }
    restarts = int(spec.get("max_restarts") or 0)
    if retries or restarts:
        # SageMaker retries the whole job on an internal error or a spot interruption
        request["RetryStrategy"] = {"MaximumRetryAttempts": min(30, max(1, retries or restarts))}
    if settings.subnets:
        request["VpcConfig"] = {
            "Subnets": list(settings.subnets),
            "SecurityGroupIds": list(settings.security_group_ids),
        }
    for part in (
        *request["AlgorithmSpecification"]["ContainerEntrypoint"],
        *request["AlgorithmSpecification"]["ContainerArguments"],
    ):
        if len(part) > MAX_ARG:  # pragma: no cover - the script is fixed and short
            raise SpecError("entry", f"a container argument is longer than {MAX_ARG} characters")
    return request
