"""``nbscale deploy`` and ``%deploy``: --serverless, --memory-mb, --max-concurrency,
--instance-type and --instances reach the endpoint backend, and a backend that does not
declare them refuses each with one message; a version SageMaker rolled back is an error."""

from __future__ import annotations

import json

import boto3
import pytest

from nbscale.errors import SpecError
from nbscale.store import get_store
from tests.support.sagemaker import backend
from tests.support.serving import make_artifact


def _dry(proc) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_cli_sizing_flags_reach_sagemaker(aws, tmp_path, nbscale_cli):
    artifact, _ = make_artifact(tmp_path / "a", name="sized")
    sent = _dry(
        nbscale_cli(
            "deploy", str(artifact), "--name", "sized", "--backend", "aws", "--serverless",
            "--memory-mb", "3072", "--max-concurrency", "8", "--dry-run",
        )
    )  # fmt: skip
    variant = sent["CreateEndpointConfig"]["ProductionVariants"][0]
    assert variant["ServerlessConfig"] == {"MemorySizeInMB": 3072, "MaxConcurrency": 8}
    sent = _dry(
        nbscale_cli(
            "deploy", str(artifact), "--name", "sized", "--backend", "aws", "--replicas", "1:3",
            "--instance-type", "ml.c5.large", "--instances", "2", "--dry-run",
        )
    )  # fmt: skip
    variant = sent["CreateEndpointConfig"]["ProductionVariants"][0]
    assert (variant["InstanceType"], variant["InitialInstanceCount"]) == ("ml.c5.large", 2)
    # SageMaker's own refusals, before anything is sent
    proc = nbscale_cli(
        "deploy", str(artifact), "--name", "sized", "--backend", "aws", "--serverless",
        "--instances", "2", "--dry-run",
    )  # fmt: skip
    assert proc.returncode != 0 and proc.stdout == ""
    assert "instances: a serverless endpoint has no instances" in proc.stderr
    assert not aws.operations("CreateModel")


@pytest.mark.parametrize(
    ("flags", "name"),
    [
        (["--serverless"], "serverless"),
        (["--memory-mb", "2048"], "memory-mb"),
        (["--max-concurrency", "4"], "max-concurrency"),
        (["--instance-type", "ml.m5.large"], "instance-type"),
        (["--instances", "2"], "instances"),
    ],
)
def test_cli_refuses_sizing_flags_on_the_local_backend(tmp_path, nbscale_cli, flags, name):
    artifact, _ = make_artifact(tmp_path / "a", name="here")
    proc = nbscale_cli("deploy", str(artifact), "--name", "here", *flags)
    assert proc.returncode != 0
    assert f"{name}: the local endpoint backend does not use it" in proc.stderr
    assert f"drop --{name}" in proc.stderr
    assert get_store().query_one("SELECT 1 FROM endpoints") is None


def test_deploy_magic_sizing_flags(aws, tmp_path, capsys):
    from magics.deploy import DeployMagics

    magic = DeployMagics(shell=None)
    artifact, _ = make_artifact(tmp_path / "a", name="nb")
    magic.deploy_magic(
        f"{artifact} --name nb --backend aws --serverless --memory-mb 4096 "
        "--max-concurrency 2 --dry-run"
    )
    sent = json.loads(capsys.readouterr().out)
    variant = sent["CreateEndpointConfig"]["ProductionVariants"][0]
    assert variant["ServerlessConfig"] == {"MemorySizeInMB": 4096, "MaxConcurrency": 2}
    magic.deploy_magic(f"{artifact} --name nb --backend aws --instance-type ml.c5.xlarge --dry-run")
    variant = json.loads(capsys.readouterr().out)["CreateEndpointConfig"]["ProductionVariants"][0]
    assert variant["InstanceType"] == "ml.c5.xlarge"
    with pytest.raises(SpecError, match="instances: the local endpoint backend does not use it"):
        magic.deploy_magic(f"{artifact} --name nb --instances 2")
    assert get_store().query_one("SELECT 1 FROM endpoints") is None


def test_cli_reports_a_version_sagemaker_rolled_back(aws, tmp_path, nbscale_cli):
    from nbscale.backends.endpoint_base import DeployRequest

    cw = boto3.client("cloudwatch")
    cw.put_metric_alarm(
        AlarmName="cli-5xx",
        Namespace="AWS/SageMaker",
        MetricName="Invocation5XXErrors",
        Statistic="Sum",
        Period=60,
        EvaluationPeriods=1,
        Threshold=1.0,
        ComparisonOperator="GreaterThanOrEqualToThreshold",
    )
    v1, _ = make_artifact(tmp_path / "v1", name="cli")
    backend().deploy(DeployRequest("cli", v1, 1, 1, None, {}, {"rollback_alarms": ["cli-5xx"]}))
    cw.set_alarm_state(AlarmName="cli-5xx", StateValue="ALARM", StateReason="errors")
    v2, _ = make_artifact(tmp_path / "v2", name="cli")
    proc = nbscale_cli("deploy", str(v2), "--name", "cli", "--backend", "aws", "--canary", "20")
    assert proc.returncode != 0, proc.stdout
    assert "rolled back by SageMaker: alarm cli-5xx fired" in proc.stderr
    assert "ready at" not in proc.stdout
    from nbscale.endpoints import endpoint

    ep = endpoint("cli")
    assert ep.status == "ROLLED_BACK" and ep.record.model_dir == str(v1)
    assert "cli-5xx" in ep.rolled_back
    backend().undeploy("cli")
    cw.delete_alarms(AlarmNames=["cli-5xx"])
