"""A SageMaker pipeline step on two nodes: its Training step's exact container command run on
two "hosts" here (each its own process, home and /opt/ml, resourceconfig.json as SageMaker
writes it), the two ranks meeting in torch.distributed (gloo), rank 0's /opt/ml/model
tarred as SageMaker uploads it, and the next Processing step unpacking it and verifying
the outputs with the pipeline key read by ARN."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from nbscale.pipelines import compile_pipeline
from tests.support.emulators import AWS_ENV, container_env, moto_server
from tests.support.pipeline_notebooks import cell, write_notebook
from tests.support.sagemaker_pipeline_definition import problems

ROLE = "arn:aws:iam::123456789012:role/nbscale-steps"
IMAGE = "registry.example.com/nbscale-runtime:0.1.0"  # nbscale in the image: this python

FIT = """\
import os
import torch
import torch.distributed as dist

dist.init_process_group(
    "gloo",
    init_method=f"tcp://{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}",
    rank=int(os.environ["RANK"]),
    world_size=int(os.environ["WORLD_SIZE"]),
)
t = torch.tensor([float(sum(values)) * (int(os.environ["RANK"]) + 1)])
dist.all_reduce(t)
fitted = {"sum": t.item(), "world": dist.get_world_size()}
dist.destroy_process_group()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _download(s3, uri: str, target: Path) -> None:
    prefix = uri.removeprefix("s3://nb-bucket/")
    for obj in s3.list_objects_v2(Bucket="nb-bucket", Prefix=prefix + "/")["Contents"]:
        dest = target / obj["Key"][len(prefix) + 1 :]
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(s3.get_object(Bucket="nb-bucket", Key=obj["Key"])["Body"].read())


def _args(values: list, params: dict[str, str], local) -> list[str]:
    out = []
    for arg in values:
        if isinstance(arg, dict):
            arg = "".join(params[v["Get"].split(".")[1]] for v in arg["Std:Join"]["Values"])
        out.append(local(arg))
    return out


def _command(entry: list[str]) -> list[str]:
    return [sys.executable if entry[0] == "python3" else entry[0], *entry[1:]]


