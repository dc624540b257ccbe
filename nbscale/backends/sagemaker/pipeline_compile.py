"""A SageMaker Pipelines definition (schema 2020-12-01): one Processing step per notebook step.

Each step runs ``python3 -m nbscale.pipelines.container_step``. In the default
stock PyTorch image it first installs nbscale's step wheelhouse (nbscale, papermill,
ipykernel and their closure, shipped in ``FILE.code/.runtime/``) offline; an image
that already holds them (``docker/Dockerfile``, ``--image``) starts it directly. Its code (the step notebook
and the local modules it imports) is written next to the definition and
uploaded to ``s3://BUCKET/PREFIX/code/STEP/``; the upstream steps' output
folders come in as Processing inputs; parameters are pipeline parameters read
with ``Get``. Resources pick the instance type, ``timeout`` is the job's
MaxRuntimeInSeconds, ``retries`` a retry policy, ``cache`` the CacheConfig.
Each step is its own machine: it verifies its inputs with the pipeline key,
which reaches it as a Secrets Manager secret whose ARN is the step's
``NBSCALE_KEY_SECRET_ARN`` (``upload_and_create`` puts the key there).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from ...errors import SpecError
from ...keys import KEY_SECRET_ENV
from ...pipelines.fingerprint import module_sources
from ...pipelines.model import Pipeline, Resources, Step
from ...pipelines.step_sweep import refuse_compile
from ...pipelines.stepbook import container_template as notebook_template

PROC = "/opt/ml/processing"
TYPES = {bool: "Boolean", int: "Integer", float: "Float", str: "String"}
KINDS = {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "dict"}
# None: each step runs the stock SageMaker PyTorch image of the kernel's torch and Python
# in the pipeline's region, CPU or GPU as its instance type is (images.json). nbscale,
# papermill and ipykernel are not in it, so each step installs the runtime's step
# wheelhouse (built for that Python), shipped with the code, offline
DEFAULT_IMAGE = None
IMAGE_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
RUNTIME_DIR = ".runtime"  # beside the steps' code folders; no step can have this name
STEP_MODULE = "nbscale.pipelines.container_step"
# smallest general-purpose (or GPU) instance that fits the request: (vCPU, GiB, GPUs, type)
INSTANCES = [
    (2, 8, 0, "ml.m5.large"),
    (4, 16, 0, "ml.m5.xlarge"),
    (8, 32, 0, "ml.m5.2xlarge"),
    (16, 64, 0, "ml.m5.4xlarge"),
    (48, 192, 0, "ml.m5.12xlarge"),
    (4, 16, 1, "ml.g5.xlarge"),
    (48, 192, 4, "ml.g5.12xlarge"),
    (192, 768, 8, "ml.g5.48xlarge"),
]


def _gib(memory: str | None) -> float:
    if not memory:
        return 0.0
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]i?)?B?\s*", memory)
    if not m:
        raise SpecError(
            "resources.memory", f"{memory!r} is not a quantity", "write e.g. 512Mi or 4Gi"
        )
    scale = {
        "K": 1e3,
        "M": 1e6,
        "G": 1e9,
        "T": 1e12,
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
    }
    return float(m.group(1)) * scale.get(m.group(2) or "", 1) / 2**30


def step_image(step: Step, region: str, image: str | None) -> str:
    """``image`` (``{region}`` filled in), else the stock image for the step's instance."""
    if image:
        return image.format(region=region)
    from .images import node, stock_image

    gpu = node(instance_type(step.resources)).gpus > 0
    return stock_image("training", region, gpu, "image (--image or pipeline_image)")


def instance_type(res: Resources) -> str:
    if res.instance_type:
        return res.instance_type
    for cpu, mem, gpu, name in INSTANCES:
        if (res.cpu or 0) <= cpu and _gib(res.memory) <= mem and res.gpu <= gpu:
            return name
    raise SpecError(
        "resources",
        f"no SageMaker instance type fits {res.to_dict()}",
        "set resources.instance_type",
    )


def _step_uri(bucket: str, prefix: str, *parts: str) -> dict[str, Any]:
    return {
        "Std:Join": {
            "On": "/",
            "Values": [f"s3://{bucket}/{prefix}", {"Get": "Execution.PipelineExecutionId"}, *parts],
        }
    }


