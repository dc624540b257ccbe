"""SageMaker endpoints through the ``EndpointBackend`` interface.

deploy: the signed artifact as ``model.tar.gz`` in S3 (made byte-for-byte reproducible, so
content addressing finds an unchanged model), CreateModel (the nbscale serving image:
``serving_image`` or ``--image``, built from ``docker/Dockerfile``; the ``model`` key
through a Secrets Manager ARN), CreateEndpointConfig (instances, or ServerlessConfig,
optional DataCaptureConfig), CreateEndpoint, then a wait with a progress line until
InService. Autoscaling: an Application Auto Scaling target on
``sagemaker:variant:DesiredInstanceCount`` and target tracking on
``SageMakerVariantInvocationsPerInstance``. ``deploy_version`` puts a new artifact behind
the same endpoint with UpdateEndpoint and a blue/green DeploymentConfig (canary or linear,
rollback on CloudWatch alarms): the record moves to the new version only once DescribeEndpoint
serves its endpoint config; a deployment SageMaker rolled back is ROLLED_BACK, with the alarm
that fired, and the record keeps the old version. A new instance type deregisters the
autoscaling target before the update and registers it again after (SageMaker refuses an
update that changes the instance type of a scalable target). Serverless endpoints are refused
what SageMaker refuses for them (VPC, data capture, instances) before anything is sent.
predict: sagemaker-runtime InvokeEndpoint. metrics:
CloudWatch ``AWS/SageMaker``. undeploy removes the scaling policy and target, the
endpoint, every endpoint config and model nbscale made for it: nothing left billing.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ... import storage
from ...errors import Conflict, NbscaleError, NotFound, SpecError
from ...store.endpoints import (
    FAILED,
    READY,
    ROLLED_BACK,
    STARTING,
    STOPPING,
    EndpointRecord,
    delete_endpoint,
    get_endpoint,
    insert_endpoint,
    list_endpoints,
    update_endpoint,
)
from ..base import DryRun
from ..endpoint_base import DeployRequest, EndpointBackend
from . import secrets
from .jobs import client_error
from .settings import INSTANCE_RE, SageMakerSettings, settings

VARIANT = "AllTraffic"
KEY_PURPOSES = ("model",)
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
METRICS = ("Invocations", "Invocation4XXErrors", "Invocation5XXErrors", "InvocationsPerInstance")
LATENCIES = ("ModelLatency", "OverheadLatency")
PERCENTILES = ("p50", "p95", "p99")  # CloudWatch extended statistics, never averages
DEPLOY_TIMEOUT = 1800.0
_ECR = re.compile(r"^\d{12}\.dkr\.ecr(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/")
_GONE = re.compile(r"not found|could not find|does not exist|no scal\w+ \w+ found", re.I)

STATES = {
    "InService": READY,
    "Creating": STARTING,
    "Updating": READY,  # the old fleet serves while a new one comes up
    "SystemUpdating": READY,
    "RollingBack": READY,
    "UpdateRollbackFailed": FAILED,
    "Failed": FAILED,
    "OutOfService": FAILED,
    "Deleting": STOPPING,
}


def _rollback_message(rolled: dict[str, Any]) -> str:
    alarms = rolled.get("alarms") or []
    what = (
        f"alarm {', '.join(alarms)} fired"
        if alarms
        else "SageMaker gave no alarm that fired (see FailureReason)"
    )
    text = f"version {rolled['version']} was rolled back by SageMaker: {what}; the previous version serves"
    if rolled.get("reason"):
        text += f" (SageMaker: {rolled['reason']})"
    return text


def model_tarball(model_dir: Path, dest: Path) -> Path:
    """``model.tar.gz`` of the artifact: sorted entries, no times or owners, so the same
    artifact always gives the same bytes (and the same content address)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(
            p for p in model_dir.rglob("*") if p.is_file() and "__pycache__" not in p.parts
        ):
            info = tarfile.TarInfo(path.relative_to(model_dir).as_posix())
            info.size = path.stat().st_size
            info.mode = 0o644
            with open(path, "rb") as fh:
                tar.addfile(info, fh)
    with open(dest, "wb") as out, gzip.GzipFile(filename="", fileobj=out, mode="wb", mtime=0) as gz:
        gz.write(buf.getvalue())
    return dest