def test_a_two_node_training_step_runs_distributed_and_feeds_the_next_step(tmp_path):
    boto3 = pytest.importorskip("boto3")
    pytest.importorskip("torch")
    from nbscale.backends.sagemaker.pipeline_compile import upload_and_create

    flow = tmp_path / "flow"
    flow.mkdir()
    write_notebook(
        flow / "make.ipynb", [cell("n = 4", "parameters"), cell("values = list(range(n))")]
    )
    write_notebook(flow / "fit.ipynb", [cell(FIT)])
    write_notebook(
        flow / "report.ipynb",
        [cell("summary = f\"{fitted['sum']} on {fitted['world']}\"\nprint(summary)")],
    )
    (flow / "pipeline.yaml").write_text(
        "name: dist\nparameters: {n: 4}\nsteps:\n"
        "  - {name: make, notebook: make.ipynb}\n"
        "  - {name: fit, notebook: fit.ipynb, depends_on: [make], resources: {nodes: 2}}\n"
        "  - {name: report, notebook: report.ipynb, depends_on: [fit]}\n"
    )
    out = Path(
        compile_pipeline(
            str(flow / "pipeline.yaml"),
            "sagemaker",
            str(tmp_path / "dist.json"),
            role=ROLE,
            bucket="nb-bucket",
            image=IMAGE,
        )
    )
    with moto_server() as url:
        aws = {"AWS_ENDPOINT_URL": url, **AWS_ENV}
        s3 = boto3.client("s3", endpoint_url=url, **_keys())
        sm = boto3.client("sagemaker", endpoint_url=url, **_keys())
        secrets = boto3.client("secretsmanager", endpoint_url=url, **_keys())
        s3.create_bucket(Bucket="nb-bucket")
        upload_and_create(out, sm, s3, ROLE, secretsmanager=secrets)
        definition = json.loads(out.read_text())
        assert problems(definition) == []
        steps = {s["Name"]: s for s in definition["Steps"]}
        assert steps["fit"]["Type"] == "Training"
        params = {p["Name"]: str(p["DefaultValue"]) for p in definition["Parameters"]}

        # make: a Processing step
        make = tmp_path / "run" / "make"
        ran = _processing(steps["make"], make, s3, params, aws, inputs={})
        assert ran.returncode == 0, ran.stdout + ran.stderr

        # fit: the Training step's command on algo-1 and algo-2 at once
        fit = steps["fit"]["Arguments"]
        port = str(_free_port())
        procs = {}
        for host in ("algo-1", "algo-2"):
            root = tmp_path / "run" / "fit" / host

            def local(path: str, root=root) -> str:
                return path.replace("/opt/ml/input/data", str(root / "data")).replace(
                    "/opt/ml/model", str(root / "model")
                )

            for channel in fit["InputDataConfig"]:
                uri = channel["DataSource"]["S3DataSource"]["S3Uri"]
                target = root / "data" / channel["ChannelName"]
                if isinstance(uri, str):
                    _download(s3, uri, target)
                else:  # Steps.make...S3Uri: make's outputs folder
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.symlink_to(make / "output" / "outputs")
            (root / "model").mkdir(parents=True)
            config = root / "resourceconfig.json"
            config.write_text(json.dumps({"current_host": host, "hosts": ["algo-1", "algo-2"]}))
            home = root / "home"
            home.mkdir()
            env = container_env(
                home,
                NBSCALE_SM_RESOURCE_CONFIG=str(config),
                NBSCALE_HOST_ADDRESSES=json.dumps({"algo-1": "127.0.0.1", "algo-2": "127.0.0.1"}),
                NBSCALE_MASTER_PORT=port,
                **aws,
                **fit["Environment"],
            )
            spec = fit["AlgorithmSpecification"]
            procs[host] = subprocess.Popen(
                [
                    *_command(spec["ContainerEntrypoint"]),
                    *_args(spec["ContainerArguments"], params, local),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
                cwd=home,
            )
        for host, proc in procs.items():
            text = proc.communicate(timeout=240)[0]
            assert proc.returncode == 0, f"{host}: {text}"
        rank0 = tmp_path / "run" / "fit" / "algo-1" / "model"
        assert sorted(p.name for p in rank0.iterdir()) == ["notebook", "outputs"]
        assert list((tmp_path / "run" / "fit" / "algo-2" / "model").iterdir()) == []

        # SageMaker tars /opt/ml/model into model.tar.gz; report reads it through Get
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for path in sorted(rank0.rglob("*")):
                tar.add(path, arcname=str(path.relative_to(rank0)), recursive=False)
        report = tmp_path / "run" / "report"
        ran = _processing(steps["report"], report, s3, params, aws, inputs={"fit": buf.getvalue()})
        assert ran.returncode == 0, ran.stdout + ran.stderr
        done = (report / "output" / "notebook" / "step.ipynb").read_text()
        # 0+1+2+3 = 6 on rank 0, 12 on rank 1: all_reduce gives 18 on both
        assert "18.0 on 2" in done


def _keys() -> dict[str, str]:
    return {
        "aws_access_key_id": AWS_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        "region_name": "us-east-1",
    }


def _processing(step, root: Path, s3, params, aws, inputs: dict[str, bytes]):
    """A Processing step's exact command with /opt/ml/processing mapped to ``root``."""
    spec = step["Arguments"]

    def local(path: str) -> str:
        return path.replace("/opt/ml/processing", str(root))

    for item in spec["ProcessingInputs"]:
        uri = item["S3Input"]["S3Uri"]
        target = Path(local(item["S3Input"]["LocalPath"]))
        target.mkdir(parents=True)
        if isinstance(uri, str):
            _download(s3, uri, target)
        else:  # the producer's model.tar.gz, as an S3Prefix input of that one object
            producer = uri["Get"].split(".")[1]
            (target / "model.tar.gz").write_bytes(inputs[producer])
    home = root / "home"
    home.mkdir(parents=True)
    app = spec["AppSpecification"]
    return subprocess.run(
        [*_command(app["ContainerEntrypoint"]), *_args(app["ContainerArguments"], params, local)],
        capture_output=True,
        text=True,
        timeout=240,
        env=container_env(home, **aws, **spec.get("Environment", {})),
        cwd=home,
    )