def _step(
    pipeline: Pipeline,
    step: Step,
    image: str,
    role: str,
    bucket: str,
    prefix: str,
    key_secret_arn: str | None = None,
    runtime_wheels: bool = False,
) -> dict[str, Any]:
    producers = sorted(set(step.inputs.values()))
    args: list[Any] = [
        "--code",
        f"{PROC}/input/code",
        "--outputs",
        f"{PROC}/output/outputs",
        "--executed",
        f"{PROC}/output/notebook",
    ]
    for producer in producers:
        args += ["--input", f"{producer}={PROC}/input/{producer}"]
    types = {}
    for name in step.uses_parameters:
        args += [
            "--param",
            name,
            {"Std:Join": {"On": "", "Values": [{"Get": f"Parameters.{name}"}]}},
        ]
        types[name] = KINDS.get(type(pipeline.parameters[name]), "str")
    for name, value in step.fixed_parameters.items():
        args += [
            "--param",
            name,
            json.dumps(value) if isinstance(value, list | dict) else str(value),
        ]
        types[name] = KINDS.get(type(value), "str")
    args += ["--types", json.dumps(types)]
    if step.timeout:
        args += ["--timeout", str(int(step.timeout))]
    inputs = [
        {
            "InputName": "code",
            "AppManaged": False,
            "S3Input": {
                "S3Uri": f"s3://{bucket}/{prefix}/code/{step.name}",
                "LocalPath": f"{PROC}/input/code",
                "S3DataType": "S3Prefix",
                "S3InputMode": "File",
                "S3DataDistributionType": "FullyReplicated",
            },
        }
    ]
    if runtime_wheels:
        inputs.append(
            {
                "InputName": "nbscale-runtime",
                "AppManaged": False,
                "S3Input": {
                    "S3Uri": f"s3://{bucket}/{prefix}/code/{RUNTIME_DIR}",
                    "LocalPath": f"{PROC}/input/runtime",
                    "S3DataType": "S3Prefix",
                    "S3InputMode": "File",
                    "S3DataDistributionType": "FullyReplicated",
                },
            }
        )
    for producer in producers:
        inputs.append(
            {
                "InputName": f"in-{producer}",
                "AppManaged": False,
                "S3Input": {
                    "S3Uri": {
                        "Get": f"Steps.{producer}.ProcessingOutputConfig.Outputs['outputs'].S3Output.S3Uri"
                    },
                    "LocalPath": f"{PROC}/input/{producer}",
                    "S3DataType": "S3Prefix",
                    "S3InputMode": "File",
                    "S3DataDistributionType": "FullyReplicated",
                },
            }
        )
    outputs = [
        {
            "OutputName": name,
            "AppManaged": False,
            "S3Output": {
                "S3Uri": _step_uri(bucket, prefix, step.name, name),
                "LocalPath": f"{PROC}/output/{name}",
                "S3UploadMode": "EndOfJob",
            },
        }
        for name in ("outputs", "notebook")
    ]
    arguments: dict[str, Any] = {
        "ProcessingResources": {
            "ClusterConfig": {
                "InstanceType": instance_type(step.resources),
                "InstanceCount": 1,
                "VolumeSizeInGB": 30,
            }
        },
        "AppSpecification": {
            "ImageUri": image,
            "ContainerEntrypoint": _entrypoint(runtime_wheels),
            "ContainerArguments": args,
        },
        "RoleArn": role,
        "ProcessingInputs": inputs,
        "ProcessingOutputConfig": {"Outputs": outputs},
        "StoppingCondition": {"MaxRuntimeInSeconds": int(step.timeout or 86400)},
    }
    if key_secret_arn:
        # only the ARN travels; the step reads the pipeline key with its role
        arguments["Environment"] = {KEY_SECRET_ENV: key_secret_arn}
    out: dict[str, Any] = {"Name": step.name, "Type": "Processing", "Arguments": arguments}
    explicit = [d for d in step.depends_on if d not in producers]
    if explicit:
        out["DependsOn"] = explicit
    if step.retries:
        out["RetryPolicies"] = [
            {
                "ExceptionType": ["SageMaker.JOB_INTERNAL_ERROR", "SageMaker.CAPACITY_ERROR"],
                "IntervalSeconds": 10,
                "BackoffRate": 2.0,
                "MaxAttempts": step.retries,
            }
        ]
    out["CacheConfig"] = {"Enabled": bool(step.cache), "ExpireAfter": "P30D"}
    return out


