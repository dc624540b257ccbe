"""``nbscale pipeline run FLOW --backend NAME`` on SageMaker Pipelines (the local AWS).

The real CLI runs in a subprocess against the emulator; the test plays SageMaker's part
and moves the execution's steps, and the CLI reports each change as it happens. Every
execution is recorded as a pipeline run (``nbscale pipeline runs``, the panel's API): its
ARN, its steps' states as ListPipelineExecutionSteps reports them, its outcome; cancelling
the run from there is StopPipelineExecution.
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
from nbscale.pipelines import get_run
from nbscale.store import get_store
from nbscale.store import pipelines as db
from tests.support import REPO, wait_for
from tests.support.aws_emulator import Emulator
from tests.support.emulators import AWS_ENV

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
    stop_followers()
    emu.stop()


def stop_followers() -> None:
    """The followers of detached runs this test started (by their recorded pid)."""
    import psutil

    for record in db.list_runs(get_store()):
        try:
            proc = psutil.Process(record["pid"]) if record.get("pid") else None
            if proc and "nbscale.backends.remote.pipelines" in " ".join(proc.cmdline()):
                proc.kill()
                proc.wait(10)
        except psutil.Error:
            continue


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
    assert "pipeline execution arn:aws:sagemaker:us-east-1:" in err
    assert ": SUCCEEDED" in out.splitlines()[0]

    # recorded like a local run: what `nbscale pipeline runs` and the panel list
    arn = next(iter(aws.pipeline_status))
    listed = json.loads(cli("pipeline", "runs", "--json").communicate(timeout=60)[0])
    (run,) = listed
    assert run["backend"] == "aws" and run["status"] == "SUCCEEDED" and run["name"] == "digits-yaml"
    assert run["options"]["remote"] == {
        "type": "sagemaker",
        "id": arn,
        "label": "pipeline execution",
    }
    assert run["parameters"]["C"] == 0.5
    assert [s["name"] for s in run["steps"]] == ["prepare", "train_a", "train_b", "compare"]
    for step in run["steps"]:
        assert step["status"] == "SUCCEEDED" and step["attempts"] == 1, step
        assert step["started"] <= step["ended"]
    steps = {s["name"]: s for s in run["steps"]}
    assert steps["prepare"]["ended"] <= steps["compare"]["started"]
    assert run["started"] <= run["ended"]
    # the execution ARN finds the run too
    assert get_run(arn).id == run["id"]

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
    assert out.strip().startswith("p-") and "pipeline execution arn:aws:sagemaker:" in err
    assert len(aws.pipeline_status) == 2


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
    assert ": FAILED" in out.splitlines()[0]
    (record,) = db.list_runs(get_store())
    run = get_run(record["id"])
    assert run.status == "FAILED" and run.ended is not None
    assert run.step("prepare")["status"] == "FAILED"
    assert run.step("prepare")["error"] == "ClientError: AlgorithmError: KeyError 'label'"
    # steps SageMaker never started did not run
    assert {run.step(s)["status"] for s in ("train_a", "train_b", "compare")} == {"SKIPPED"}


def _detached(aws) -> tuple[str, str]:
    proc = cli("pipeline", "run", str(FLOW), "--backend", "aws", "--detach")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    run_id = out.strip()
    arn = err.split("pipeline execution ")[1].split()[0]
    return run_id, arn


def test_a_detached_run_is_followed_in_the_background_and_cancelled_from_the_store(aws):
    import psutil

    run_id, arn = _detached(aws)
    record = db.get_run(get_store(), run_id)
    assert record["options"]["remote"]["id"] == arn
    follower = psutil.Process(record["pid"])
    assert "nbscale.backends.remote.pipelines" in " ".join(follower.cmdline())

    aws.set_step(arn, "prepare", "Executing")
    wait_for(lambda: get_run(run_id).step("prepare")["status"] == "RUNNING", 60, what="RUNNING")
    aws.set_step(arn, "prepare", "Succeeded")
    aws.set_step(arn, "train_a", "Executing")
    wait_for(lambda: get_run(run_id).step("train_a")["status"] == "RUNNING", 60, what="train_a")
    assert get_run(run_id).step("prepare")["status"] == "SUCCEEDED"

    # the follower (not a read of a run without one) kept the row current
    assert follower.is_running() and follower.status() != psutil.STATUS_ZOMBIE
    # `nbscale pipeline cancel RUN` (the panel's DELETE calls the same cancel_run)
    proc = cli("pipeline", "cancel", run_id)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert aws.operations("StopPipelineExecution")[-1]["PipelineExecutionArn"] == arn
    assert aws.pipeline_status[arn] == "Stopping"
    assert "stopping" in out
    # SageMaker stops the running step, then the execution: the run reads CANCELLED
    aws.set_step(arn, "train_a", "Stopped")
    aws.set_execution(arn, "Stopped")
    run = get_run(run_id).wait(60)
    assert run.status == "CANCELLED"
    assert run.step("train_a")["status"] == "CANCELLED"
    assert run.step("compare")["status"] == "CANCELLED"  # never started
    follower.wait(30)


def test_a_run_whose_follower_is_gone_is_read_from_sagemaker_never_lost(aws):
    import psutil

    run_id, arn = _detached(aws)
    follower = psutil.Process(db.get_run(get_store(), run_id)["pid"])
    follower.kill()
    follower.wait(30)
    assert get_run(run_id).status == "RUNNING"  # still executing there, so not LOST
    for step in ("prepare", "train_a", "train_b", "compare"):
        aws.set_step(arn, step, "Succeeded")
    aws.set_execution(arn, "Succeeded")
    run = get_run(run_id)
    assert run.status == "SUCCEEDED" and {s["status"] for s in run.steps} == {"SUCCEEDED"}


def test_cancel_by_execution_arn_and_the_panel_api(aws):
    from nbscale.server_ext.models import ListRunsQuery
    from nbscale.server_ext.pipelines import _cancel, _describe, _list

    run_id, arn = _detached(aws)
    listed = _list(ListRunsQuery()).model_dump()["runs"]
    assert [r["id"] for r in listed] == [run_id]
    assert listed[0]["options"]["remote"]["id"] == arn and listed[0]["backend"] == "aws"
    aws.set_step(arn, "prepare", "Executing")
    wait_for(
        lambda: _describe(run_id).model_dump()["steps"][0]["status"] == "RUNNING",
        60,
        what="the step through the panel's API",
    )
    _cancel(run_id)
    assert aws.operations("StopPipelineExecution")[-1]["PipelineExecutionArn"] == arn
    aws.set_execution(arn, "Stopped")
    assert get_run(run_id).wait(60).status == "CANCELLED"

    # an execution started elsewhere: `nbscale pipeline cancel ARN` stops it all the same
    other = boto3.client("sagemaker").start_pipeline_execution(
        PipelineName="nbscale-digits-yaml", ClientRequestToken="x" * 32
    )["PipelineExecutionArn"]
    proc = cli("pipeline", "cancel", other)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert aws.operations("StopPipelineExecution")[-1]["PipelineExecutionArn"] == other


def test_options_sagemaker_cannot_honour_and_unknown_parameters_are_refused(aws):
    proc = cli("pipeline", "run", str(FLOW), "--backend", "aws", "--only", "prepare")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "--only" in err and "SageMaker" in err
    proc = cli("pipeline", "run", str(FLOW), "--backend", "aws", "-p", "nope", "1")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "nope" in err and "not a parameter" in err
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
    assert "pipeline execution arn:aws:sagemaker:us-east-1:" in proc.stdout
    (record,) = db.list_runs(get_store())  # recorded like the CLI's runs
    assert record["backend"] == "aws" and record["options"]["remote"]["id"] in proc.stdout
    assert {"Name": "C", "Value": "2.0"} in aws.operations("StartPipelineExecution")[-1][
        "PipelineParameters"
    ]
