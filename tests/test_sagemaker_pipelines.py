"""``nbscale pipeline run FLOW --backend NAME`` on SageMaker Pipelines (the local AWS).

The real CLI runs in a subprocess against the emulator; the test plays SageMaker's part
and moves the execution's steps, and the CLI reports each change as it happens.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import boto3
import pytest

from nbscale import keys
from tests.aws_emulator import Emulator
from tests.conftest import REPO, wait_for
from tests.emulators import AWS_ENV

FLOW = REPO / "examples" / "pipeline" / "pipeline.yaml"
TOML = """\
[backends.aws]
type = "sagemaker"
region = "us-east-1"
role_arn = "arn:aws:iam::123456789012:role/nbscale-pipelines"
storage = "s3://nb-flows/team"
pipeline_image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/nbscale-pipeline-step:0.1.0"
poll_seconds = 0
"""


@pytest.fixture
def aws(monkeypatch, tmp_path):
    emu = Emulator()
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", emu.url)
    boto3.client("s3").create_bucket(Bucket="nb-flows")
    (tmp_path / "nbscale.toml").write_text(TOML)
    keys.forget_delivered()
    yield emu
    emu.stop()


def cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "nbscale", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
        **kw,
    )


def started_execution(aws) -> str:
    wait_for(lambda: aws.pipeline_status, 120, what="StartPipelineExecution")
    return next(iter(aws.pipeline_status))


def test_run_creates_the_pipeline_starts_it_and_follows_every_step(aws, tmp_path):
    proc = cli("pipeline", "run", str(FLOW), "--backend", "aws", "-p", "C", "0.5")

    def play():  # SageMaker runs the diamond: prepare, train_a || train_b (one retry), compare
        arn = started_execution(aws)
        for step, status in [
            ("prepare", "Executing"),
            ("prepare", "Succeeded"),
            ("train_a", "Executing"),
            ("train_b", "Executing"),
            ("train_a", "Succeeded"),
            ("train_b", "Succeeded"),
            ("compare", "Executing"),
            ("compare", "Succeeded"),
        ]:
            aws.set_step(arn, step, status)
            time.sleep(0.3)
        aws.set_execution(arn, "Succeeded")

    player = threading.Thread(target=play, daemon=True)
    player.start()
    out, err = proc.communicate(timeout=180)
    player.join(5)
    assert proc.returncode == 0, err
    lines = [line.strip() for line in err.splitlines() if line.startswith("  ")]
    for step in ("prepare", "train_a", "train_b", "compare"):
        assert f"{step}: running" in lines and f"{step}: succeeded" in lines, err
    assert lines.index("prepare: succeeded") < lines.index("compare: running")
    assert "pipeline execution SUCCEEDED" in out

    created = aws.operations("CreatePipeline")[-1]
    assert created["PipelineName"] == "nbscale-digits-yaml"
    assert created["RoleArn"].endswith("role/nbscale-pipelines")
    definition = json.loads(created["PipelineDefinition"])
    assert [s["Name"] for s in definition["Steps"]] == ["prepare", "train_a", "train_b", "compare"]
    images = {s["Arguments"]["AppSpecification"]["ImageUri"] for s in definition["Steps"]}
    assert images == {"123456789012.dkr.ecr.us-east-1.amazonaws.com/nbscale-pipeline-step:0.1.0"}
    arns = {s["Arguments"]["Environment"]["NBSCALE_KEY_SECRET_ARN"] for s in definition["Steps"]}
    assert len(arns) == 1  # the pipeline key by ARN, never by value
    assert keys.load("pipeline").hex() not in created["PipelineDefinition"]
    started = aws.operations("StartPipelineExecution")[-1]
    assert {"Name": "C", "Value": "0.5"} in started["PipelineParameters"]
    code = boto3.client("s3").list_objects_v2(
        Bucket="nb-flows", Prefix="team/pipelines/digits-yaml/code/"
    )
    assert {o["Key"].split("/")[4] for o in code["Contents"]} == {
        "prepare",
        "train_a",
        "train_b",
        "compare",
    }

    # a second run of the unchanged flow updates the pipeline rather than failing
    proc = cli("pipeline", "run", str(FLOW), "--backend", "aws", "--detach")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.strip().startswith("arn:aws:sagemaker:us-east-1:")


def test_a_failed_step_fails_the_run_with_its_reason(aws):
    proc = cli("pipeline", "run", str(FLOW), "--backend", "aws")

    def play():
        arn = started_execution(aws)
        aws.set_step(arn, "prepare", "Executing")
        time.sleep(0.3)
        aws.set_step(arn, "prepare", "Failed", "ClientError: AlgorithmError: KeyError 'label'")
        aws.set_execution(arn, "Failed")

    threading.Thread(target=play, daemon=True).start()
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 1
    assert "prepare: failed: ClientError: AlgorithmError: KeyError 'label'" in err
    assert "pipeline execution FAILED" in out


def test_cancel_stops_the_execution(aws):
    proc = cli("pipeline", "run", str(FLOW), "--backend", "aws", "--detach")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    arn = out.strip()
    proc = cli("pipeline", "cancel", arn)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert aws.operations("StopPipelineExecution")[-1]["PipelineExecutionArn"] == arn
    assert aws.pipeline_status[arn] == "Stopping"


def test_options_sagemaker_cannot_honour_and_unknown_parameters_are_refused(aws):
    proc = cli("pipeline", "run", str(FLOW), "--backend", "aws", "--only", "prepare")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "--only" in err and "SageMaker" in err
    proc = cli("pipeline", "run", str(FLOW), "--backend", "aws", "-p", "nope", "1")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "no parameter 'nope'" in err
    assert not aws.operations("StartPipelineExecution")


def test_the_magic_runs_it_too(aws, tmp_path):
    code = (
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "sh = InteractiveShell.instance()\n"
        "sh.run_cell('%load_ext nbscale', store_history=False)\n"
        f"r = sh.run_cell('%pipeline run {FLOW} --backend aws --detach -p C 2.0')\n"
        "raise SystemExit(0 if r.success else 1)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "arn:aws:sagemaker:us-east-1:" in proc.stdout
    assert {"Name": "C", "Value": "2.0"} in aws.operations("StartPipelineExecution")[-1][
        "PipelineParameters"
    ]