def _entrypoint(runtime_wheels: bool) -> list[str]:
    if not runtime_wheels:  # an image with nbscale in it (docker/Dockerfile, or your own)
        return ["python3", "-m", STEP_MODULE]
    from ...runtime.wheelhouse import install_command

    install = install_command(f"{PROC}/input/runtime", python="python3")
    return ["sh", "-c", f'{install} && exec python3 -m {STEP_MODULE} "$@"', "nbscale-step"]


def _role(role: str | None) -> str:
    if role:
        return role
    from ...config import load as load_config

    for backend in load_config().backends.values():
        if backend.type == "sagemaker" and backend.settings.get("role_arn"):
            return str(backend.settings["role_arn"])
    raise SpecError(
        "--role",
        "is needed for a SageMaker pipeline",
        'give --role ARN, or set role_arn in a [backends.NAME] with type = "sagemaker"',
    )


def definition(
    pipeline: Pipeline,
    image: str | None = DEFAULT_IMAGE,
    role: str | None = None,
    bucket: str = "nbscale-pipelines",
    prefix: str | None = None,
    key_secret_arn: str | None = None,
    runtime_wheels: bool = False,
    region: str = "us-east-1",
) -> dict[str, Any]:
    refuse_compile(pipeline, "sagemaker", "SageMaker", "TuningStep")
    role = _role(role)
    prefix = (prefix or pipeline.name).strip("/")
    params = []
    for name, value in pipeline.parameters.items():
        kind = TYPES.get(type(value), "String")
        default = json.dumps(value) if isinstance(value, list | dict) else value
        params.append({"Name": name, "Type": kind, "DefaultValue": default})
    return {
        "Version": "2020-12-01",
        "Metadata": {
            "nbscale": {"source": Path(pipeline.source).name, "bucket": bucket, "prefix": prefix}
        },
        "Parameters": params,
        "Steps": [
            _step(
                pipeline,
                pipeline.steps[n],
                step_image(pipeline.steps[n], region, image),
                role,
                bucket,
                prefix,
                key_secret_arn,
                runtime_wheels,
            )
            for n in pipeline.order()
        ],
    }


def code_dir(output: Path) -> Path:
    return output.with_name(output.stem + ".code")


def compile_pipeline(
    pipeline: Pipeline,
    output: Path,
    image: str | None = DEFAULT_IMAGE,
    role: str | None = None,
    bucket: str = "nbscale-pipelines",
    prefix: str | None = None,
    key_secret_arn: str | None = None,
    runtime_wheels: bool | None = None,
    region: str = "us-east-1",
) -> None:
    """Write the definition and, beside it, each step's code; with ``runtime_wheels`` (the
    default for the stock image) also the step wheelhouse the steps install offline."""
    if runtime_wheels is None:
        runtime_wheels = not image
    data = definition(pipeline, image, role, bucket, prefix, key_secret_arn, runtime_wheels, region)
    code = code_dir(output)
    if runtime_wheels:
        from ...runtime.wheelhouse import build

        shutil.rmtree(code / RUNTIME_DIR, ignore_errors=True)
        from ..images import kernel_versions

        # the stock images match the kernel's Python (definition refused any other)
        build("step", code / RUNTIME_DIR, list(IMAGE_PLATFORMS), kernel_versions().python)
    for name in pipeline.order():
        step = pipeline.steps[name]
        folder = code / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "step.ipynb").write_text(notebook_template(pipeline, step))
        for rel, text in module_sources(pipeline, step).items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_text(text)
    output.write_text(json.dumps(data, indent=2))


def ensure_key_secret(secretsmanager, name: str, kms_key_id: str | None = None) -> str:
    """Create or update the Secrets Manager secret that holds the pipeline key; return its ARN.

    The steps' role needs ``secretsmanager:GetSecretValue`` on it; only the ARN goes into the
    definition."""
    from ...keys import export

    value = export("pipeline")
    try:
        return secretsmanager.put_secret_value(SecretId=name, SecretString=value)["ARN"]
    except secretsmanager.exceptions.ResourceNotFoundException:
        extra = {"KmsKeyId": kms_key_id} if kms_key_id else {}
        return secretsmanager.create_secret(
            Name=name,
            SecretString=value,
            Description="nbscale pipeline signing key (steps verify each other's artifacts)",
            **extra,
        )["ARN"]


