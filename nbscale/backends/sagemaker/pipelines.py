"""``nbscale pipeline run FLOW --backend NAME`` on SageMaker Pipelines.

The flow is compiled by ``nbscale.backends.sagemaker.pipeline_compile`` (one Processing step per
notebook step, a Training step for one on several nodes), its step code uploaded under the
backend's storage prefix (content-addressed: an execution in flight keeps its code), the pipeline
key put in a Secrets Manager secret (only the ARN is in the definition), and the pipeline
created or updated. Then an execution starts with the run's parameters and is followed
through ListPipelineExecutionSteps: each step's change of status is reported as it happens
(``on_step(name, {"status", "error"})``, the callback the local runner uses). Cancel is
StopPipelineExecution.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from ...errors import NbscaleError, SpecError
from ..base import DryRun
from ..remote.pipelines import RemotePipelines
from .jobs import client_error
from .settings import SageMakerSettings, settings
from .states import EXECUTION_STATES, STEP_STATES

# SageMaker's step and execution states, as nbscale names them: states.py
TERMINAL = {"CANCELLED", "FAILED", "SUCCEEDED"}


@dataclass
class Execution:
    pipeline_arn: str
    execution_arn: str
    status: str = "RUNNING"
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "pipeline_arn": self.pipeline_arn,
            "execution_arn": self.execution_arn,
            "status": self.status,
            "steps": [{"name": k, **v} for k, v in self.steps.items()],
            "error": self.error,
        }


def pipeline_name(prefix: str) -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", prefix)[:256]


class SageMakerPipelines:
    def __init__(self, settings: SageMakerSettings):
        self.settings = settings
        self._clients: dict[str, Any] = {}

    def client(self, service: str):
        if service not in self._clients:
            self._clients[service] = self.settings.client(service)
        return self._clients[service]

    def create(self, path: str, image: str | None = None) -> tuple[str, str, dict[str, Any]]:
        """Compile, upload and create or update the pipeline; return (name, ARN, definition)."""
        from . import pipeline_compile as sagemaker_target

        self.settings.require_credentials()
        with tempfile.TemporaryDirectory(prefix="nbscale-smp-") as tmp:
            output, name = self._compiled(path, image, Path(tmp))
            try:
                arn = sagemaker_target.upload_and_create(
                    output,
                    self.client("sagemaker"),
                    self.client("s3"),
                    self.settings.role_arn,
                    name=name,
                    secretsmanager=self.client("secretsmanager"),
                )
            except NbscaleError:
                raise
            except Exception as exc:  # noqa: BLE001
                raise client_error(exc, f"creating pipeline {name}") from None
            definition = json.loads(output.read_text())
        return name, arn, definition

    @staticmethod
    def _execution_parameters(
        definition: dict[str, Any], parameters: dict[str, Any] | None
    ) -> list[dict[str, str]]:
        """StartPipelineExecution's PipelineParameters; a name the pipeline does not declare
        is refused."""
        declared = {p["Name"] for p in definition.get("Parameters", [])}
        unknown = sorted(set(parameters or {}) - declared)
        if unknown:
            raise SpecError(
                "-p",
                f"the pipeline has no parameter {unknown[0]!r}",
                f"its parameters: {', '.join(sorted(declared)) or '(none)'}",
            )
        return [
            {"Name": k, "Value": json.dumps(v) if isinstance(v, list | dict) else str(v)}
            for k, v in (parameters or {}).items()
        ]

    def plan(self, path: str, parameters: dict[str, Any] | None = None) -> DryRun:
        """CreatePipeline (or UpdatePipeline) and StartPipelineExecution as ``start`` would
        send them, as one JSON document; nothing uploaded, created or started."""
        from . import pipeline_compile as sagemaker_target

        with tempfile.TemporaryDirectory(prefix="nbscale-smp-") as tmp:
            output, name = self._compiled(path, None, Path(tmp))
            definition = json.loads(output.read_text())
        params = self._execution_parameters(definition, parameters)
        meta = definition["Metadata"]["nbscale"]
        secret = f"nbscale/{meta['prefix']}/keys"
        arn = self._secret_arn(secret) or f"(the ARN of secret {secret}, created at run)"
        for step in definition["Steps"]:
            sagemaker_target.step_environment(step)[sagemaker_target.KEY_SECRET_ENV] = arn
        sagemaker_target.validate(definition)
        document = {
            "CreatePipeline": {
                "PipelineName": name,
                "PipelineDefinition": definition,
                "RoleArn": self.settings.role_arn,
            },
            "StartPipelineExecution": {"PipelineName": name, "PipelineParameters": params},
        }
        notes = [
            "PipelineDefinition is sent as a JSON string; CreatePipeline becomes "
            "UpdatePipeline when the pipeline exists",
            f"the step code would be uploaded under s3://{meta['bucket']}/{meta['prefix']}/code/ "
            "(a prefix per step named by the digest of its files)",
            f"secret {secret} (Secrets Manager) would be created or updated: the pipeline key",
        ]
        from .pipeline_compile import plan_notes

        notes += plan_notes(definition)
        from ...cost import definition_estimate

        most = definition_estimate(
            definition, "sagemaker", self.settings.model_dump(exclude_none=True)
        )
        if most["steps"]:
            notes.append(
                f"estimated cost: at most ${most['at_most']:.2f} if every step runs its max "
                "runtime"
                + (
                    " (steps without a known price: " + ", ".join(most["unpriced"]) + ")"
                    if most["unpriced"]
                    else ""
                )
            )
            notes += [f"estimated cost: {note}" for note in most["price_notes"]]
        else:
            notes.append(
                "estimated cost: unknown, no price is known for the steps' instance types "
                "(nbscale cost --refresh-prices, or prices in [backends."
                f"{self.settings.name}])"
            )
        notes += self._tuning_estimates(definition)
        return DryRun([document], "json", notes)

    def _tuning_estimates(self, definition: dict[str, Any]) -> list[str]:
        """The most each Tuning step's trials can cost: every trial for its
        MaxRuntimeInSeconds on its instances at the training price."""
        from ...cost import job_cost, node_price

        notes = []
        settings = self.settings.model_dump(exclude_none=True)
        for step in definition["Steps"]:
            if step["Type"] != "Tuning":
                continue
            args = step["Arguments"]
            job = args["TrainingJobDefinition"]
            trials = args["HyperParameterTuningJobConfig"]["ResourceLimits"][
                "MaxNumberOfTrainingJobs"
            ]
            instance, count = (
                job["ResourceConfig"]["InstanceType"],
                job["ResourceConfig"]["InstanceCount"],
            )
            hours = job["StoppingCondition"]["MaxRuntimeInSeconds"] / 3600.0
            try:
                price = node_price("sagemaker", settings, instance, 0, "training")
            except SpecError:
                notes.append(f"step {step['Name']}: no price is known for its trials' {instance}")
                continue
            notes.append(
                f"step {step['Name']}: its {trials} trials cost at most "
                f"${job_cost(hours * trials, count, price):.2f} if each runs its max runtime "
                f"({count} x {instance} at ${price:g}/hour; part of the estimate above)"
            )
        return notes

    def _secret_arn(self, name: str) -> str | None:
        """The ARN of an existing secret (read only), None when there is none yet."""
        try:
            return self.client("secretsmanager").describe_secret(SecretId=name)["ARN"]
        except Exception:  # noqa: BLE001 - absent, or no credentials: the dry run says so
            return None

    def _compiled(self, path: str, image: str | None, tmp: Path) -> tuple[Path, str]:
        from ...pipelines.loader import load
        from . import pipeline_compile as sagemaker_target

        pipeline = load(path)
        prefix = "/".join(p for p in (self.settings.prefix, "pipelines", pipeline.name) if p)
        output = tmp / f"{pipeline.name}.json"
        options: dict[str, Any] = {
            "role": self.settings.role_arn,
            "bucket": self.settings.bucket,
            "prefix": prefix,
            "region": self.settings.region,  # the steps' images are this region's
            "settings": self.settings,  # a training step's request is built as a job's
        }
        image = image or self.settings.pipeline_image
        if image:  # else the compile target's stock image, with the step wheelhouse
            options["image"] = image
        sagemaker_target.compile_pipeline(pipeline, output, **options)
        return output, pipeline_name(f"nbscale-{pipeline.name}")

    def start(
        self, path: str, parameters: dict[str, Any] | None = None, image: str | None = None
    ) -> Execution:
        name, arn, definition = self.create(path, image)
        params = self._execution_parameters(definition, parameters)
        try:
            answer = self.client("sagemaker").start_pipeline_execution(
                PipelineName=name,
                PipelineParameters=params,
                PipelineExecutionDisplayName=f"nbscale-{int(time.time())}",
            )
        except Exception as exc:  # noqa: BLE001
            raise client_error(exc, f"StartPipelineExecution {name}") from None
        return Execution(arn, answer["PipelineExecutionArn"])

    def refresh(
        self, execution: Execution, on_step: Callable[[str, dict], None] | None = None
    ) -> Execution:
        """Read the execution and its steps; report every step whose state changed."""
        sm = self.client("sagemaker")
        try:
            # the execution first, then its steps: a step ends before its execution does, so
            # steps read after an ended execution are final (read the other way round, an
            # execution that failed between the two reads would end the run before its
            # failed step and its reason were ever reported)
            desc = sm.describe_pipeline_execution(PipelineExecutionArn=execution.execution_arn)
            steps: list[dict[str, Any]] = []
            kwargs: dict[str, Any] = {"PipelineExecutionArn": execution.execution_arn}
            while True:
                page = sm.list_pipeline_execution_steps(**kwargs)
                steps += page.get("PipelineExecutionSteps", [])
                if not page.get("NextToken"):
                    break
                kwargs["NextToken"] = page["NextToken"]
        except Exception as exc:  # noqa: BLE001
            raise client_error(exc, "following the pipeline execution") from None
        for step in reversed(steps):  # SageMaker lists the newest first
            name = step["StepName"]
            fields = {
                "status": STEP_STATES.get(step.get("StepStatus", ""), "RUNNING"),
                "error": step.get("FailureReason"),
                "attempts": step.get("AttemptCount", 1),
            }
            if execution.steps.get(name) != fields:
                execution.steps[name] = fields
                if on_step:
                    on_step(name, fields)
        state = desc.get("PipelineExecutionStatus", "")
        execution.status = EXECUTION_STATES.get(state, "RUNNING")
        execution.error = desc.get("FailureReason")
        if state == "CompletedWithFailures" and not execution.error:
            failed = [n for n, f in execution.steps.items() if f["status"] == "FAILED"]
            execution.error = "the execution completed with failed steps" + (
                f": {', '.join(failed)}" if failed else ""
            )
        return execution

    def follow(
        self,
        execution: Execution,
        on_step: Callable[[str, dict], None] | None = None,
        poll: float | None = None,
        timeout: float | None = None,
    ) -> Execution:
        poll = self.settings.poll_seconds if poll is None else poll
        started = time.monotonic()
        while True:
            self.refresh(execution, on_step)
            if execution.status in TERMINAL:
                return execution
            if timeout is not None and time.monotonic() - started > timeout:
                raise NbscaleError(f"pipeline execution still {execution.status} after {timeout} s")
            time.sleep(poll or 0.05)

    def cancel(self, execution_arn: str) -> None:
        try:
            self.client("sagemaker").stop_pipeline_execution(
                PipelineExecutionArn=execution_arn, ClientRequestToken=uuid.uuid4().hex
            )
        except Exception as exc:  # noqa: BLE001
            raise client_error(exc, "StopPipelineExecution") from None


# -- the CLI's side (``nbscale pipeline run/cancel``) ------------------------------------------
def _for(backend: str | None = None, region: str | None = None) -> SageMakerPipelines:
    from ...config import load as load_config
    from .settings import settings

    config = load_config()
    if backend:
        return SageMakerPipelines(settings(config.backend(backend)))
    for bconf in config.backends.values():
        if bconf.type == "sagemaker":
            found = settings(bconf)
            if region is None or found.region == region:
                return SageMakerPipelines(found)
    raise NbscaleError(
        f"no SageMaker backend{' in ' + region if region else ''} is configured",
        'add [backends.NAME] with type = "sagemaker" to nbscale.toml',
    )


class SageMakerPipelineBackend(RemotePipelines):
    """Pipeline runs on SageMaker Pipelines, recorded and followed here."""

    type = "sagemaker"
    title = "SageMaker"
    cache_note = "its steps cache by CacheConfig"
    label = "pipeline execution"
    compile_options = (
        "image",
        "role",
        "bucket",
        "prefix",
        "key_secret_arn",
        "runtime_wheels",
        "region",
    )
    compile_suffix = ".sagemaker.json"

    @classmethod
    def compile(cls, pipeline: Any, output: Path, **options: Any) -> None:
        from .pipeline_compile import compile_pipeline

        compile_pipeline(pipeline, output, **options)

    @cached_property
    def runner(self) -> SageMakerPipelines:
        return SageMakerPipelines(settings(self.config))

    @property
    def poll(self) -> float:
        return self.runner.settings.poll_seconds

    def remote_id(self, handle: Execution) -> str:
        return handle.execution_arn

    def resume(self, remote_id: str) -> Execution:
        return Execution("", remote_id)

    @classmethod
    def claims(cls, remote_id: str) -> bool:
        return remote_id.startswith("arn:aws:sagemaker:") and ":pipeline/" in remote_id

    def cancel_unrecorded(self, remote_id: str) -> str:
        """An execution started elsewhere: stopped through the backend of its region."""
        parts = remote_id.split(":")
        region = parts[3] if len(parts) > 3 else None
        runner = (
            self.runner if region in (None, self.runner.settings.region) else _for(region=region)
        )
        runner.cancel(remote_id)
        return f"pipeline execution {remote_id}: stopping"
