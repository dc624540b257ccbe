"""A SageMaker Pipelines definition checked as SageMaker reads it, independent of nbscale's
own ``pipeline_compile.validate``.

AWS publishes no machine-readable schema of the pipeline definition that is available
offline, so the structure is checked from the documented format:

- the definition (Version 2020-12-01, Metadata, Parameters, PipelineExperimentConfig,
  Steps): https://aws-sagemaker-mlops.github.io/sagemaker-model-building-pipeline-definition-JSON-schema/
  and https://docs.aws.amazon.com/sagemaker/latest/dg/define-pipeline.html
- a step's CacheConfig (``Enabled``, ``ExpireAfter`` an ISO 8601 duration):
  https://docs.aws.amazon.com/sagemaker/latest/dg/pipelines-caching-enabling.html
- retry policies (``ExceptionType`` from the documented list, IntervalSeconds,
  BackoffRate, MaxAttempts): https://docs.aws.amazon.com/sagemaker/latest/dg/pipelines-retry-policy.html
- property references (``Get: Steps.NAME.<Describe* response path>``, ``Parameters.NAME``,
  ``Execution.*``) and ``Std:Join``:
  https://docs.aws.amazon.com/sagemaker/latest/dg/build-and-manage-steps.html

- the ``Tuning`` step: its Arguments are a CreateHyperParameterTuningJob request without
  ``HyperParameterTuningJobName``, and its properties are the
  DescribeHyperParameterTuningJob and ListTrainingJobsForHyperParameterTuningJob responses
  (``Steps.NAME.BestTrainingJob...``, ``Steps.NAME.TrainingJobSummaries[K]...``, the best
  trial at index 0): "Tuning step" in
  https://docs.aws.amazon.com/sagemaker/latest/dg/build-and-manage-steps.html and the
  SageMaker Python SDK's ``sagemaker.workflow.steps.TuningStep`` (``properties``,
  ``get_top_model_s3_uri``)

and every step's ``Arguments`` against the request shape of the job it starts in
botocore's SageMaker service model (CreateProcessingJob for ``Processing``,
CreateTrainingJob for ``Training``, CreateHyperParameterTuningJob for ``Tuning``), with
only the job name, which the pipeline sets, filled in. A ``Get`` is resolved against the
producing step's Describe* (and List*) response shapes in the same model, so a property
path SageMaker would not know fails here.
"""

from __future__ import annotations

import re
from typing import Any

import botocore.session
from botocore.exceptions import ParamValidationError
from botocore.validate import validate_parameters

TOP = {"Version", "Metadata", "Parameters", "PipelineExperimentConfig", "Steps"}
STEP_KEYS = {
    "Name",
    "Type",
    "Arguments",
    "DependsOn",
    "CacheConfig",
    "RetryPolicies",
    "PropertyFiles",
    "DisplayName",
    "Description",
}
PARAMETER_TYPES = {"String": str, "Integer": int, "Float": (int, float), "Boolean": bool}
# the step types whose Arguments are one SageMaker request: the request, the responses its
# properties are, and what the pipeline sets
REQUESTS = {
    "Processing": ("CreateProcessingJob", ("DescribeProcessingJob",), "ProcessingJobName"),
    "Training": ("CreateTrainingJob", ("DescribeTrainingJob",), "TrainingJobName"),
    "Tuning": (
        "CreateHyperParameterTuningJob",
        ("DescribeHyperParameterTuningJob", "ListTrainingJobsForHyperParameterTuningJob"),
        "HyperParameterTuningJobName",
    ),
}
RETRY_EXCEPTIONS = {
    "Step.SERVICE_FAULT",
    "Step.THROTTLING",
    "SageMaker.JOB_INTERNAL_ERROR",
    "SageMaker.CAPACITY_ERROR",
    "SageMaker.RESOURCE_LIMIT",
}
NAME = re.compile(r"^[A-Za-z0-9\-_]{1,64}$")
DURATION = re.compile(r"^P(?!$)(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+S)?)?$")


def _model():
    return botocore.session.get_session().get_service_model("sagemaker")


def _resolve_path(shape, path: str) -> bool:
    """Whether ``path`` (``A.B['key'].C``, ``A[0].B``) names a member of ``shape``."""
    for part in re.findall(r"[A-Za-z0-9_]+|\[[^\]]+\]", path):
        if part.startswith("["):
            if shape.type_name == "list":
                shape = shape.member
            elif shape.type_name == "map":
                shape = shape.value
            else:
                return False
            continue
        if shape.type_name == "list" and "OutputName" in getattr(shape.member, "members", {}):
            shape = shape.member  # Outputs['name'] indexes a list by its names
        if shape.type_name != "structure" or part not in shape.members:
            return False
        shape = shape.members[part]
    return True


