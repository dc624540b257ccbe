"""A SageMaker Pipelines definition (schema 2020-12-01): one step per notebook step.

A step runs on one instance as a Processing step, or, with ``resources.nodes`` above 1,
as a Training step on that many instances (CreateTrainingJob arguments built by
``request.build``, as a job's are), so a pipeline can train distributed. A step with a
``sweep:`` block is a Tuning step (CreateHyperParameterTuningJob arguments built by the
SageMaker sweep backend's request builder; see "a sweep step" below), and the steps after
it read its best trial's outputs.

Each step runs ``python3 -m nbscale.pipelines.container_step`` (a training step, or a
step reading a training step's ``model.tar.gz``, through ``nbscale.runtime.pipeline_node``).
In the default stock PyTorch image it first installs nbscale's step wheelhouse (nbscale,
papermill, ipykernel and their closure, shipped in ``FILE.code/.runtime/``) offline; an
image that already holds them (``docker/Dockerfile``, ``--image``) starts it directly.

Its code (the step notebook and the local modules it imports) is written next to the
definition and uploaded to a content-addressed prefix,
``s3://BUCKET/PREFIX/code/STEP/SHA256`` (the digest of the bytes uploaded, the wheelhouse
likewise): SageMaker decides a cache hit by comparing the step's arguments, not the
bytes behind an S3 URI, so an edited notebook must change the arguments, and an
execution in flight must never see its code overwritten by the next upload. The step's
fingerprint (``nbscale.pipelines.fingerprint``, the key the local runner caches by, from
the step's source, its fixed parameters and its local modules) is in its arguments too
(``NBSCALE_STEP_FINGERPRINT``).

The upstream steps' output folders come in as inputs; parameters are pipeline
parameters read with ``Get``. Resources pick the instance type, ``timeout`` is the job's
MaxRuntimeInSeconds, ``retries`` a retry policy, ``cache`` the CacheConfig. Each step is
its own machine: it verifies its inputs with the pipeline key, which reaches it as a
Secrets Manager secret whose ARN is the step's ``NBSCALE_KEY_SECRET_ARN``
(``upload_and_create`` puts the key there).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...errors import NbscaleError, SpecError
from ...keys import KEY_SECRET_ENV
from ...pipelines.fingerprint import components, module_sources
from ...pipelines.fingerprint import key as fingerprint_key
from ...pipelines.model import Pipeline, Resources, Step
from ...pipelines.stepbook import container_template as notebook_template
from ...runtime.tuning_trial import HYPERPARAMETERS, PARAM_PREFIX

PROC = "/opt/ml/processing"
DATA = "/opt/ml/input/data"  # a training step's channels
MODEL = "/opt/ml/model"  # what a training job leaves there reaches S3 as model.tar.gz
FINGERPRINT_ENV = "NBSCALE_STEP_FINGERPRINT"
NODE_MODULE = "nbscale.runtime.pipeline_node"
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
TRIAL_MODULE = "nbscale.runtime.tuning_trial"  # a sweep step's trial (a Tuning step's job)
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


def is_tuning(step: Step) -> bool:
    """A step with a ``sweep:`` block runs as a SageMaker Pipelines Tuning step."""
    return step.sweep is not None


def is_training(step: Step) -> bool:
    """A step on more than one node runs as a SageMaker TrainingStep."""
    return step.resources.nodes > 1 and not is_tuning(step)


def leaves_model(step: Step) -> bool:
    """Its outputs reach S3 as a training job's ``model.tar.gz`` (a Training step's, or the
    best trial's of a Tuning step), which the steps reading them unpack first."""
    return is_training(step) or is_tuning(step)


def step_files(pipeline: Pipeline, step: Step, runtime_wheels: bool = False) -> dict[str, bytes]:
    """What is uploaded as the step's code: its notebook and the local modules it imports;
    a sweep step's also the trial program's ``sourcedir.tar.gz`` (``tuning.SOURCEDIR``)."""
    files = {"step.ipynb": notebook_template(pipeline, step).encode()}
    for rel, text in module_sources(pipeline, step).items():
        files[rel] = text.encode()
    if is_tuning(step):
        files.update(sourcedir_bytes(pipeline, step, runtime_wheels))
    return files