def upload_and_create(
    output: Path, sagemaker, s3, role: str, name: str | None = None, secretsmanager=None
) -> str:
    """Upload the step code next to ``output`` and create (or update) the pipeline; returns its ARN.

    With ``secretsmanager``, the pipeline key is put in a secret named ``nbscale/<pipeline>/keys``
    and every step gets its ARN (steps compiled with ``key_secret_arn`` already have one)."""
    data = json.loads(output.read_text())
    meta = data["Metadata"]["nbscale"]
    if secretsmanager is not None:
        arn = ensure_key_secret(secretsmanager, f"nbscale/{meta['prefix']}/keys")
        for step in data["Steps"]:
            step["Arguments"].setdefault("Environment", {})[KEY_SECRET_ENV] = arn
        output.write_text(json.dumps(data, indent=2))
    for path in sorted(p for p in code_dir(output).rglob("*") if p.is_file()):
        key = f"{meta['prefix']}/code/{path.relative_to(code_dir(output)).as_posix()}"
        s3.put_object(Bucket=meta["bucket"], Key=key, Body=path.read_bytes())
    name = name or re.sub(r"[^A-Za-z0-9-]", "-", meta["prefix"])[:256]
    validate(data)
    body = json.dumps(data)
    try:
        return sagemaker.create_pipeline(PipelineName=name, PipelineDefinition=body, RoleArn=role)[
            "PipelineArn"
        ]
    except sagemaker.exceptions.ClientError as exc:
        error = exc.response.get("Error", {})
        if error.get("Code") != "ResourceInUse" and "already exists" not in error.get(
            "Message", ""
        ):
            raise
        return sagemaker.update_pipeline(PipelineName=name, PipelineDefinition=body, RoleArn=role)[
            "PipelineArn"
        ]


NAME = re.compile(r"^[A-Za-z0-9\-_]{1,64}$")


def validate(data: dict[str, Any]) -> None:
    """The checks SageMaker makes on a definition that an emulator does not: names, types, references."""
    problems: list[str] = []
    if data.get("Version") != "2020-12-01":
        problems.append("Version must be 2020-12-01")
    params = {}
    for p in data.get("Parameters", []):
        kind = p.get("Type")
        ok = {"String": str, "Integer": int, "Float": float | int, "Boolean": bool}.get(kind)
        if not NAME.match(p.get("Name", "")) or ok is None:
            problems.append(f"parameter {p.get('Name')!r} has a bad name or type {kind!r}")
        elif "DefaultValue" in p and not isinstance(p["DefaultValue"], ok):
            problems.append(f"parameter {p['Name']} default {p['DefaultValue']!r} is not {kind}")
        params[p.get("Name")] = kind
    seen: set[str] = set()
    steps = data.get("Steps") or []
    names = {s.get("Name") for s in steps}
    for step in steps:
        name = step.get("Name", "")
        if not NAME.match(name) or step.get("Type") != "Processing":
            problems.append(f"step {name!r}: bad name or type")
        args = step.get("Arguments", {})
        for key in ("ProcessingResources", "AppSpecification", "RoleArn", "ProcessingOutputConfig"):
            if key not in args:
                problems.append(f"step {name}: Arguments.{key} is missing")
        if not re.match(r"^arn:aws[a-z\-]*:iam::\d{12}:role/", str(args.get("RoleArn", ""))):
            problems.append(f"step {name}: RoleArn is not an IAM role ARN")
        cluster = args.get("ProcessingResources", {}).get("ClusterConfig", {})
        if (
            not str(cluster.get("InstanceType", "")).startswith("ml.")
            or cluster.get("InstanceCount", 0) < 1
        ):
            problems.append(f"step {name}: bad ClusterConfig {cluster}")
        runtime = args.get("StoppingCondition", {}).get("MaxRuntimeInSeconds", 1)
        if not 1 <= runtime <= 432000:
            problems.append(f"step {name}: MaxRuntimeInSeconds must be 1..432000")
        for dep in step.get("DependsOn", []):
            if dep not in names:
                problems.append(f"step {name}: DependsOn names unknown step {dep!r}")
        for ref in re.findall(r'"Get": "([^"]+)"', json.dumps(step)):
            head, _, rest = ref.partition(".")
            target = rest.split(".")[0]
            if head == "Parameters" and target not in params:
                problems.append(f"step {name}: Get {ref} names no parameter")
            elif head == "Steps" and target not in seen:
                problems.append(f"step {name}: Get {ref} names a step that does not come before it")
            elif head not in ("Parameters", "Steps", "Execution"):
                problems.append(f"step {name}: Get {ref} is not a known property")
        seen.add(name)
    if problems:
        raise SpecError("SageMaker definition", "; ".join(problems))