def _expressions(value: Any):
    if isinstance(value, dict):
        if set(value) == {"Get"}:
            yield value["Get"]
        for item in value.values():
            yield from _expressions(item)
    elif isinstance(value, list):
        for item in value:
            yield from _expressions(item)


def _resolved(value: Any, field: str = "") -> Any:
    if isinstance(value, dict):
        if set(value) in ({"Get"}, {"Std:Join"}):
            return "s3://bucket/resolved" if "S3" in field else "resolved"
        return {k: _resolved(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolved(v, field) for v in value]
    return value


def problems(definition: dict[str, Any]) -> list[str]:
    """Everything SageMaker would refuse in ``definition``, in words ([] when none)."""
    found: list[str] = []
    model = _model()
    extra = set(definition) - TOP
    if extra:
        found.append(f"unknown top-level keys {sorted(extra)}")
    if definition.get("Version") != "2020-12-01":
        found.append(f"Version is {definition.get('Version')!r}, not 2020-12-01")
    params: set[str] = set()
    for p in definition.get("Parameters", []):
        kind = PARAMETER_TYPES.get(p.get("Type"))
        if not NAME.match(str(p.get("Name", ""))) or kind is None:
            found.append(f"parameter {p!r}: bad Name or Type")
            continue
        if "DefaultValue" in p and (
            not isinstance(p["DefaultValue"], kind)
            or (p["Type"] != "Boolean" and isinstance(p["DefaultValue"], bool))
        ):
            found.append(f"parameter {p['Name']}: DefaultValue is not {p['Type']}")
        params.add(p["Name"])
    steps = definition.get("Steps")
    if not isinstance(steps, list) or not steps:
        return [*found, "Steps must be a non-empty list"]
    names = [s.get("Name") for s in steps]
    if len(set(names)) != len(names):
        found.append(f"step names repeat: {names}")
    types = {s.get("Name"): s.get("Type") for s in steps}
    for step in steps:
        name = step.get("Name")
        where = f"step {name}"
        if set(step) - STEP_KEYS:
            found.append(f"{where}: unknown keys {sorted(set(step) - STEP_KEYS)}")
        if not NAME.match(str(name or "")):
            found.append(f"{where}: bad Name")
        if step.get("Type") not in REQUESTS:
            found.append(f"{where}: Type {step.get('Type')!r} is not one nbscale should write")
            continue
        create, _, job_name = REQUESTS[step["Type"]]
        args = _resolved(step.get("Arguments") or {})
        if job_name in args:
            found.append(f"{where}: {job_name} is the pipeline's to set")
        try:
            validate_parameters(
                {**args, job_name: "set-by-pipeline"}, model.operation_model(create).input_shape
            )
        except ParamValidationError as exc:
            found.append(f"{where}: {create}: {exc}")
        for dep in step.get("DependsOn", []):
            if dep not in types or dep == name:
                found.append(f"{where}: DependsOn {dep!r} is no other step")
        cache = step.get("CacheConfig")
        if cache is not None:
            if set(cache) - {"Enabled", "ExpireAfter"} or not isinstance(
                cache.get("Enabled"), bool
            ):
                found.append(f"{where}: CacheConfig {cache!r}")
            elif cache.get("Enabled") and not DURATION.match(str(cache.get("ExpireAfter", ""))):
                found.append(f"{where}: ExpireAfter {cache.get('ExpireAfter')!r} is no duration")
        for policy in step.get("RetryPolicies", []):
            if not set(policy.get("ExceptionType", [])) <= RETRY_EXCEPTIONS:
                found.append(f"{where}: retry ExceptionType {policy.get('ExceptionType')}")
            if not 1 <= int(policy.get("MaxAttempts", 1)) <= 20:
                found.append(f"{where}: MaxAttempts must be 1..20")
        for ref in _expressions(step.get("Arguments")):
            head, _, rest = ref.partition(".")
            if head == "Parameters":
                if rest not in params:
                    found.append(f"{where}: Get {ref}: no such parameter")
            elif head == "Execution":
                if rest not in {"PipelineExecutionId", "PipelineExecutionArn", "StartDateTime"}:
                    found.append(f"{where}: Get {ref}: no such execution property")
            elif head == "Steps":
                producer, _, path = rest.partition(".")
                if producer not in types or producer == name:
                    found.append(f"{where}: Get {ref}: no other step {producer!r}")
                    continue
                shapes = REQUESTS[types[producer]][1]
                outputs = [model.operation_model(d).output_shape for d in shapes]
                if not any(_resolve_path(output, path) for output in outputs):
                    found.append(f"{where}: Get {ref}: {' or '.join(shapes)} has no {path}")
            else:
                found.append(f"{where}: Get {ref}: unknown namespace")
    return found