def files_digest(files: dict[str, bytes]) -> str:
    """sha256 over every (path, bytes) pair: the code prefix of exactly these files."""
    h = hashlib.sha256()
    for rel in sorted(files):
        data = files[rel]
        h.update(f"{rel}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def folder_files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def step_fingerprint(pipeline: Pipeline, step: Step) -> str:
    """The step's cache key as the local runner computes it (source, fixed parameters,
    local modules, sweep), less what only exists at run time: the pipeline parameters'
    values and the inputs' digests, which SageMaker's own key compares (they are the
    step's ``Get`` arguments and its producers' output URIs)."""
    parts = components(pipeline, step, dict(step.fixed_parameters), {}, "python3")
    return fingerprint_key(parts)


def _step_arguments(pipeline: Pipeline, step: Step) -> tuple[list[Any], dict[str, str]]:
    """``--param`` and ``--types`` arguments of the step command."""
    args: list[Any] = []
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
    return args, types


def _output_of(pipeline: Pipeline, producer: str, bucket: str, prefix: str) -> dict[str, Any]:
    """Where a producer's outputs are in S3, as a property reference: a Processing step's
    ``outputs`` prefix, a Training step's ``model.tar.gz``, or a Tuning step's best trial's."""
    if is_tuning(pipeline.steps[producer]):
        return best_model_uri(producer, bucket, prefix)
    if is_training(pipeline.steps[producer]):
        return {"Get": f"Steps.{producer}.ModelArtifacts.S3ModelArtifacts"}
    return {"Get": f"Steps.{producer}.ProcessingOutputConfig.Outputs['outputs'].S3Output.S3Uri"}


def _step_common(pipeline: Pipeline, step: Step, out: dict[str, Any]) -> dict[str, Any]:
    producers = sorted(set(step.inputs.values()))
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


def _step(
    pipeline: Pipeline,
    step: Step,
    image: str,
    role: str,
    bucket: str,
    prefix: str,
    code: dict[str, str],
    key_secret_arn: str | None = None,
    runtime_wheels: bool = False,
) -> dict[str, Any]:
    producers = sorted(set(step.inputs.values()))
    io, trained = io_arguments(
        pipeline,
        step,
        (f"{PROC}/input/code", f"{PROC}/output/outputs", f"{PROC}/output/notebook"),
        lambda producer: f"{PROC}/input/{producer}",
    )
    args: list[Any] = list(io)
    params, _ = _step_arguments(pipeline, step)
    args += params
    inputs = [
        {
            "InputName": "code",
            "AppManaged": False,
            "S3Input": {
                "S3Uri": f"s3://{bucket}/{prefix}/{code[step.name]}",
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
                    "S3Uri": f"s3://{bucket}/{prefix}/{code[RUNTIME_DIR]}",
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
                    "S3Uri": _output_of(pipeline, producer, bucket, prefix),
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
    if trained:  # unpack the training producers' model.tar.gz first
        unpack = [a for p in trained for a in ("--unpack", f"{PROC}/input/{p}")]
        args = [*unpack, "--", *args]
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
            "ContainerEntrypoint": _entrypoint(
                runtime_wheels, f"{PROC}/input/runtime", NODE_MODULE if trained else STEP_MODULE
            ),
            "ContainerArguments": args,
        },
        "RoleArn": role,
        "ProcessingInputs": inputs,
        "ProcessingOutputConfig": {"Outputs": outputs},
        "StoppingCondition": {"MaxRuntimeInSeconds": int(step.timeout or 86400)},
        # in the arguments SageMaker's cache compares: an edited step misses it
        "Environment": {FINGERPRINT_ENV: step_fingerprint(pipeline, step)},
    }
    if key_secret_arn:
        # only the ARN travels; the step reads the pipeline key with its role
        arguments["Environment"][KEY_SECRET_ENV] = key_secret_arn
    out: dict[str, Any] = {"Name": step.name, "Type": "Processing", "Arguments": arguments}
    return _step_common(pipeline, step, out)


def _channel(name: str, uri: Any) -> dict[str, Any]:
    return {
        "ChannelName": name,
        "DataSource": {
            "S3DataSource": {
                "S3DataType": "S3Prefix",
                "S3Uri": uri,
                "S3DataDistributionType": "FullyReplicated",
            }
        },
        "InputMode": "File",
    }


def training_settings(role: str, bucket: str, prefix: str, region: str, settings: Any = None):
    """The SageMaker settings a training step's request is built with: the backend's, or
    (``nbscale pipeline compile``) one made of the compile options."""
    if settings is not None:
        return settings
    from ...config import BackendConfig
    from .settings import settings as load_settings

    raw = {"role_arn": role, "storage": f"s3://{bucket}/{prefix}", "region": region}
    return load_settings(BackendConfig("pipeline", "sagemaker", raw))


def io_arguments(
    pipeline: Pipeline,
    step: Step,
    paths: tuple[str, str, str],
    input_folder: Callable[[str], str],
) -> tuple[list[str], list[str]]:
    """``container_step``'s ``--code --outputs --executed`` (``paths``) and one ``--input``
    per producer, in the folder ``input_folder(producer)`` (a training step's
    ``model.tar.gz`` holds ``outputs/`` and ``notebook/``); and the producers that leave a
    ``model.tar.gz``."""
    producers = sorted(set(step.inputs.values()))
    trained = [p for p in producers if leaves_model(pipeline.steps[p])]
    code, outputs, executed = paths
    args = ["--code", code, "--outputs", outputs, "--executed", executed]
    for producer in producers:
        folder = input_folder(producer) + ("/outputs" if producer in trained else "")
        args += ["--input", f"{producer}={folder}"]
    return args, trained


def node_arguments(pipeline: Pipeline, step: Step) -> tuple[list[str], list[str]]:
    """``--unpack`` arguments (the producers that leave a ``model.tar.gz``) and the step's
    ``container_step`` arguments on a training job's host (channels in, ``/opt/ml/model``
    out), without its parameters."""
    step_args, trained = io_arguments(
        pipeline,
        step,
        (f"{DATA}/code", f"{MODEL}/outputs", f"{MODEL}/notebook"),
        lambda producer: f"{DATA}/in-{producer}",
    )
    unpack = [a for p in trained for a in ("--unpack", f"{DATA}/in-{p}")]
    return unpack, step_args


def training_request(
    pipeline: Pipeline,
    step: Step,
    image: str,
    bucket: str,
    prefix: str,
    code: dict[str, str],
    backend: Any,
    key_secret_arn: str | None = None,
    runtime_wheels: bool = False,
) -> dict[str, Any]:
    """CreateTrainingJob arguments for the step on ``resources.nodes`` instances, built by
    ``request.build`` as a job's request is (instance, volume, KMS, VPC, warm pool, EFA
    variables, tags, the backend's spot and retries), with the step's channels and command;
    TrainingJobName is left to SageMaker, as a pipeline sets it."""
    from .request import Staged, build

    instance = instance_type(step.resources)
    fingerprint = step_fingerprint(pipeline, step)
    job_id = re.sub(r"[^a-z0-9-]+", "-", f"{pipeline.name}-{step.name}".lower()).strip("-")
    spec = {
        "nodes": step.resources.nodes,
        "instance_type": instance,
        "gpus_per_proc": step.resources.gpu,
        "max_runtime": int(step.timeout or 86400),
        "image": image,
        "env": {FINGERPRINT_ENV: fingerprint},
    }
    staged = Staged(
        bundle_prefix=None,
        spec_prefix=f"s3://{bucket}/{prefix}/{code[step.name]}",
        key_secret_arn=key_secret_arn,
    )
    request = build(job_id, spec, backend, staged)
    request.pop("TrainingJobName", None)
    producers = sorted(set(step.inputs.values()))
    channels = [_channel("code", f"s3://{bucket}/{prefix}/{code[step.name]}")]
    if runtime_wheels:
        channels.append(_channel("runtime", f"s3://{bucket}/{prefix}/{code[RUNTIME_DIR]}"))
    for producer in producers:
        channels.append(_channel(f"in-{producer}", _output_of(pipeline, producer, bucket, prefix)))
    unpack, step_args = node_arguments(pipeline, step)
    params, _ = _step_arguments(pipeline, step)
    request["InputDataConfig"] = channels
    request["AlgorithmSpecification"] = {
        "TrainingImage": request["AlgorithmSpecification"]["TrainingImage"],
        "TrainingInputMode": "File",
        "ContainerEntrypoint": _entrypoint(runtime_wheels, f"{DATA}/runtime", NODE_MODULE),
        "ContainerArguments": [*unpack, "--fingerprint", fingerprint, "--", *step_args, *params],
    }
    request["OutputDataConfig"]["S3OutputPath"] = _step_uri(bucket, prefix, step.name)
    return request


def _training_step(
    pipeline: Pipeline,
    step: Step,
    image: str,
    bucket: str,
    prefix: str,
    code: dict[str, str],
    backend: Any,
    key_secret_arn: str | None = None,
    runtime_wheels: bool = False,
) -> dict[str, Any]:
    request = training_request(
        pipeline, step, image, bucket, prefix, code, backend, key_secret_arn, runtime_wheels
    )
    out: dict[str, Any] = {"Name": step.name, "Type": "Training", "Arguments": request}
    return _step_common(pipeline, step, out)


# -- a sweep step: a Tuning step ------------------------------------------------------------
# A pipeline step with a ``sweep:`` block, compiled for SageMaker Pipelines: a ``Tuning`` step.
#
# The step's ``Arguments`` are a CreateHyperParameterTuningJob request without its name (the
# pipeline names the tuning job), made by the SageMaker sweep backend's own request builder
# (``sweeps``: ``strategy``, ``parameter_ranges``, ``definition``, ``check_request``, the
# request ``nbscale sweep --backend aws`` sends) from the CreateTrainingJob request the step
# would get as a Training step (``training_request``: image, role,
# instances, channels of its code and its producers' outputs, VPC, KMS, spot, its
# ``NBSCALE_STEP_FINGERPRINT``).
#
# A tuning job cannot set its trials' entry point: SageMaker starts the image with ``train``,
# which in the stock PyTorch images is the SageMaker training toolkit. It runs
# ``nbscale_trial.py`` from ``sourcedir.tar.gz`` (static hyperparameters, as the sweep
# backend's trials do), which is part of the step's content-addressed code prefix and execs
# the trial's command: the step wheelhouse installed offline (stock image), then ``python3
# -m nbscale.runtime.tuning_trial``, which reads the trial's values from
# ``hyperparameters.json`` and runs the step on the training job's hosts as a Training step
# runs, printing the metric lines the ``MetricDefinitions`` read. The pipeline parameters the
# step uses reach it as the static hyperparameters ``nbscale_param_<name>`` (their ``Get``).
#
# Each trial leaves the step's outputs and executed notebook in ``/opt/ml/model``, so in its
# ``model.tar.gz`` at ``S3OutputPath/<training job>/output/``. The steps that read the sweep
# step's outputs read the best trial's: ``Steps.<step>.TrainingJobSummaries[0]`` is the best
# training job of a tuning step (the SageMaker Python SDK's ``TuningStep.properties`` are the
# DescribeHyperParameterTuningJob and ListTrainingJobsForHyperParameterTuningJob responses,
# and its ``get_top_model_s3_uri(top_k=0)`` joins that name into the model's URI the same
# way).

TRIAL_PROGRAM = '''\
"""nbscale: one trial of sweep step {step} of pipeline {pipeline} (a SageMaker Pipelines
Tuning step's training job).

The SageMaker training toolkit runs this file with the hyperparameters as --name value
arguments; they are not read here: the trial entry reads hyperparameters.json. This execs
the trial's command.
"""
import os
import sys

ARGV = {argv!r}
sys.stdout.flush()
os.execvp(ARGV[0], ARGV)
'''


def _where(pipeline: Pipeline, step: Step) -> str:
    return f"steps[{list(pipeline.steps).index(step.name)}].sweep"  # as pipeline.yaml lists them


def sweep_spec(pipeline: Pipeline, step: Step):
    """The step's sweep as the ``SweepSpec`` the sweep backend's builder takes: the step's
    notebook as its job, the ``sweep:`` block's space, objective, budget and search."""
    from ...specs import Entry, JobSpec
    from ...sweeps.spec import SweepSpec

    sweep = step.sweep
    assert sweep is not None
    from ...pipelines.step_sweep import sweep_name

    name = sweep_name(pipeline.name, step.name)
    job = JobSpec(
        entry=Entry("notebook", step.notebook),
        name=name,
        nodes=step.resources.nodes,
        instance_type=instance_type(step.resources),
    )
    return SweepSpec(
        job=job, space=sweep.space, objective=sweep.objective, name=name, **sweep.search()
    )


def tuning_config(pipeline: Pipeline, step: Step) -> dict[str, Any]:
    """``HyperParameterTuningJobConfig`` of the step's sweep, by the sweep backend's rules;
    what SageMaker has no form for is refused, naming the ``sweep:`` key."""
    from . import sweeps

    where = _where(pipeline, step)
    spec = sweep_spec(pipeline, step)
    if "max_failed" in step.sweep.given:
        raise SpecError(
            f"{where}.max_failed",
            f"step {step.name}: SageMaker has no failure limit for a tuning job's trials, and "
            "nothing follows a pipeline's tuning job to stop it, so max_failed cannot be kept",
            "drop max_failed from the sweep: block (a failed trial is not scored and the others "
            "go on), or run the pipeline here, where it is kept",
        )
    if spec.algorithm == "tpe":
        raise SpecError(
            f"{where}.algorithm",
            f"step {step.name}: tpe (the default) is not a SageMaker tuning strategy "
            "(SageMaker has Bayesian, Random, Grid and Hyperband)",
            "set algorithm: bayesian (SageMaker's model-based search, the nearest to tpe), "
            "random or grid in the sweep: block",
        )
    if spec.pruner == "halving":
        raise SpecError(
            f"{where}.pruner",
            f"step {step.name}: halving is SageMaker's Hyperband strategy, which needs the most "
            "values of the objective one trial logs, and a sweep: block has no key for it",
            "use pruner: median (SageMaker's early stopping, Auto) or none",
        )
    try:
        how, early, strategy_config = sweeps.strategy(spec)
        ranges = sweeps.parameter_ranges(spec)
    except SpecError as exc:
        field = exc.field.removeprefix("sweep")
        problem = exc.message.split(": ", 1)[-1]
        raise SpecError(f"{where}{field}", f"step {step.name}: {problem}", exc.hint) from None
    if spec.algorithm == "grid":
        size = spec.space.grid_size()
        if spec.trials < size:
            raise SpecError(
                f"{where}.trials",
                f"step {step.name}: SageMaker's Grid strategy runs every one of the {size} "
                f"combinations; trials: {spec.trials} is fewer",
                f"set trials: {size}, or algorithm: random for {spec.trials}",
            )
    return sweeps.tuning_config(spec, (how, early, strategy_config), ranges)


def check_sweeps(pipeline: Pipeline) -> None:
    """Every sweep step's refusals, before anything is built or written."""
    for name in pipeline.order():
        step = pipeline.steps[name]
        if step.sweep is not None:
            tuning_config(pipeline, step)


def trial_argv(pipeline: Pipeline, step: Step, runtime_wheels: bool) -> list[str]:
    """The command a trial's program execs: the trial entry with the step's arguments on a
    training job's host and its fixed parameters (the pipeline parameters' values and the
    tuned values come from ``hyperparameters.json``)."""

    from .request import CHECKPOINT_PATH  # each trial gets a folder of its own under it

    sweep = step.sweep
    assert sweep is not None
    unpack, step_args = node_arguments(pipeline, step)
    _, types = _step_arguments(pipeline, step)
    fixed: list[str] = []
    for name, value in step.fixed_parameters.items():
        text = json.dumps(value) if isinstance(value, list | dict) else str(value)
        fixed += ["--param", name, text]
    if step.timeout:
        fixed += ["--timeout", str(int(step.timeout))]
    trial = [
        "--space",
        json.dumps(sweep.space.to_list()),
        "--types",
        json.dumps(types, sort_keys=True),
        "--hyperparameters",
        HYPERPARAMETERS,
        "--checkpoints",
        CHECKPOINT_PATH,
        "--",
        *unpack,
        "--fingerprint",
        step_fingerprint(pipeline, step),
        "--",
        *step_args,
        *fixed,
    ]
    entry = _entrypoint(runtime_wheels, f"{DATA}/runtime", TRIAL_MODULE)
    return [*entry, *trial]


def trial_program(pipeline: Pipeline, step: Step, runtime_wheels: bool) -> bytes:
    argv = trial_argv(pipeline, step, runtime_wheels)
    return TRIAL_PROGRAM.format(step=step.name, pipeline=pipeline.name, argv=argv).encode()


def sourcedir_bytes(pipeline: Pipeline, step: Step, runtime_wheels: bool) -> dict[str, bytes]:
    """``{"sourcedir.tar.gz": bytes}``: the trial program as the training toolkit fetches it,
    made by the sweep backend's ``source_dir`` (the same bytes for the same program)."""
    from . import sweeps

    with tempfile.TemporaryDirectory(prefix="nbscale-smp-trial-") as tmp:
        path = sweeps.source_dir(
            trial_program(pipeline, step, runtime_wheels), Path(tmp) / sweeps.SOURCEDIR
        )
        return {sweeps.SOURCEDIR: path.read_bytes()}


def best_model_uri(producer: str, bucket: str, prefix: str) -> dict[str, Any]:
    """The S3 URI of the best trial's ``model.tar.gz`` of Tuning step ``producer``, as a
    property reference: ``S3OutputPath/<best training job>/output/model.tar.gz``."""

    best = {"Get": f"Steps.{producer}.TrainingJobSummaries[0].TrainingJobName"}
    return _step_uri(bucket, prefix, producer, best, "output", "model.tar.gz")  # type: ignore[arg-type]


def tuning_step(
    pipeline: Pipeline,
    step: Step,
    image: str,
    bucket: str,
    prefix: str,
    code: dict[str, str],
    backend: Any,
    key_secret_arn: str | None = None,
    runtime_wheels: bool = False,
) -> dict[str, Any]:
    """The step as ``{"Name", "Type": "Tuning", "Arguments", ...}``; the Arguments pass the
    sweep backend's ``check_request`` (botocore's model, the enums and patterns too)."""
    from . import sweeps

    sweep = step.sweep
    assert sweep is not None
    config = tuning_config(pipeline, step)
    training = training_request(
        pipeline, step, image, bucket, prefix, code, backend, key_secret_arn, runtime_wheels
    )
    submit = f"s3://{bucket}/{prefix}/{code[step.name]}/{sweeps.SOURCEDIR}"
    job_def = sweeps.definition(training, sweep_spec(pipeline, step), submit, backend.region)
    for name in step.uses_parameters:
        if name not in sweep.space.names:  # a tuned value wins over the pipeline's
            job_def["StaticHyperParameters"][PARAM_PREFIX + name] = {
                "Std:Join": {"On": "", "Values": [{"Get": f"Parameters.{name}"}]}
            }
    arguments: dict[str, Any] = {
        "HyperParameterTuningJobConfig": config,
        "TrainingJobDefinition": job_def,
    }
    # the training request's tags (the backend's), as the sweep backend tags a tuning job
    tags = {t["Key"]: t["Value"] for t in training.get("Tags", [])}
    for key in ("nbscale:job-id", "nbscale-trial"):
        tags.pop(key, None)
    tags["nbscale:sweep-id"] = sweep_spec(pipeline, step).id
    arguments["Tags"] = [{"Key": k, "Value": v} for k, v in sorted(tags.items())]
    try:
        sweeps.check_request({**resolved(arguments), "HyperParameterTuningJobName": "pipeline"})
    except NbscaleError as exc:  # naming the member SageMaker would refuse
        raise SpecError(_where(pipeline, step), f"step {step.name}: {exc}") from None
    out: dict[str, Any] = {"Name": step.name, "Type": "Tuning", "Arguments": arguments}
    return _step_common(pipeline, step, out)


def plan_notes(definition: dict[str, Any]) -> list[str]:
    """What a dry run says of each Tuning step of ``definition``."""
    notes = []
    for step in definition.get("Steps", []):
        if step.get("Type") != "Tuning":
            continue
        name, config = step["Name"], step["Arguments"]["HyperParameterTuningJobConfig"]
        limits, objective = config["ResourceLimits"], config["HyperParameterTuningJobObjective"]
        notes.append(
            f"step {name}: a Tuning step ({config['Strategy']} search, "
            f"{limits['MaxNumberOfTrainingJobs']} trials, {limits['MaxParallelTrainingJobs']} "
            f"at once, early stopping {config['TrainingJobEarlyStoppingType']}, "
            f"{objective['Type']} {objective['MetricName']}); the steps after it read the best "
            f"trial's model.tar.gz (Steps.{name}.TrainingJobSummaries[0]); its trials run "
            "through the SageMaker training toolkit of the image"
        )
        notes.append(
            f"step {name}: SageMaker has no failure limit and no one follows a pipeline's "
            "tuning job, so the sweep's max_failed is not kept there: a failed trial is not "
            "scored and the tuning job goes on"
        )
    return notes


def _entrypoint(runtime_wheels: bool, runtime: str, module: str = STEP_MODULE) -> list[str]:
    if not runtime_wheels:  # an image with nbscale in it (docker/Dockerfile, or your own)
        return ["python3", "-m", module]
    from ...runtime.wheelhouse import install_command

    install = install_command(runtime, python="python3")
    return ["sh", "-c", f'{install} && exec python3 -m {module} "$@"', "nbscale-step"]


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


def code_prefixes(pipeline: Pipeline, runtime_digest: str | None = None) -> dict[str, str]:
    """Each step's code prefix under the pipeline's, by the digest of its files (and the
    wheelhouse's by its own digest)."""
    wheels = runtime_digest is not None  # a sweep step's trial program installs them
    found = {
        name: f"code/{name}/{files_digest(step_files(pipeline, pipeline.steps[name], wheels))}"
        for name in pipeline.order()
    }
    if runtime_digest:
        found[RUNTIME_DIR] = f"code/{RUNTIME_DIR}/{runtime_digest}"
    return found


def definition(
    pipeline: Pipeline,
    image: str | None = DEFAULT_IMAGE,
    role: str | None = None,
    bucket: str = "nbscale-pipelines",
    prefix: str | None = None,
    key_secret_arn: str | None = None,
    runtime_wheels: bool = False,
    region: str = "us-east-1",
    runtime_digest: str | None = None,
    settings: Any = None,
) -> dict[str, Any]:
    """The definition; with ``runtime_wheels``, ``runtime_digest`` is the digest of the
    wheelhouse (``files_digest``) the steps install from. ``settings``: the backend's, for
    the training and tuning steps' requests (else made of role, bucket, prefix and region)."""
    check_sweeps(pipeline)  # a sweep SageMaker cannot run is refused before anything else
    role = _role(role)
    prefix = (prefix or pipeline.name).strip("/")
    if runtime_wheels and not runtime_digest:
        raise ValueError("runtime_wheels needs the wheelhouse's runtime_digest")
    code = code_prefixes(pipeline, runtime_digest if runtime_wheels else None)
    backend = None
    if any(leaves_model(pipeline.steps[n]) for n in pipeline.order()):
        backend = training_settings(role, bucket, prefix, region, settings)
    params = []
    for name, value in pipeline.parameters.items():
        kind = TYPES.get(type(value), "String")
        default = json.dumps(value) if isinstance(value, list | dict) else value
        params.append({"Name": name, "Type": kind, "DefaultValue": default})
    steps = []
    for n in pipeline.order():
        step = pipeline.steps[n]
        image_uri = step_image(step, region, image)
        if is_tuning(step):
            steps.append(
                tuning_step(
                    pipeline,
                    step,
                    image_uri,
                    bucket,
                    prefix,
                    code,
                    backend,
                    key_secret_arn,
                    runtime_wheels,
                )
            )
        elif is_training(step):
            steps.append(
                _training_step(
                    pipeline,
                    step,
                    image_uri,
                    bucket,
                    prefix,
                    code,
                    backend,
                    key_secret_arn,
                    runtime_wheels,
                )
            )
        else:
            steps.append(
                _step(
                    pipeline,
                    step,
                    image_uri,
                    role,
                    bucket,
                    prefix,
                    code,
                    key_secret_arn,
                    runtime_wheels,
                )
            )
    return {
        "Version": "2020-12-01",
        "Metadata": {
            "nbscale": {
                "source": Path(pipeline.source).name,
                "bucket": bucket,
                "prefix": prefix,
                # folder beside the definition -> its content-addressed key under prefix
                "code": code,
            }
        },
        "Parameters": params,
        "Steps": steps,
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
    settings: Any = None,
) -> None:
    """Write the definition and, beside it, each step's code; with ``runtime_wheels`` (the
    default for the stock image) also the step wheelhouse the steps install offline."""
    if runtime_wheels is None:
        runtime_wheels = not image
    code = code_dir(output)
    runtime_digest = None
    if runtime_wheels:
        check_sweeps(pipeline)  # before a build
        from ...runtime.wheelhouse import build

        shutil.rmtree(code / RUNTIME_DIR, ignore_errors=True)
        from ..images import kernel_versions

        # the stock images match the kernel's Python (definition refused any other)
        build("step", code / RUNTIME_DIR, list(IMAGE_PLATFORMS), kernel_versions().python)
        runtime_digest = files_digest(folder_files(code / RUNTIME_DIR))
    data = definition(
        pipeline,
        image,
        role,
        bucket,
        prefix,
        key_secret_arn,
        runtime_wheels,
        region,
        runtime_digest,
        settings,
    )
    for name in pipeline.order():
        folder = code / name
        shutil.rmtree(folder, ignore_errors=True)  # exactly the files the digest is of
        for rel, data_bytes in step_files(pipeline, pipeline.steps[name], runtime_wheels).items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(data_bytes)
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
            step_environment(step)[KEY_SECRET_ENV] = arn
        output.write_text(json.dumps(data, indent=2))
    validate(data)  # before anything is uploaded
    uploads = {}
    for folder, where in meta["code"].items():
        files = folder_files(code_dir(output) / folder)
        if where.rsplit("/", 1)[-1] != files_digest(files):
            raise SpecError(
                f"{code_dir(output) / folder}",
                "is not the code the definition was compiled with (its digest differs)",
                "compile the pipeline again",
            )
        uploads[where] = files
    for where, files in uploads.items():
        # content-addressed: what is there is these bytes, and is never overwritten
        pages = s3.get_paginator("list_objects_v2").paginate(
            Bucket=meta["bucket"], Prefix=f"{meta['prefix']}/{where}/"
        )
        there = {o["Key"] for page in pages for o in page.get("Contents", [])}
        for rel, body in files.items():
            key = f"{meta['prefix']}/{where}/{rel}"
            if key not in there:
                s3.put_object(Bucket=meta["bucket"], Key=key, Body=body)
    name = name or re.sub(r"[^A-Za-z0-9-]", "-", meta["prefix"])[:256]
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


def step_environment(step: dict[str, Any]) -> dict[str, Any]:
    """The environment of the job(s) a step of the definition starts (a Tuning step's is its
    trials' ``TrainingJobDefinition.Environment``), made where there is none."""
    args = step.setdefault("Arguments", {})
    if step.get("Type") == "Tuning":
        args = args.setdefault("TrainingJobDefinition", {})
    return args.setdefault("Environment", {})


NAME = re.compile(r"^[A-Za-z0-9\-_]{1,64}$")


# what each step type's Arguments are: the request of the job it starts (botocore's model)
STEP_OPERATIONS = {
    "Processing": "CreateProcessingJob",
    "Training": "CreateTrainingJob",
    "Tuning": "CreateHyperParameterTuningJob",
}
# the fields of those requests a pipeline sets itself (the job's name), absent in Arguments
SERVICE_SET = {
    "Processing": "ProcessingJobName",
    "Training": "TrainingJobName",
    "Tuning": "HyperParameterTuningJobName",
}


def resolved(value: Any, field: str = "") -> Any:
    """The Arguments with every ``Get``/``Std:Join`` replaced by a value of the shape it
    resolves to at run time (all of nbscale's are strings: S3 URIs and arguments)."""
    if isinstance(value, dict):
        if set(value) in ({"Get"}, {"Std:Join"}):
            return "s3://resolved/at-run-time" if "S3" in field else "resolved-at-run-time"
        return {k: resolved(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [resolved(v, field) for v in value]
    return value


def shape_problems(step: dict[str, Any]) -> list[str]:
    """A step's Arguments against the request shape botocore's SageMaker model has for
    its job (as boto3 would check it before sending); [] without botocore."""
    kind = step.get("Type")
    if kind not in STEP_OPERATIONS:
        return []
    try:
        import botocore.session
        from botocore.exceptions import ParamValidationError
        from botocore.validate import validate_parameters
    except ImportError:  # pragma: no cover - boto3 comes with the sagemaker extra
        return []
    model = botocore.session.get_session().get_service_model("sagemaker")
    shape = model.operation_model(STEP_OPERATIONS[kind]).input_shape
    args = resolved(step.get("Arguments") or {})
    if SERVICE_SET[kind] in args:
        return [f"step {step.get('Name')}: Arguments.{SERVICE_SET[kind]} is set by SageMaker"]
    args[SERVICE_SET[kind]] = "set-by-the-pipeline"
    try:
        validate_parameters(args, shape)
    except ParamValidationError as exc:
        return [f"step {step.get('Name')}: {STEP_OPERATIONS[kind]}: {exc}"]
    return []


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
        if not NAME.match(name) or step.get("Type") not in STEP_OPERATIONS:
            problems.append(f"step {name!r}: bad name or type")
        shape = shape_problems(step)
        if shape:  # the checks below read what the shape check found wrong
            problems += shape
            seen.add(name)
            continue
        args = step.get("Arguments", {})
        if step.get("Type") == "Tuning":  # the trials' job: role, instances, time limit
            args = args.get("TrainingJobDefinition", {})
        if not re.match(r"^arn:aws[a-z\-]*:iam::\d{12}:role/", str(args.get("RoleArn", ""))):
            problems.append(f"step {name}: RoleArn is not an IAM role ARN")
        cluster = args.get("ProcessingResources", {}).get("ClusterConfig", {})
        if step.get("Type") in ("Training", "Tuning"):
            cluster = args.get("ResourceConfig", {})
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
