"""``nbscale pipeline run --backend SAGEMAKER --dry-run`` of a pipeline.yaml with a sweep
step: stdout is the one JSON document the run would send, whose definition holds the Tuning
step (the pipeline key's secret ARN in its trials' environment) and the next step reading the
best trial's model; stderr says what the Tuning step does and what SageMaker does not keep.
Nothing is created. A sweep SageMaker cannot run fails the dry run in one message."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.support.emulators import AWS_ENV
from tests.support.pipeline_notebooks import cell, write_notebook
from tests.support.sagemaker_pipeline_definition import problems

SAGEMAKER = """\
[backends.sm]
type = "sagemaker"
region = "us-east-1"
role_arn = "arn:aws:iam::123456789012:role/nbscale"
storage = "s3://nb-models/work"
instance_type = "ml.m5.xlarge"
pipeline_image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/nbscale:0.1.0"
"""


def flow(folder, algorithm: str):
    write_notebook(folder / "prepare.ipynb", [cell("data = list(range(4))")])
    write_notebook(
        folder / "train.ipynb",
        [
            cell("lr = 0.5", "parameters"),
            cell("import nbscale\nnbscale.log_metric('val_loss', lr * len(data))\nmodel = lr"),
        ],
    )
    write_notebook(folder / "report.ipynb", [cell("summary = str(model)")])
    sweep = {"space": {"lr": "loguniform(1e-4,1e-1)"}, "objective": "val_loss:min", "trials": 8}
    doc = {
        "name": "tune",
        "steps": [
            {"name": "prepare", "notebook": "prepare.ipynb"},
            {
                "name": "train",
                "notebook": "train.ipynb",
                "depends_on": ["prepare"],
                "sweep": {**sweep, "parallel": 2, "algorithm": algorithm},
            },
            {"name": "report", "notebook": "report.ipynb", "depends_on": ["train"]},
        ],
    }
    (folder / "pipeline.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return folder / "pipeline.yaml"


@pytest.fixture
def sm(aws, nbscale_cli, tmp_path):
    (tmp_path / "nbscale.toml").write_text(SAGEMAKER)

    def run(*args: str):
        return nbscale_cli(*args, cwd=tmp_path, env={"AWS_ENDPOINT_URL": aws.url, **AWS_ENV})

    return run


def test_the_dry_run_prints_the_tuning_step_and_creates_nothing(sm, aws, tmp_path):
    folder = tmp_path / "flow"
    folder.mkdir()
    path = flow(folder, "random")
    pipe = sm("pipeline", "run", str(path), "--backend", "sm", "--dry-run")
    assert pipe.returncode == 0, pipe.stderr
    document = json.loads(pipe.stdout)  # one document, nothing before or after it
    definition = document["CreatePipeline"]["PipelineDefinition"]
    assert problems(definition) == []
    by_name = {s["Name"]: s for s in definition["Steps"]}
    assert [s["Type"] for s in definition["Steps"]] == ["Processing", "Tuning", "Processing"]
    tuning = by_name["train"]["Arguments"]
    assert tuning["HyperParameterTuningJobConfig"]["Strategy"] == "Random"
    env = tuning["TrainingJobDefinition"]["Environment"]
    assert env["NBSCALE_KEY_SECRET_ARN"].startswith("(the ARN of secret nbscale/")  # only an ARN
    assert "Environment" not in tuning  # the trials' environment, not the request's
    inputs = by_name["report"]["Arguments"]["ProcessingInputs"]
    uri = next(i for i in inputs if i["InputName"] == "in-train")["S3Input"]["S3Uri"]
    assert {"Get": "Steps.train.TrainingJobSummaries[0].TrainingJobName"} in uri["Std:Join"][
        "Values"
    ]
    assert "step train: a Tuning step (Random search, 8 trials, 2 at once" in pipe.stderr
    assert "max_failed is not kept there" in pipe.stderr
    # 8 trials x 1 x ml.m5.large (the step's resources) x 24 h (the default max runtime) at the training price
    from nbscale.cost import node_price

    price = node_price("sagemaker", {"region": "us-east-1"}, "ml.m5.large", 0, "training")
    assert (
        f"step train: its 8 trials cost at most ${8 * 24 * price:.2f} if each runs its max "
        "runtime (1 x ml.m5.large" in pipe.stderr
    ), pipe.stderr
    assert aws.operations("CreatePipeline") == [] and aws.operations("StartPipelineExecution") == []
    assert aws.operations("CreateHyperParameterTuningJob") == []

    bad = sm("pipeline", "run", str(flow(folder, "tpe")), "--backend", "sm", "--dry-run")
    assert bad.returncode != 0 and bad.stdout == ""
    assert "steps[1].sweep.algorithm: step train: tpe (the default) is not a SageMaker" in (
        bad.stderr
    )
