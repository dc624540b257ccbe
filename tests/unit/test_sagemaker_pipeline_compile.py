"""The SageMaker Pipelines compile target: an edited step misses SageMaker's cache (its
arguments change: a content-addressed code prefix and the step's fingerprint), an
unchanged one hits it (the same definition), code in S3 is never overwritten, a step on
several nodes is a TrainingStep built as a job's request, and every step's Arguments
pass botocore's request shapes and the documented definition format."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from nbscale.backends.sagemaker import pipeline_compile as smc
from nbscale.backends.sagemaker.settings import settings as sagemaker_settings
from nbscale.config import BackendConfig
from nbscale.errors import SpecError
from nbscale.pipelines.loader import load
from tests.support.pipeline_notebooks import cell, write_notebook
from tests.support.sagemaker_pipeline_definition import problems

ROLE = "arn:aws:iam::123456789012:role/nbscale-steps"
IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/nbscale-step:1"


def flow(tmp_path: Path, train: str = "", nodes: int = 1) -> Path:
    write_notebook(
        tmp_path / "prep.ipynb",
        [cell("import helpers"), cell("n = 3", "parameters"), cell("data = helpers.make(n)")],
    )
    write_notebook(tmp_path / "fit.ipynb", [cell(f"model = sum(data){train}")])
    write_notebook(tmp_path / "report.ipynb", [cell("summary = str(model)")])
    (tmp_path / "helpers.py").write_text("def make(n):\n    return list(range(n))\n")
    resources = f", resources: {{nodes: {nodes}, gpus: 1}}" if nodes > 1 else ""
    (tmp_path / "pipeline.yaml").write_text(
        "name: cached\nparameters: {n: 3}\nsteps:\n"
        "  - {name: prep, notebook: prep.ipynb}\n"
        f"  - {{name: fit, notebook: fit.ipynb, depends_on: [prep]{resources}}}\n"
        "  - {name: report, notebook: report.ipynb, depends_on: [fit]}\n"
    )
    return tmp_path / "pipeline.yaml"


def compiled(path: Path, out: Path, **options) -> dict:
    smc.compile_pipeline(
        load(str(path)),
        out,
        image=IMAGE,
        role=ROLE,
        bucket="nb-flows",
        prefix="team/pipelines/cached",
        region="eu-west-1",
        **options,
    )
    return json.loads(out.read_text())


def steps(definition: dict) -> dict:
    return {s["Name"]: s for s in definition["Steps"]}


def code_uri(step: dict) -> str:
    (code,) = [i for i in step["Arguments"]["ProcessingInputs"] if i["InputName"] == "code"]
    return code["S3Input"]["S3Uri"]


def test_an_edited_step_changes_its_arguments_and_an_unchanged_one_does_not(tmp_path):
    path = flow(tmp_path)
    first = compiled(path, tmp_path / "a.json")
    assert compiled(path, tmp_path / "b.json") == first  # unchanged: every cache key hits
    assert problems(first) == []

    write_notebook(tmp_path / "fit.ipynb", [cell("model = sum(data) * 2")])  # an edit
    edited = compiled(path, tmp_path / "c.json")
    old, new = steps(first), steps(edited)
    # SageMaker's cache key for a Processing step: AppSpecification, Environment,
    # ProcessingInputs; the edited step differs in its code prefix and its fingerprint
    assert code_uri(old["fit"]) != code_uri(new["fit"])
    old_env, new_env = (
        old["fit"]["Arguments"]["Environment"],
        new["fit"]["Arguments"]["Environment"],
    )
    assert old_env[smc.FINGERPRINT_ENV] != new_env[smc.FINGERPRINT_ENV]
    assert new["prep"] == old["prep"] and new["report"] == old["report"]
    uri = code_uri(new["fit"])
    assert uri.startswith("s3://nb-flows/team/pipelines/cached/code/fit/")
    files = smc.folder_files(smc.code_dir(tmp_path / "c.json") / "fit")
    assert uri.rsplit("/", 1)[1] == smc.files_digest(files)  # named by the bytes uploaded

    # a local module the step imports is part of it too
    (tmp_path / "helpers.py").write_text("def make(n):\n    return list(range(n + 1))\n")
    moved = steps(compiled(path, tmp_path / "d.json"))
    assert code_uri(moved["prep"]) != code_uri(new["prep"])
    assert (
        moved["prep"]["Arguments"]["Environment"][smc.FINGERPRINT_ENV]
        != new["prep"]["Arguments"]["Environment"][smc.FINGERPRINT_ENV]
    )


def test_the_fingerprint_is_the_local_runners_key_of_the_step(tmp_path):
    from nbscale.pipelines import fingerprint

    pipeline = load(str(flow(tmp_path)))
    step = pipeline.steps["fit"]
    parts = fingerprint.components(pipeline, step, {}, {}, "python3")
    definition = compiled(tmp_path / "pipeline.yaml", tmp_path / "x.json")
    env = steps(definition)["fit"]["Arguments"]["Environment"]
    assert env[smc.FINGERPRINT_ENV] == fingerprint.key(parts)


def test_code_is_uploaded_once_per_content_and_never_overwritten(tmp_path, monkeypatch):
    moto = pytest.importorskip("moto")
    import boto3

    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }.items():
        monkeypatch.setenv(key, value)
    path = flow(tmp_path)
    with moto.mock_aws():
        s3 = boto3.client("s3", region_name="eu-west-1")
        sm = boto3.client("sagemaker", region_name="eu-west-1")
        s3.create_bucket(
            Bucket="nb-flows", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
        )
        first = tmp_path / "first.json"
        compiled(path, first)
        smc.upload_and_create(first, sm, s3, ROLE, name="cached")
        old_uri = code_uri(steps(json.loads(first.read_text()))["fit"])
        old_key = old_uri.removeprefix("s3://nb-flows/") + "/step.ipynb"
        old_bytes = s3.get_object(Bucket="nb-flows", Key=old_key)["Body"].read()

        write_notebook(tmp_path / "fit.ipynb", [cell("model = max(data)")])
        second = tmp_path / "second.json"
        compiled(path, second)
        smc.upload_and_create(second, sm, s3, ROLE, name="cached")
        new_uri = code_uri(steps(json.loads(second.read_text()))["fit"])
        assert new_uri != old_uri
        # the first execution's code is still there, byte for byte
        assert s3.get_object(Bucket="nb-flows", Key=old_key)["Body"].read() == old_bytes
        new_key = new_uri.removeprefix("s3://nb-flows/") + "/step.ipynb"
        assert b"max(data)" in s3.get_object(Bucket="nb-flows", Key=new_key)["Body"].read()
        stored = json.loads(sm.describe_pipeline(PipelineName="cached")["PipelineDefinition"])
        assert code_uri(steps(stored)["fit"]) == new_uri

        # code beside the definition that is not what it was compiled with is refused
        (smc.code_dir(second) / "fit" / "step.ipynb").write_text("{}")
        with pytest.raises(SpecError, match="digest differs"):
            smc.upload_and_create(second, sm, s3, ROLE, name="cached")


def test_a_step_on_several_nodes_is_a_training_step_built_as_a_jobs_request(tmp_path):
    path = flow(tmp_path, nodes=2)
    backend = sagemaker_settings(
        BackendConfig(
            "aws",
            "sagemaker",
            {
                "role_arn": ROLE,
                "storage": "s3://nb-flows/team",
                "region": "eu-west-1",
                "subnets": ["subnet-1"],
                "security_group_ids": ["sg-1"],
                "kms_key_id": "arn:aws:kms:eu-west-1:123456789012:key/k",
                "keep_alive_seconds": 600,
            },
        )
    )
    definition = compiled(path, tmp_path / "t.json", settings=backend)
    assert problems(definition) == []  # botocore's CreateTrainingJob shape, the format
    smc.validate(definition)
    fit = steps(definition)["fit"]
    args = fit["Arguments"]
    assert fit["Type"] == "Training" and "TrainingJobName" not in args
    assert args["ResourceConfig"] == {
        "InstanceType": "ml.g5.xlarge",
        "InstanceCount": 2,
        "VolumeSizeInGB": 30,
        "VolumeKmsKeyId": "arn:aws:kms:eu-west-1:123456789012:key/k",
        "KeepAlivePeriodInSeconds": 600,
    }
    assert args["VpcConfig"] == {"Subnets": ["subnet-1"], "SecurityGroupIds": ["sg-1"]}
    assert args["AlgorithmSpecification"]["ContainerEntrypoint"][-1] == smc.NODE_MODULE
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"] for c in args["InputDataConfig"]}
    assert channels["code"]["S3Uri"].startswith("s3://nb-flows/team/pipelines/cached/code/fit/")
    assert channels["in-prep"]["S3Uri"] == {
        "Get": "Steps.prep.ProcessingOutputConfig.Outputs['outputs'].S3Output.S3Uri"
    }
    container = args["AlgorithmSpecification"]["ContainerArguments"]
    assert (
        container[container.index("--fingerprint") + 1] == args["Environment"][smc.FINGERPRINT_ENV]
    )
    # the consumer reads the training step's model.tar.gz and unpacks it first
    report = steps(definition)["report"]["Arguments"]
    (fit_input,) = [i for i in report["ProcessingInputs"] if i["InputName"] == "in-fit"]
    assert fit_input["S3Input"]["S3Uri"] == {"Get": "Steps.fit.ModelArtifacts.S3ModelArtifacts"}
    report_args = report["AppSpecification"]["ContainerArguments"]
    assert report_args[:3] == ["--unpack", "/opt/ml/processing/input/fit", "--"]
    assert "fit=/opt/ml/processing/input/fit/outputs" in report_args

    # without a backend (nbscale pipeline compile), one made of the compile options
    plain = steps(compiled(path, tmp_path / "u.json"))["fit"]["Arguments"]
    assert plain["ResourceConfig"]["InstanceCount"] == 2 and "VpcConfig" not in plain


def test_the_definition_check_uses_botocores_shapes(tmp_path):
    definition = compiled(flow(tmp_path, nodes=2), tmp_path / "v.json")
    broken = json.loads(json.dumps(definition))
    steps(broken)["fit"]["Arguments"]["ResourceConfig"]["InstanceCount"] = "2"
    with pytest.raises(SpecError, match="ResourceConfig.InstanceCount"):
        smc.validate(broken)
    assert any("InstanceCount" in p for p in problems(broken))
    broken = json.loads(json.dumps(definition))
    steps(broken)["prep"]["Arguments"]["AppSpecification"]["ContainerEntrypoint"] = "python3"
    with pytest.raises(SpecError, match="ContainerEntrypoint"):
        smc.validate(broken)
    broken = json.loads(json.dumps(definition))
    steps(broken)["report"]["Arguments"]["ProcessingInputs"][-1]["S3Input"]["S3Uri"] = {
        "Get": "Steps.fit.ModelArtifact.S3ModelArtifacts"
    }
    assert any("DescribeTrainingJob has no" in p for p in problems(broken))


def test_nodes_are_refused_where_a_step_runs_on_one_machine(tmp_path):
    from nbscale.pipelines.manifest import refuse_nodes

    pipeline = load(str(flow(tmp_path, nodes=3)))
    assert pipeline.steps["fit"].resources.nodes == 3
    with pytest.raises(SpecError, match=r"step fit resources.nodes: asks for 3 nodes"):
        refuse_nodes(pipeline, "the local runner", "run it on SageMaker")
    with pytest.raises(SpecError, match="nodes"):
        (tmp_path / "bad.yaml").write_text(
            "name: b\nsteps:\n  - {name: a, notebook: prep.ipynb, resources: {nodes: 0}}\n"
        )
        load(str(tmp_path / "bad.yaml"))


def _model_tarball(folder: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = b'{"x": 1}'
        info = tarfile.TarInfo("outputs/x.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    folder.mkdir(parents=True)
    (folder / "model.tar.gz").write_bytes(buf.getvalue())


@pytest.mark.parametrize("rank", [0, 1])
def test_a_training_node_runs_the_step_with_its_rank(tmp_path, monkeypatch, rank):
    from nbscale.pipelines import container_step
    from nbscale.runtime import pipeline_node

    config = tmp_path / "resourceconfig.json"
    config.write_text(
        json.dumps({"hosts": ["algo-2", "algo-1"], "current_host": f"algo-{rank + 1}"})
    )
    for key in ("SM_HOSTS", "PET_NNODES"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("NBSCALE_SM_RESOURCE_CONFIG", str(config))
    _model_tarball(tmp_path / "in-prep")
    seen = {}

    def run_step(args):
        import os

        seen["args"] = args
        seen["env"] = {k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR")}
        return 0

    monkeypatch.setattr(container_step, "main", run_step)
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK"):
        monkeypatch.setenv(key, "unset")  # restored after the test
    step = ["--code", "c", "--outputs", "/opt/ml/model/outputs", "--executed", "/opt/ml/model/nb"]
    argv = ["--unpack", str(tmp_path / "in-prep"), "--fingerprint", "ab", "--", *step]
    assert pipeline_node.main(argv) == 0
    assert (tmp_path / "in-prep" / "outputs" / "x.json").read_text() == '{"x": 1}'
    assert not (tmp_path / "in-prep" / "model.tar.gz").exists()
    assert seen["env"] == {"RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "algo-1"}
    outputs = seen["args"][seen["args"].index("--outputs") + 1]
    assert (outputs == "/opt/ml/model/outputs") == (rank == 0)  # only rank 0's are uploaded


def test_a_step_on_several_nodes_is_refused_where_a_step_runs_on_one_machine(
    tmp_path, nbscale_home
):
    """Only SageMaker Pipelines runs a step on several instances (a Training step); this
    machine's runner and the KFP target say so before anything is recorded or written."""
    from nbscale.errors import SpecError
    from nbscale.pipeline_runs import compile_pipeline, start_run
    from nbscale.store import get_store

    path = flow(tmp_path, nodes=2)
    with pytest.raises(SpecError) as local:
        start_run(str(path), backend="local", detach=False)
    assert str(local.value).startswith(
        "step fit resources.nodes: asks for 2 nodes, and this machine's runner runs a step "
        "on one machine"
    )
    assert get_store().query("SELECT id FROM pipeline_runs") == []
    out = tmp_path / "out" / "flow.kfp.yaml"
    with pytest.raises(SpecError, match="asks for 2 nodes, and the kfp target runs"):
        compile_pipeline(str(path), "kfp", str(out))
    assert not out.exists()
