"""A pipeline.yaml step with a ``sweep:`` block, compiled for SageMaker Pipelines: a Tuning
step whose Arguments are the CreateHyperParameterTuningJob request the SageMaker sweep
backend's builder makes (less the name the pipeline sets), valid against botocore's model
and the documented definition format; the steps after it read the best trial's model; its
code is content-addressed like every step's; a sweep SageMaker cannot run is refused in one
message before anything is written."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import botocore.session
import pytest
import yaml
from botocore.validate import validate_parameters

from nbscale.backends.sagemaker import pipeline_compile as smc
from nbscale.backends.sagemaker import sweeps
from nbscale.errors import SpecError
from nbscale.pipelines.loader import load
from nbscale.sweeps.lines import metric_line, sagemaker_regex
from tests.support.pipeline_notebooks import cell, write_notebook
from tests.support.sagemaker_pipeline_definition import problems

ROLE = "arn:aws:iam::123456789012:role/nbscale-steps"
IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/nbscale-step:1"
SWEEP = {
    "space": {"lr": "loguniform(1e-4,1e-1)", "layers": "int(2,6)", "act": "choice('relu','tanh')"},
    "objective": "val_loss:min",
    "trials": 12,
    "parallel": 3,
    "algorithm": "bayesian",
    "seed": 7,
}
TRAIN = (
    "import nbscale\n"
    "loss = lr * layers + len(data) + n\n"
    "nbscale.log_metric('val_loss', loss)\n"
    "model = {'lr': lr, 'act': act}"
)


def flow(folder: Path, sweep: dict | None = None, train: str = TRAIN) -> Path:
    write_notebook(folder / "prepare.ipynb", [cell("data = list(range(4))")])
    write_notebook(
        folder / "train.ipynb",
        [cell("lr = 0.5\nlayers = 2\nact = 'relu'", "parameters"), cell(train)],
    )
    write_notebook(folder / "report.ipynb", [cell("summary = str(model)")])
    doc = {
        "name": "tune",
        "parameters": {"n": 3},
        "steps": [
            {"name": "prepare", "notebook": "prepare.ipynb"},
            {
                "name": "train",
                "notebook": "train.ipynb",
                "depends_on": ["prepare"],
                "sweep": {**SWEEP, **(sweep or {})},
            },
            {"name": "report", "notebook": "report.ipynb", "depends_on": ["train"]},
        ],
    }
    (folder / "pipeline.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return folder / "pipeline.yaml"


def compiled(path: Path, out: Path, **options) -> dict:
    smc.compile_pipeline(
        load(str(path)),
        out,
        **{
            "image": IMAGE,
            "role": ROLE,
            "bucket": "nb-flows",
            "prefix": "team/tune",
            "region": "eu-west-1",
            **options,
        },
    )
    return json.loads(out.read_text())


def steps(definition: dict) -> dict:
    return {s["Name"]: s for s in definition["Steps"]}


def test_a_sweep_step_is_a_tuning_step_built_as_the_sweep_backend_builds_one(tmp_path):
    path = flow(tmp_path)
    definition = compiled(path, tmp_path / "tune.json")
    assert problems(definition) == []  # the documented format, botocore's request shapes
    smc.validate(definition)
    tuning = steps(definition)["train"]
    assert tuning["Type"] == "Tuning"
    args = tuning["Arguments"]
    assert set(args) == {"HyperParameterTuningJobConfig", "TrainingJobDefinition", "Tags"}
    spec = smc.sweep_spec(load(str(path)), load(str(path)).steps["train"])
    assert args["Tags"] == [{"Key": "nbscale:sweep-id", "Value": spec.id}]
    # the request shape with the name the pipeline sets filled in, Gets resolved
    shape = (
        botocore.session.get_session()
        .get_service_model("sagemaker")
        .operation_model("CreateHyperParameterTuningJob")
        .input_shape
    )
    validate_parameters(
        {**smc.resolved(args), "HyperParameterTuningJobName": "set-by-the-pipeline"}, shape
    )
    sweeps.check_request({**smc.resolved(args), "HyperParameterTuningJobName": "p"})

    # the sweep backend's own builder: strategy, ranges, the trial's definition
    config = args["HyperParameterTuningJobConfig"]
    assert config["Strategy"] == "Bayesian" and config["TrainingJobEarlyStoppingType"] == "Auto"
    assert config["ParameterRanges"] == sweeps.parameter_ranges(spec)
    assert config["HyperParameterTuningJobObjective"] == {
        "Type": "Minimize",
        "MetricName": "val_loss",
    }
    assert config["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 12, "MaxParallelTrainingJobs": 3}
    assert config["RandomSeed"] == 7
    job = args["TrainingJobDefinition"]
    (metric,) = job["AlgorithmSpecification"]["MetricDefinitions"]
    assert metric == {"Name": "val_loss", "Regex": sagemaker_regex("val_loss")}
    assert "ContainerEntrypoint" not in job["AlgorithmSpecification"]  # a tuning job has none
    static = job["StaticHyperParameters"]
    assert static["sagemaker_program"] == sweeps.PROGRAM
    # the pipeline parameter the step reads travels as a static hyperparameter's Get
    assert static["nbscale_param_n"] == {
        "Std:Join": {"On": "", "Values": [{"Get": "Parameters.n"}]}
    }
    assert job["RoleArn"] == ROLE and job["ResourceConfig"]["InstanceType"].startswith("ml.")
    channels = {
        c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in job["InputDataConfig"]
    }
    assert channels["in-prepare"] == {
        "Get": "Steps.prepare.ProcessingOutputConfig.Outputs['outputs'].S3Output.S3Uri"
    }


def test_the_next_step_reads_the_best_trials_model(tmp_path):
    definition = compiled(flow(tmp_path), tmp_path / "tune.json")
    report = steps(definition)["report"]["Arguments"]
    (inp,) = [i for i in report["ProcessingInputs"] if i["InputName"] == "in-train"]
    assert inp["S3Input"]["S3Uri"] == {
        "Std:Join": {
            "On": "/",
            "Values": [
                "s3://nb-flows/team/tune",
                {"Get": "Execution.PipelineExecutionId"},
                "train",
                {"Get": "Steps.train.TrainingJobSummaries[0].TrainingJobName"},
                "output",
                "model.tar.gz",
            ],
        }
    }
    # the trials write under the Tuning step's S3OutputPath: the same prefix
    out = steps(definition)["train"]["Arguments"]["TrainingJobDefinition"]["OutputDataConfig"]
    assert (
        out["S3OutputPath"]["Std:Join"]["Values"]
        == inp["S3Input"]["S3Uri"]["Std:Join"]["Values"][:3]
    )
    command = report["AppSpecification"]["ContainerArguments"]
    assert command[:3] == ["--unpack", "/opt/ml/processing/input/train", "--"]
    assert "train=/opt/ml/processing/input/train/outputs" in command
    # a property path SageMaker would not know is refused by the checker
    broken = json.loads(json.dumps(definition).replace("TrainingJobSummaries[0]", "BestModel"))
    assert any("has no BestModel" in p for p in problems(broken))


def _program(definition: dict, out: Path) -> str:
    job = steps(definition)["train"]["Arguments"]["TrainingJobDefinition"]
    uri = job["StaticHyperParameters"]["sagemaker_submit_directory"]
    key = uri.removeprefix("s3://nb-flows/team/tune/")
    folder = definition["Metadata"]["nbscale"]["code"]["train"]
    assert key == f"{folder}/{sweeps.SOURCEDIR}"  # inside the step's content-addressed prefix
    data = (smc.code_dir(out) / "train" / sweeps.SOURCEDIR).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.extractfile(sweeps.PROGRAM).read().decode()


def test_the_tuning_steps_code_is_content_addressed_and_edits_miss_the_cache(tmp_path):
    path = flow(tmp_path)
    first = compiled(path, tmp_path / "a.json")
    assert compiled(path, tmp_path / "b.json") == first  # unchanged: the same Arguments
    program = _program(first, tmp_path / "a.json")
    job = steps(first)["train"]["Arguments"]["TrainingJobDefinition"]
    code = next(c for c in job["InputDataConfig"] if c["ChannelName"] == "code")
    where = first["Metadata"]["nbscale"]["code"]["train"]
    digest = where.rsplit("/", 1)[-1]
    assert code["DataSource"]["S3DataSource"]["S3Uri"] == f"s3://nb-flows/team/tune/{where}"
    assert digest == smc.files_digest(smc.folder_files(smc.code_dir(tmp_path / "a.json") / "train"))
    fingerprint = job["Environment"][smc.FINGERPRINT_ENV]
    assert fingerprint in program  # the trial's command carries it, as a Training step's does
    assert "nbscale.runtime.tuning_trial" in program and "--hyperparameters" in program

    write_notebook(  # an edit of the step's code
        tmp_path / "train.ipynb",
        [cell("lr = 0.5\nlayers = 2\nact = 'relu'", "parameters"), cell(TRAIN + "\nx = 1")],
    )
    edited = compiled(path, tmp_path / "c.json")
    new = steps(edited)["train"]["Arguments"]["TrainingJobDefinition"]
    assert new["Environment"][smc.FINGERPRINT_ENV] != fingerprint
    assert edited["Metadata"]["nbscale"]["code"]["train"] != where
    assert (
        new["StaticHyperParameters"]["sagemaker_submit_directory"]
        != (job["StaticHyperParameters"]["sagemaker_submit_directory"])
    )
    assert steps(edited)["prepare"] == steps(first)["prepare"]  # untouched: still a hit

    # another sweep block: other Arguments, another fingerprint (the local cache's key too)
    other = compiled(flow(tmp_path, {"trials": 6}), tmp_path / "d.json")
    config = steps(other)["train"]["Arguments"]["HyperParameterTuningJobConfig"]
    assert config["ResourceLimits"]["MaxNumberOfTrainingJobs"] == 6
    assert (
        steps(other)["train"]["Arguments"]["TrainingJobDefinition"]["Environment"][
            smc.FINGERPRINT_ENV
        ]
        != new["Environment"][smc.FINGERPRINT_ENV]
    )


def test_the_metric_definition_reads_the_line_the_trial_prints(tmp_path):
    import re

    definition = compiled(flow(tmp_path), tmp_path / "tune.json")
    job = steps(definition)["train"]["Arguments"]["TrainingJobDefinition"]
    (metric,) = job["AlgorithmSpecification"]["MetricDefinitions"]
    line = metric_line("val_loss", 0.125, 3, 1733450000.5)
    assert re.search(metric["Regex"], line).group(1) == "0.125"
    assert re.search(metric["Regex"], metric_line("val_loss", 1e-05)).group(1) == "1e-05"


@pytest.mark.parametrize(
    ("sweep", "field", "words"),
    [
        ({"algorithm": "tpe"}, "steps[1].sweep.algorithm", "tpe (the default) is not a SageMaker"),
        (
            {"algorithm": "random", "pruner": "halving"},
            "steps[1].sweep.pruner",
            "halving is SageMaker's Hyperband strategy",
        ),
        (
            {"algorithm": "grid", "trials": 2, "space": {"lr": "choice(1,2,3)"}},
            "steps[1].sweep.trials",
            "SageMaker's Grid strategy runs every one of the 3 combinations",
        ),
        (
            {"space": {"lr": "int(1,100,2)"}},
            "steps[1].sweep.lr",
            "values are more than the 30 SageMaker allows one categorical range",
        ),
        (  # asked for, it would be accepted and not kept (the default is only noted)
            {"max_failed": 1},
            "steps[1].sweep.max_failed",
            "SageMaker has no failure limit for a tuning job's trials",
        ),
    ],
)
def test_a_sweep_sagemaker_cannot_run_is_refused_in_one_message(tmp_path, sweep, field, words):
    train = "import nbscale\nnbscale.log_metric('val_loss', lr)\nmodel = lr"
    path = flow(tmp_path, sweep, train=train)
    out = tmp_path / "out" / "tune.json"
    out.parent.mkdir()
    with pytest.raises(SpecError) as info:
        compiled(path, out)
    message = str(info.value)
    assert message.startswith(f"{field}: step train: "), message
    assert words in message, message
    assert "\n" not in message
    assert list(out.parent.iterdir()) == []  # nothing written


def test_the_stock_image_trial_installs_the_wheelhouse_first(tmp_path):
    pipeline = load(str(flow(tmp_path)))
    argv = smc.trial_argv(pipeline, pipeline.steps["train"], runtime_wheels=True)
    assert argv[:2] == ["sh", "-c"]
    assert "/opt/ml/input/data/runtime/*.whl" in argv[2]
    assert argv[2].endswith('exec python3 -m nbscale.runtime.tuning_trial "$@"')
    # the wheelhouse's channel is in the trials' definition
    definition = smc.definition(
        pipeline,
        IMAGE,
        ROLE,
        "nb-flows",
        "team/tune",
        runtime_wheels=True,
        runtime_digest="ab" * 32,
    )
    job = steps(definition)["train"]["Arguments"]["TrainingJobDefinition"]
    assert "runtime" in {c["ChannelName"] for c in job["InputDataConfig"]}
    assert problems(definition) == []
