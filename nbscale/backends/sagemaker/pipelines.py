"""``nbscale pipeline run FLOW --backend NAME`` on SageMaker Pipelines.

The flow is compiled by ``nbscale.backends.sagemaker.pipeline_compile`` (one Processing step per
notebook step), its step code uploaded under the backend's storage prefix, the pipeline
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

from ...errors import NbscaleError
from ..remote.pipelines import RemotePipelines
from .jobs import client_error
from .settings import SageMakerSettings, settings

# SageMaker's step and execution states, as nbscale names them
STEP_STATES = {
    "Starting": "RUNNING",
    "Executing": "RUNNING",
    "Stopping": "RUNNING",
    "Stopped": "CANCELLED",
    "Failed": "FAILED",
    "Succeeded": "SUCCEEDED",
}
EXECUTION_STATES = {
    "Executing": "RUNNING",
    "Stopping": "RUNNING",
    "Stopped": "CANCELLED",
    "Failed": "FAILED",
    "Succeeded": "SUCCEEDED",
}
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
        from ...pipelines.loader import load
        from . import pipeline_compile as sagemaker_target

        self.settings.require_credentials()
        pipeline = load(path)
        prefix = "/".join(p for p in (self.settings.prefix, "pipelines", pipeline.name) if p)
        with tempfile.TemporaryDirectory(prefix="nbscale-smp-") as tmp:
            output = Path(tmp) / f"{pipeline.name}.json"
            options: dict[str, Any] = {
                "role": self.settings.role_arn,
                "bucket": self.settings.bucket,
                "prefix": prefix,
                "region": self.settings.region,  # the steps' images are this region's
            }
            image = image or self.settings.pipeline_image
            if image:  # else the compile target's stock image, with the step wheelhouse
                options["image"] = image
            sagemaker_target.compile_pipeline(pipeline, output, **options)
            name = pipeline_name(f"nbscale-{pipeline.name}")
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

    def start(
        self, path: str, parameters: dict[str, Any] | None = None, image: str | None = None
    ) -> Execution:
        name, arn, definition = self.create(path, image)
        declared = {p["Name"] for p in definition.get("Parameters", [])}
        unknown = sorted(set(parameters or {}) - declared)
        if unknown:
            from ...errors import SpecError

            raise SpecError(
                "-p",
                f"the pipeline has no parameter {unknown[0]!r}",
                f"its parameters: {', '.join(sorted(declared)) or '(none)'}",
            )
        params = [
            {"Name": k, "Value": json.dumps(v) if isinstance(v, list | dict) else str(v)}
            for k, v in (parameters or {}).items()
        ]
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
            steps: list[dict[str, Any]] = []
            kwargs: dict[str, Any] = {"PipelineExecutionArn": execution.execution_arn}
            while True:
                page = sm.list_pipeline_execution_steps(**kwargs)
                steps += page.get("PipelineExecutionSteps", [])
                if not page.get("NextToken"):
                    break
                kwargs["NextToken"] = page["NextToken"]
            desc = sm.describe_pipeline_execution(PipelineExecutionArn=execution.execution_arn)
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
        execution.status = EXECUTION_STATES.get(desc.get("PipelineExecutionStatus", ""), "RUNNING")
        execution.error = desc.get("FailureReason")
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