class SageMakerEndpoints(EndpointBackend):
    type = "sagemaker"
    options = frozenset(
        {
            "serverless",
            "memory_size_mb",
            "max_concurrency",
            "instance_type",
            "image",
            "data_capture_percent",
            "deployment",
            "canary_percent",
            "wait_seconds",
            "rollback_alarms",
            "target_invocations",
            "scale_in_cooldown",
            "scale_out_cooldown",
            "instances",
            # nbscale.endpoints.deploy's way of asking for a new version of an existing endpoint
            "canary_traffic_percent",
        }
    )

    def __init__(self, config, store):
        super().__init__(config, store)
        self.settings: SageMakerSettings = settings(config)
        self._clients: dict[str, Any] = {}
        self.progress = sys.stderr

    def client(self, service: str):
        if service not in self._clients:
            self._clients[service] = self.settings.client(service)
        return self._clients[service]

    # -- what is sent -------------------------------------------------------------------
    def validate(self, request: DeployRequest) -> None:
        super().validate(request)
        o, s = request.options, self.settings
        instance = o.get("instance_type")
        if instance is not None and (
            not isinstance(instance, str) or not INSTANCE_RE.match(instance)
        ):
            raise SpecError(
                "instance-type",
                f"{instance!r} is not a SageMaker instance type",
                'write e.g. "ml.m5.large" or "ml.g5.xlarge"',
            )
        instances = o.get("instances")
        if instances is not None and (
            isinstance(instances, bool) or not isinstance(instances, int) or instances < 1
        ):
            raise SpecError("instances", f"must be a whole number >= 1, got {instances!r}")
        if o.get("serverless"):
            self._check_serverless(request)
        else:
            for key, flag in (
                ("memory_size_mb", "memory-mb"),
                ("max_concurrency", "max-concurrency"),
            ):
                if o.get(key) is not None:
                    raise SpecError(
                        flag,
                        "only a serverless endpoint has it",
                        f"add --serverless, or drop --{flag}",
                    )
            if request.min_replicas < 1:
                raise SpecError(
                    "replicas",
                    "a SageMaker real-time endpoint keeps at least one instance",
                    "use --serverless to pay nothing while idle, or a minimum of 1",
                )
            if instances is not None and not (
                request.min_replicas <= instances <= request.max_replicas
            ):
                raise SpecError(
                    "instances",
                    f"{instances} is outside the replica range "
                    f"{request.min_replicas}..{request.max_replicas} autoscaling keeps",
                    f"give --replicas {instances}:{max(instances, request.max_replicas)}, "
                    "or an --instances within the range",
                )
        if o.get("deployment") not in (None, "all-at-once", "canary", "linear"):
            raise SpecError("deployment", "must be all-at-once, canary or linear")
        image = o.get("image") or s.serving_image
        if not image:
            # the stock SageMaker PyTorch inference images hold no nbscale, and their torch is
            # not the kernel's (an export or pickle may not load): not a default
            raise SpecError(
                "image",
                "a SageMaker endpoint runs the nbscale serving image, and none is set",
                f'set serving_image = "ACCOUNT.dkr.ecr.{s.region}.amazonaws.com/'
                f'nbscale-serving:TAG" in [backends.{s.name}] (built from '
                "docker/Dockerfile with the kernel's torch and Python), or pass --image",
            )
        ecr = _ECR.match(image)
        if ecr and ecr.group(1) != s.region:
            raise SpecError(
                "image",
                f"{image} is in ECR of {ecr.group(1)} and the endpoint in {s.region}: "
                "SageMaker does not pull images across regions",
                f"push or replicate the image to ECR in {s.region}",
            )
        percent = o.get("data_capture_percent")
        if percent is not None and (
            isinstance(percent, bool) or not isinstance(percent, int) or not 1 <= percent <= 100
        ):
            raise SpecError("data-capture-percent", "must be a whole number 1..100")

    def _check_serverless(self, request: DeployRequest) -> None:
        """What SageMaker refuses for a serverless variant (its documented feature exclusions:
        VPC configuration, data capture, instances), refused here before anything is sent."""
        o, s = request.options, self.settings
        memory = o.get("memory_size_mb")
        memory = 2048 if memory is None else memory
        if isinstance(memory, bool) or memory not in range(1024, 6145, 1024):
            raise SpecError("memory-mb", f"{memory!r} is not 1024, 2048, 3072, 4096, 5120 or 6144")
        concurrency = o.get("max_concurrency")
        concurrency = 5 if concurrency is None else concurrency
        if (
            isinstance(concurrency, bool)
            or not isinstance(concurrency, int)
            or not 1 <= concurrency <= 200
        ):
            raise SpecError(
                "max-concurrency", f"must be a whole number 1..200, got {concurrency!r}"
            )
        for key, flag in (("instance_type", "instance-type"), ("instances", "instances")):
            if o.get(key) is not None:
                raise SpecError(
                    flag,
                    "a serverless endpoint has no instances to choose",
                    f"drop --{flag}, or drop --serverless",
                )
        if s.subnets:
            raise SpecError(
                "serverless",
                f"[backends.{s.name}] sets subnets, and SageMaker serverless endpoints cannot "
                "run in a VPC",
                "deploy with instances (leave out --serverless), or from a backend table "
                "without subnets and security_group_ids",
            )
        if o.get("data_capture_percent") or request.config.get("capture_rate"):
            raise SpecError(
                "serverless",
                "SageMaker serverless endpoints have no data capture (so no drift monitoring)",
                "drop --capture-rate, --baseline and data_capture_percent, or deploy with "
                "instances (leave out --serverless)",
            )

    def capture_percent(self, request: DeployRequest) -> int | None:
        """InitialSamplingPercentage: the deploy's own, else its capture rate (a baseline
        turns it on), else the backend's default for endpoints with instances."""
        o = request.options
        if o.get("data_capture_percent"):
            return int(o["data_capture_percent"])
        rate = request.config.get("capture_rate")
        if rate:
            return max(1, min(100, round(float(rate) * 100)))
        if o.get("serverless"):
            return None  # the backend's default is for endpoints that can capture
        return self.settings.data_capture_percent

    def instance_type(self, options: dict[str, Any]) -> str | None:
        """The endpoint's instance type (None: serverless)."""
        if options.get("serverless"):
            return None
        return options.get("instance_type") or self.settings.endpoint_instance_type

    def _names(self, name: str, version: int) -> tuple[str, str]:
        base = f"nbscale-{name}-v{version}"[:63]
        return base, base  # model name, endpoint config name

    def requests(
        self, request: DeployRequest, model_url: str, key_arn: str, version: int
    ) -> dict[str, dict[str, Any]]:
        """CreateModel and CreateEndpointConfig for one version of an endpoint."""
        o, s = request.options, self.settings
        model_name, config_name = self._names(request.name, version)
        image = o.get("image") or s.serving_image
        tags = [
            {"Key": k, "Value": v}
            for k, v in sorted({**s.tags, "nbscale:endpoint": request.name}.items())
        ]
        container = {
            "Image": image,
            "ModelDataUrl": model_url,
            "Environment": {
                "NBSCALE_KEY_SECRET_ARN": key_arn,
                "NBSCALE_MAX_BATCH_SIZE": str(request.config.get("max_batch_size", 32)),
                "NBSCALE_MAX_BATCH_DELAY_MS": str(request.config.get("max_batch_delay_ms", 2.0)),
            },
        }
        create_model: dict[str, Any] = {
            "ModelName": model_name,
            "PrimaryContainer": container,
            "ExecutionRoleArn": s.role_arn,
            "Tags": tags,
        }
        if s.subnets and not o.get("serverless"):  # validate refuses a serverless one
            create_model["VpcConfig"] = {
                "Subnets": list(s.subnets),
                "SecurityGroupIds": list(s.security_group_ids),
            }
        variant: dict[str, Any] = {"VariantName": VARIANT, "ModelName": model_name}
        if o.get("serverless"):
            variant["ServerlessConfig"] = {
                "MemorySizeInMB": int(o.get("memory_size_mb") or 2048),
                "MaxConcurrency": int(o.get("max_concurrency") or 5),
            }
        else:
            variant.update(
                InstanceType=self.instance_type(o),
                InitialInstanceCount=int(o.get("instances") or max(1, request.min_replicas)),
                InitialVariantWeight=1.0,
            )
        endpoint_config: dict[str, Any] = {
            "EndpointConfigName": config_name,
            "ProductionVariants": [variant],
            "Tags": tags,
        }
        if s.kms_key_id and not o.get("serverless"):
            endpoint_config["KmsKeyId"] = s.kms_key_id
        percent = self.capture_percent(request)
        if percent:
            endpoint_config["DataCaptureConfig"] = {
                "EnableCapture": True,
                "InitialSamplingPercentage": percent,
                "DestinationS3Uri": s.uri("capture", request.name),
                "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
                "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]},
            }
        return {"CreateModel": create_model, "CreateEndpointConfig": endpoint_config}

    def deployment_config(self, options: dict[str, Any]) -> dict[str, Any] | None:
        """Blue/green traffic shifting for a new version (UpdateEndpoint)."""
        kind = options.get("deployment") or "all-at-once"
        wait = int(options.get("wait_seconds") or 300)
        percent = int(options.get("canary_percent") or 10)
        if kind == "canary":
            routing = {
                "Type": "CANARY",
                "WaitIntervalInSeconds": wait,
                "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": percent},
            }
        elif kind == "linear":
            routing = {
                "Type": "LINEAR",
                "WaitIntervalInSeconds": wait,
                "LinearStepSize": {"Type": "CAPACITY_PERCENT", "Value": percent},
            }
        else:
            routing = {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": wait}
        config: dict[str, Any] = {
            "BlueGreenUpdatePolicy": {
                "TrafficRoutingConfiguration": routing,
                "TerminationWaitInSeconds": wait,
            }
        }
        alarms = options.get("rollback_alarms") or self.settings.rollback_alarms
        if alarms:
            config["AutoRollbackConfiguration"] = {"Alarms": [{"AlarmName": a} for a in alarms]}
        return config

    def render(self, request: DeployRequest) -> DryRun:
        self.validate(request)
        with tempfile.TemporaryDirectory() as tmp:
            tar = model_tarball(Path(request.model_dir), Path(tmp) / "model.tar.gz")
            digest = storage.sha256_file(tar)
        store = storage.ObjectStore.from_options(self.settings.storage_options())
        url = store.base.child("models", "sha256", digest, "model.tar.gz").uri
        name = secrets.secret_name(self.settings.key_secret_name, KEY_PURPOSES)
        arn = (
            secrets.lookup(
                self.client("secretsmanager"), self.settings.key_secret_name, KEY_PURPOSES
            )
            or f"(the ARN of secret {name}, created at deploy)"
        )
        out = self.requests(request, url, arn, 1)
        out["CreateEndpoint"] = {
            "EndpointName": request.name,
            "EndpointConfigName": out["CreateEndpointConfig"]["EndpointConfigName"],
        }
        notes = [
            f"the model would be uploaded to {url}",
            f"secret {name} (Secrets Manager) would be created or updated: the signing keys",
        ]
        return DryRun([out], "json", notes)

    # -- deploy ---------------------------------------------------------------------------
    def _upload(self, model_dir: Path) -> str:
        store = storage.ObjectStore.from_options(self.settings.storage_options())
        with tempfile.TemporaryDirectory() as tmp:
            tar = model_tarball(model_dir, Path(tmp) / "model.tar.gz")
            return store.put(tar, "model.tar.gz", area="models")

    def _create_version(self, request: DeployRequest, version: int) -> dict[str, dict[str, Any]]:
        self.settings.require_credentials()
        url = self._upload(Path(request.model_dir))
        arn = secrets.ensure(
            self.client("secretsmanager"), self.settings.key_secret_name, KEY_PURPOSES
        )
        reqs = self.requests(request, url, arn, version)
        sm = self.client("sagemaker")
        sm.create_model(**reqs["CreateModel"])
        try:
            sm.create_endpoint_config(**reqs["CreateEndpointConfig"])
        except Exception:
            sm.delete_model(ModelName=reqs["CreateModel"]["ModelName"])
            raise
        return reqs

    def deploy(self, request: DeployRequest) -> EndpointRecord:
        self.validate(request)
        percent = request.options.get("canary_traffic_percent")
        if percent is not None:
            existing = self.store.query_one(
                "SELECT 1 FROM endpoints WHERE name = ?", (request.name,)
            )
            if not existing:
                raise SpecError(
                    "canary-traffic-percent",
                    f"there is no endpoint {request.name!r} to send a share of traffic from",
                    "deploy it first without a canary",
                )
            options = {k: v for k, v in request.options.items() if k != "canary_traffic_percent"}
            options.setdefault("deployment", "canary")
            options.setdefault("canary_percent", int(percent))
            return self.deploy_version(request.name, Path(request.model_dir), options)
        now = time.time()
        record = EndpointRecord(
            name=request.name,
            backend=self.backend,
            backend_type=self.type,
            status=STARTING,
            url=f"https://runtime.sagemaker.{self.settings.region}.amazonaws.com/endpoints/{request.name}/invocations",
            port=0,
            model_dir=str(request.model_dir),
            min_replicas=request.min_replicas,
            max_replicas=request.max_replicas,
            config={**request.config, "options": request.options, "sagemaker": {"versions": []}},
            created=now,
            updated=now,
        )
        insert_endpoint(self.store, record)
        try:
            reqs = self._create_version(request, 1)
            self.client("sagemaker").create_endpoint(
                EndpointName=request.name,
                EndpointConfigName=reqs["CreateEndpointConfig"]["EndpointConfigName"],
                Tags=reqs["CreateEndpointConfig"]["Tags"],
            )
        except Exception as exc:
            self._remove_all(request.name, [1])
            delete_endpoint(self.store, request.name)
            if isinstance(exc, NbscaleError):
                raise
            raise client_error(exc, f"deploying endpoint {request.name}") from None
        meta = {
            "versions": [1],
            "serverless": bool(request.options.get("serverless")),
            "instance_type": self.instance_type(request.options),
        }
        update_endpoint(
            self.store, request.name, "created", config={**record.config, "sagemaker": meta}
        )
        try:
            rec = self.wait(request.name)
            if not meta["serverless"]:
                self._autoscale(rec, request.min_replicas, request.max_replicas)
        except BaseException:
            self.undeploy(request.name)
            raise
        return get_endpoint(self.store, request.name)

    def deploy_version(
        self, name: str, model_dir: Path, options: dict[str, Any] | None = None
    ) -> EndpointRecord:
        """A new artifact behind the same endpoint: UpdateEndpoint with blue/green shifting.

        The record moves to the new version once SageMaker serves its endpoint config; when
        SageMaker rolled the deployment back (an auto-rollback alarm fired), the record keeps
        the old version and its status is ROLLED_BACK, with the alarm in ``error``."""
        rec = self.status(get_endpoint(self.store, name))
        meta = rec.config.get("sagemaker", {})
        if meta.get("pending") and rec.status == FAILED:
            raise NbscaleError(
                f"endpoint {name} failed while updating to version "
                f"{meta['pending']['version']}: {rec.error}",
                f"see its CloudWatch logs, then nbscale undeploy {name}",
            )
        if meta.get("pending"):
            raise Conflict(
                f"endpoint {name} is still being updated to version {meta['pending']['version']}",
                f"wait for it: nbscale endpoints (DescribeEndpoint {name})",
            )
        options = {**rec.config.get("options", {}), **(options or {})}
        was_serverless, serverless = bool(meta.get("serverless")), bool(options.get("serverless"))
        if serverless and not was_serverless:
            raise SpecError(
                "serverless",
                f"SageMaker cannot turn endpoint {name}, which has instances, into a serverless one",
                "deploy the model as a new endpoint with --serverless",
            )
        # a version number is never reused: a rolled-back one may still have its config
        version = max([0, *meta.get("versions", []), *meta.get("rolled_back", [])]) + 1
        request = DeployRequest(
            name, Path(model_dir), rec.min_replicas, rec.max_replicas, None, rec.config, options
        )
        self.validate(request)
        old_type = None if was_serverless else self._current_instance_type(name, meta)
        new_type = self.instance_type(options)
        # SageMaker refuses an update that changes the instance type of a scalable target:
        # deregister it first, register it again once the update is over
        unscale = not was_serverless and not serverless and old_type != new_type
        try:
            reqs = self._create_version(request, version)
            config_name = reqs["CreateEndpointConfig"]["EndpointConfigName"]
            update: dict[str, Any] = {"EndpointName": name, "EndpointConfigName": config_name}
            if not was_serverless and not serverless:
                update["DeploymentConfig"] = self.deployment_config(options)
                update["RetainAllVariantProperties"] = False
            if unscale:
                self._unscale(name)
            try:
                self.client("sagemaker").update_endpoint(**update)
            except Exception:
                if unscale:  # the old variant keeps serving: give it its autoscaling back
                    self._autoscale(rec, rec.min_replicas, rec.max_replicas)
                raise
        except Exception as exc:  # noqa: BLE001
            self._remove_all(name, [version], endpoint=False)
            if isinstance(exc, NbscaleError):
                raise
            raise client_error(exc, f"updating endpoint {name}") from None
        alarms = (update.get("DeploymentConfig") or {}).get("AutoRollbackConfiguration", {})
        pending = {
            "version": version,
            "config": config_name,
            "model_dir": str(model_dir),
            "options": options,
            "serverless": serverless,
            "instance_type": new_type,
            "alarms": [a["AlarmName"] for a in alarms.get("Alarms", [])],
            "started": time.time(),
            # autoscaling to register once the update is over (it was removed, or the
            # endpoint had none while serverless)
            "rescale": unscale or (was_serverless and not serverless),
        }
        update_endpoint(
            self.store,
            name,
            "updating",
            config={**rec.config, "sagemaker": {**meta, "pending": pending}},
        )
        return self.wait(name)

    def _current_instance_type(self, name: str, meta: dict[str, Any]) -> str | None:
        """The instance type the endpoint serves on now (the record's, else its config's)."""
        if meta.get("instance_type"):
            return meta["instance_type"]
        _, config = self._names(name, max(meta.get("versions") or [1]))
        try:
            desc = self.client("sagemaker").describe_endpoint_config(EndpointConfigName=config)
        except Exception as exc:  # noqa: BLE001
            raise client_error(exc, f"DescribeEndpointConfig {config}") from None
        return (desc.get("ProductionVariants") or [{}])[0].get("InstanceType")

    def wait(self, name: str, timeout: float | None = None) -> EndpointRecord:
        """Poll DescribeEndpoint until it serves (or fails), with one progress line per change.
        After an update the record says whether the new version serves (READY) or SageMaker
        rolled it back (ROLLED_BACK)."""
        from ..remote.lifecycle import wait_for

        def state(rec: EndpointRecord) -> str:
            return str(rec.config.get("sagemaker", {}).get("last", {}).get("EndpointStatus"))

        return wait_for(
            f"endpoint {name}",
            lambda: self.status(get_endpoint(self.store, name)),
            state,
            lambda rec: (
                state(rec) == "InService" and not rec.config.get("sagemaker", {}).get("pending")
            ),
            timeout=DEPLOY_TIMEOUT if timeout is None else timeout,
            interval=min(5.0, self.settings.poll_seconds) or 0.05,
            hint=f"see its CloudWatch logs (/aws/sagemaker/Endpoints/{name}) and nbscale endpoints",
            failure=lambda rec: (
                NbscaleError(
                    f"endpoint {name} failed: {rec.error}",
                    f"see its CloudWatch logs, then nbscale undeploy {name}",
                )
                if rec.status == FAILED
                else None
            ),
            progress=self.progress,
        )

    # -- autoscaling ----------------------------------------------------------------------
    def _autoscale(self, rec: EndpointRecord, lo: int, hi: int) -> None:
        aas = self.client("application-autoscaling")
        resource = f"endpoint/{rec.name}/variant/{VARIANT}"
        options = rec.config.get("options", {})
        try:
            aas.register_scalable_target(
                ServiceNamespace="sagemaker",
                ResourceId=resource,
                ScalableDimension=DIMENSION,
                MinCapacity=max(1, lo),
                MaxCapacity=hi,
            )
            aas.put_scaling_policy(
                PolicyName=f"nbscale-{rec.name}-invocations",
                ServiceNamespace="sagemaker",
                ResourceId=resource,
                ScalableDimension=DIMENSION,
                PolicyType="TargetTrackingScaling",
                TargetTrackingScalingPolicyConfiguration={
                    # invocations per instance per minute
                    "TargetValue": float(options.get("target_invocations") or 100.0),
                    "PredefinedMetricSpecification": {
                        "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"
                    },
                    "ScaleInCooldown": int(options.get("scale_in_cooldown") or 300),
                    "ScaleOutCooldown": int(options.get("scale_out_cooldown") or 60),
                },
            )
        except Exception as exc:  # noqa: BLE001
            raise client_error(exc, f"autoscaling endpoint {rec.name}") from None

    def _unscale(self, name: str) -> None:
        """Delete the scaling policy and deregister the variant as a scalable target."""
        from botocore.exceptions import ClientError

        aas = self.client("application-autoscaling")
        ids = {
            "ServiceNamespace": "sagemaker",
            "ResourceId": f"endpoint/{name}/variant/{VARIANT}",
            "ScalableDimension": DIMENSION,
        }
        for call, extra in (
            (aas.delete_scaling_policy, {"PolicyName": f"nbscale-{name}-invocations"}),
            (aas.deregister_scalable_target, {}),
        ):
            try:
                call(**ids, **extra)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "ObjectNotFoundException":
                    raise client_error(
                        exc, f"removing the autoscaling of endpoint {name}"
                    ) from None

    def scale(self, record: EndpointRecord, min_replicas: int, max_replicas: int) -> EndpointRecord:
        if record.config.get("sagemaker", {}).get("serverless"):
            raise SpecError(
                "replicas",
                "a serverless endpoint scales by itself",
                "change --max-concurrency instead",
            )
        if min_replicas < 1:
            raise SpecError(
                "replicas", "a SageMaker real-time endpoint keeps at least one instance"
            )
        self._autoscale(record, min_replicas, max_replicas)
        update_endpoint(
            self.store, record.name, "scale", min_replicas=min_replicas, max_replicas=max_replicas
        )
        return get_endpoint(self.store, record.name)

    # -- status, predict, metrics -----------------------------------------------------------
    def status(self, record: EndpointRecord) -> EndpointRecord:
        try:
            desc = self.client("sagemaker").describe_endpoint(EndpointName=record.name)
        except Exception as exc:  # noqa: BLE001
            from botocore.exceptions import ClientError

            if isinstance(exc, ClientError) and "Could not find" in str(exc):
                update_endpoint(
                    self.store,
                    record.name,
                    "failed",
                    status=FAILED,
                    error="the endpoint is gone from SageMaker",
                )
                return get_endpoint(self.store, record.name)
            raise client_error(exc, f"DescribeEndpoint {record.name}") from None
        state = desc.get("EndpointStatus", "")
        serving = desc.get("EndpointConfigName")
        variants = desc.get("ProductionVariants") or []
        replicas = sum(int(v.get("CurrentInstanceCount") or 0) for v in variants)
        meta = {
            **record.config.get("sagemaker", {}),
            "last": {"EndpointStatus": state, "EndpointConfigName": serving},
        }
        config = {**record.config, "sagemaker": meta}
        fields: dict[str, Any] = {
            "status": STATES.get(state, STARTING),
            "replicas": replicas,
            "error": desc.get("FailureReason") if STATES.get(state) == FAILED else None,
        }
        pending = meta.get("pending")
        rolled = meta.get("rollback")
        event = None
        if pending and state == "InService":  # the update is over: which config serves?
            if serving == pending["config"]:
                if pending.get("rescale") and not pending["serverless"]:
                    self._autoscale(record, record.min_replicas, record.max_replicas)
                meta.pop("rollback", None)
                meta.update(
                    # sorted and unique: two processes may both see the update end
                    versions=sorted({*meta.get("versions", []), pending["version"]}),
                    serverless=pending["serverless"],
                    instance_type=pending["instance_type"],
                )
                config["options"] = pending["options"]
                fields["model_dir"] = pending["model_dir"]
                event = "updated"
            else:
                if pending.get("rescale") and not meta.get("serverless"):
                    self._autoscale(record, record.min_replicas, record.max_replicas)
                alarms = self._fired_alarms(desc, pending)
                meta["rollback"] = {
                    "version": pending["version"],
                    "config": serving,
                    "alarms": alarms,
                    "reason": desc.get("FailureReason"),
                    "time": time.time(),
                }
                meta["rolled_back"] = sorted({*meta.get("rolled_back", []), pending["version"]})
                self._remove_all(record.name, [pending["version"]], endpoint=False)
                event = "rolled_back"
            meta.pop("pending")
        if state == "InService" and meta.get("rollback") and meta["rollback"]["config"] == serving:
            rolled = meta["rollback"]
            fields["status"] = ROLLED_BACK
            fields["error"] = _rollback_message(rolled)
        fields["config"] = config
        changed = fields["status"] != record.status
        update_endpoint(self.store, record.name, event or ("status" if changed else None), **fields)
        return get_endpoint(self.store, record.name)

    def _fired_alarms(self, desc: dict[str, Any], pending: dict[str, Any]) -> list[str]:
        """The auto-rollback alarms (DescribeEndpoint's LastDeploymentConfig) that are in
        ALARM, else those whose state changed since the update began (CloudWatch)."""
        rollback = (desc.get("LastDeploymentConfig") or {}).get("AutoRollbackConfiguration", {})
        names = [a["AlarmName"] for a in rollback.get("Alarms", [])] or pending.get("alarms", [])
        if not names:
            return []
        try:
            found = self.client("cloudwatch").describe_alarms(AlarmNames=names)
        except Exception:  # noqa: BLE001 - no cloudwatch:DescribeAlarms: FailureReason says why
            return []
        alarms = found.get("MetricAlarms", []) + found.get("CompositeAlarms", [])
        fired = [a["AlarmName"] for a in alarms if a.get("StateValue") == "ALARM"]
        if fired:
            return fired
        return [
            a["AlarmName"]
            for a in alarms
            if a.get("StateUpdatedTimestamp")
            and a["StateUpdatedTimestamp"].timestamp() >= pending["started"]
        ]

    def display_status(self, record: EndpointRecord) -> str:
        return record.status

    def metadata(self, record: EndpointRecord) -> dict[str, Any]:
        from ...serving.artifact import read_manifest

        try:
            manifest = read_manifest(record.model_dir)
        except (NbscaleError, OSError) as exc:
            raise NotFound(
                f"the artifact of endpoint {record.name} is not on this machine: {exc}"
            ) from None
        return {
            "name": record.name,
            "platform": "sagemaker",
            **{k: manifest[k] for k in ("inputs", "outputs") if k in manifest},
        }

    def predict(self, record: EndpointRecord, x: Any) -> np.ndarray:
        arr = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        try:
            answer = self.client("sagemaker-runtime").invoke_endpoint(
                EndpointName=record.name,
                ContentType="application/x-npy",
                Accept="application/x-npy",
                Body=buf.getvalue(),
            )
        except Exception as exc:  # noqa: BLE001
            from botocore.exceptions import ClientError

            if (
                isinstance(exc, ClientError)
                and exc.response.get("Error", {}).get("Code") == "ModelError"
            ):
                original = exc.response.get("OriginalMessage") or exc.response.get("Error", {}).get(
                    "Message"
                )
                raise SpecError(
                    "input", f"endpoint {record.name} refused the input: {original}"
                ) from None
            raise client_error(exc, f"InvokeEndpoint {record.name}") from None
        body = answer["Body"].read()
        if answer.get("ContentType", "").startswith("application/x-npy"):
            return np.load(io.BytesIO(body), allow_pickle=False)
        return np.asarray(json.loads(body))

    def captured_inputs(
        self, record: EndpointRecord, since: float
    ) -> list[tuple[float, np.ndarray]] | None:
        """The endpoint's data capture in S3 (``{DestinationS3Uri}/{endpoint}/{variant}/
        yyyy/mm/dd/hh/*.jsonl``, SageMaker's format), from the hour of ``since`` on."""
        from .capture import captured_inputs, hour_key

        prefix = self.settings.uri("capture", record.name).removeprefix("s3://")
        bucket, _, key = prefix.partition("/")
        folder = f"{key}/{record.name}/{VARIANT}/"
        s3 = self.client("s3")
        out: list[tuple[float, np.ndarray]] = []
        try:
            pages = s3.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=folder, StartAfter=folder + hour_key(since)
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    if not obj["Key"].endswith(".jsonl"):
                        continue
                    body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
                    out += [(t, rows) for t, rows in captured_inputs(body) if t >= since]
        except Exception as exc:  # noqa: BLE001
            raise client_error(exc, f"reading the data capture of endpoint {record.name}") from None
        return sorted(out, key=lambda item: item[0])

    def invocations(self, record: EndpointRecord, minutes: int) -> float:
        """CloudWatch's ``Invocations`` sum over the last ``minutes``."""
        return float(self.metrics(record, minutes=minutes).get("Invocations") or 0)

    def metrics(self, record: EndpointRecord, minutes: int = 15) -> dict[str, Any]:
        """CloudWatch ``AWS/SageMaker`` metrics of the endpoint's variant: counts as sums,
        ModelLatency/OverheadLatency as the percentiles p50/p95/p99 CloudWatch computes from
        every request (extended statistics), per minute (``sagemaker_series``) and over the
        whole window (one period of ``minutes``: percentiles of minutes do not add up)."""
        end = (int(time.time()) // 60 + 1) * 60  # whole minutes, the current one included
        dims = [
            {"Name": "EndpointName", "Value": record.name},
            {"Name": "VariantName", "Value": VARIANT},
        ]
        stats = [(n, "Sum") for n in METRICS] + [(n, p) for n in LATENCIES for p in PERCENTILES]
        queries = [
            {
                "Id": f"{scope}{i}",
                "Label": name if stat == "Sum" else f"{name}_{stat}",
                "MetricStat": {
                    "Metric": {
                        "Namespace": "AWS/SageMaker",
                        "MetricName": name,
                        "Dimensions": dims,
                    },
                    "Period": period,
                    "Stat": stat,
                },
                "ReturnData": True,
            }
            for scope, period in (("m", 60), ("w", minutes * 60))
            for i, (name, stat) in enumerate(stats)
        ]
        try:
            answer = self.client("cloudwatch").get_metric_data(
                MetricDataQueries=queries, StartTime=end - minutes * 60, EndTime=end
            )
        except Exception as exc:  # noqa: BLE001
            raise client_error(exc, f"CloudWatch metrics of {record.name}") from None
        series: dict[float, dict[str, Any]] = {}
        totals: dict[str, float] = {}
        for result in answer.get("MetricDataResults", []):
            label, values = result["Label"], result.get("Values", [])
            if result["Id"].startswith("w"):  # the window: one period
                if label in METRICS:
                    totals[label] = float(sum(values))
                elif values:
                    totals[label] = float(values[0])
                continue
            for stamp, value in zip(result.get("Timestamps", []), values, strict=False):
                t = stamp.timestamp()
                series.setdefault(t, {"Timestamp": t})[label] = value
        invocations = totals.get("Invocations") or 0.0
        errors = (totals.get("Invocation4XXErrors") or 0.0) + (
            totals.get("Invocation5XXErrors") or 0.0
        )
        names = [*METRICS, *(f"{n}_{p}" for n in LATENCIES for p in PERCENTILES)]
        return {
            **{k: totals.get(k, 0.0) for k in METRICS},
            **{k: totals.get(k) for k in names[len(METRICS) :]},
            **{  # the panel's milliseconds (model time), as the other backends give them
                f"{p}_ms": totals[f"ModelLatency_{p}"] / 1000.0
                for p in PERCENTILES
                if totals.get(f"ModelLatency_{p}") is not None
            },
            "latency_unit": "microseconds",
            "window_s": minutes * 60,
            "throughput_rps": invocations / (minutes * 60),
            "error_rate": errors / invocations if invocations else 0.0,
            "replicas": record.replicas,
            "sagemaker_names": names,
            "sagemaker_series": [series[t] for t in sorted(series)],
        }

    # -- undeploy, list -------------------------------------------------------------------
    def _remove_all(self, name: str, versions: list[int], endpoint: bool = True) -> list[str]:
        """Delete what nbscale made for ``name``; return what could not be deleted."""
        from botocore.exceptions import ClientError

        sm = self.client("sagemaker")
        left = []
        steps = []
        if endpoint:
            aas = self.client("application-autoscaling")
            resource = f"endpoint/{name}/variant/{VARIANT}"
            steps += [
                (
                    "scaling policy",
                    lambda: aas.delete_scaling_policy(
                        PolicyName=f"nbscale-{name}-invocations",
                        ServiceNamespace="sagemaker",
                        ResourceId=resource,
                        ScalableDimension=DIMENSION,
                    ),
                ),
                (
                    "scalable target",
                    lambda: aas.deregister_scalable_target(
                        ServiceNamespace="sagemaker",
                        ResourceId=resource,
                        ScalableDimension=DIMENSION,
                    ),
                ),
                ("endpoint", lambda: sm.delete_endpoint(EndpointName=name)),
            ]
        for version in versions:
            model, config = self._names(name, version)
            steps += [
                (
                    f"endpoint config {config}",
                    lambda c=config: sm.delete_endpoint_config(EndpointConfigName=c),
                ),
                (f"model {model}", lambda m=model: sm.delete_model(ModelName=m)),
            ]
        for what, step in steps:
            try:
                step()
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                message = exc.response.get("Error", {}).get("Message", "")
                if code in ("ObjectNotFoundException", "ResourceNotFound") or _GONE.search(message):
                    continue  # already gone
                left.append(f"{what}: {code} {message}")
        return left

    def undeploy(self, name: str) -> None:
        rec = get_endpoint(self.store, name)
        meta = rec.config.get("sagemaker", {})
        versions = [*(meta.get("versions") or [1]), *meta.get("rolled_back", [])]
        if meta.get("pending"):
            versions.append(meta["pending"]["version"])
        left = self._remove_all(name, versions)
        if left:
            update_endpoint(self.store, name, "failed", status=FAILED, error="; ".join(left))
            raise NbscaleError(
                f"endpoint {name} is only partly removed: {'; '.join(left)}",
                f"run nbscale undeploy {name} again",
            )
        delete_endpoint(self.store, name)

    def list(self) -> list[EndpointRecord]:
        return [
            r
            for r in list_endpoints(self.store)
            if r.backend_type == self.type and r.backend == self.backend
        ]

    def check(self) -> dict[str, Any]:
        try:
            self.settings.require_credentials()
            self.client("sagemaker").list_endpoints(MaxResults=1)
        except NbscaleError as exc:
            return {"reachable": False, "detail": str(exc)}
        except Exception as exc:  # noqa: BLE001
            return {"reachable": False, "detail": str(client_error(exc, "ListEndpoints"))}
        return {"reachable": True, "detail": f"SageMaker endpoints in {self.settings.region}"}
