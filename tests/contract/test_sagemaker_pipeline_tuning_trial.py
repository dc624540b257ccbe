"""A pipeline's sweep step compiled for SageMaker Pipelines, its trials run as SageMaker runs
them: the Tuning step's trial program (``nbscale_trial.py`` from ``sourcedir.tar.gz``, which
the training toolkit runs with the hyperparameters as arguments) executed here with the
``hyperparameters.json`` the tuner writes, each trial its own process, home and /opt/ml;
its log read with the step's ``MetricDefinitions`` regex as SageMaker reads it, the best
trial's ``/opt/ml/model`` tarred as SageMaker uploads it, and the next Processing step
unpacking it and verifying the outputs with the pipeline key read by ARN."""

from __future__ import annotations

import io
import json
import math
import re
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
TRAIN = (
    "import math\n"
    "import os\n"
    "import nbscale\n"
    "for epoch in range(3):\n"
    "    loss = (math.log10(lr) + 2.0) ** 2 + 0.01 * len(data) * n + layers / (epoch + 1)\n"
    "    nbscale.log_metric('val_loss', loss, step=epoch)\n"
    "model = {'lr': lr, 'layers': layers, 'loss': loss, 'param': nbscale.param('lr'),\n"
    "         'ckpt': os.environ['NBSCALE_CHECKPOINT_DIR']}"
)


def _keys() -> dict[str, str]:
    return {
        "aws_access_key_id": AWS_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        "region_name": "us-east-1",
    }


def _download(s3, uri: str, target: Path) -> None:
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    for obj in s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")["Contents"]:
        dest = target / obj["Key"][len(prefix) + 1 :]
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read())


def _get(s3, uri: str) -> bytes:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def _command(entry: list[str]) -> list[str]:
    return [sys.executable if entry[0] == "python3" else entry[0], *entry[1:]]


def _processing(step, root: Path, s3, params, aws, models: dict[str, bytes]):
    """A Processing step's exact command with /opt/ml/processing mapped to ``root``; a
    producer's ``model.tar.gz`` (a property reference) is the one in ``models``."""
    spec = step["Arguments"]

    def local(path: str) -> str:
        return path.replace("/opt/ml/processing", str(root))

    for item in spec["ProcessingInputs"]:
        uri = item["S3Input"]["S3Uri"]
        target = Path(local(item["S3Input"]["LocalPath"]))
        target.mkdir(parents=True)
        if isinstance(uri, str):
            _download(s3, uri, target)
        else:
            producer = item["InputName"].removeprefix("in-")
            (target / "model.tar.gz").write_bytes(models[producer])
    args = []
    for arg in spec["AppSpecification"]["ContainerArguments"]:
        if isinstance(arg, dict):
            arg = "".join(params[v["Get"].split(".")[1]] for v in arg["Std:Join"]["Values"])
        args.append(local(arg))
    home = root / "home"
    home.mkdir(parents=True)
    return subprocess.run(
        [*_command(spec["AppSpecification"]["ContainerEntrypoint"]), *args],
        capture_output=True,
        text=True,
        timeout=240,
        env=container_env(home, **aws, **spec.get("Environment", {})),
        cwd=home,
    )


def _trial(tuning, root: Path, s3, values: dict[str, str], params, aws, prepared: Path):
    """One training job of the tuning job: its channels, the hyperparameters.json the tuner
    writes (static and tuned values, strings all), the toolkit's ``python PROGRAM --name
    value ...`` in the extracted sourcedir, with /opt/ml mapped to ``root``."""
    job = tuning["TrainingJobDefinition"]
    static = job["StaticHyperParameters"]

    def local(text: str) -> str:
        for where, here in (
            ("/opt/ml/input/data", root / "data"),
            ("/opt/ml/input/config", root / "config"),
            ("/opt/ml/model", root / "model"),
            ("/opt/ml/checkpoints", root / "checkpoints"),
        ):
            text = text.replace(where, str(here))
        return text

    for channel in job["InputDataConfig"]:
        uri = channel["DataSource"]["S3DataSource"]["S3Uri"]
        target = root / "data" / channel["ChannelName"]
        if isinstance(uri, str):
            _download(s3, uri, target)
        else:  # Steps.prepare...S3Uri: prepare's outputs folder
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(prepared)
    (root / "model").mkdir(parents=True)
    hyper = {}
    for key, value in static.items():
        if isinstance(value, dict):  # a pipeline parameter's Get, resolved
            value = "".join(params[v["Get"].split(".")[1]] for v in value["Std:Join"]["Values"])
        hyper[key] = value
    hyper.update(values)
    (root / "config").mkdir()
    (root / "config" / "hyperparameters.json").write_text(json.dumps(hyper))
    (root / "config" / "resourceconfig.json").write_text(
        json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]})
    )
    code = root / "code"
    with tarfile.open(fileobj=io.BytesIO(_get(s3, static["sagemaker_submit_directory"]))) as tar:
        tar.extractall(code, filter="data")
    program = code / static["sagemaker_program"]
    program.write_text(local(program.read_text()))
    home = root / "home"
    home.mkdir()
    env = container_env(
        home,
        NBSCALE_SM_RESOURCE_CONFIG=str(root / "config" / "resourceconfig.json"),
        NBSCALE_HOST_ADDRESSES=json.dumps({"algo-1": "127.0.0.1"}),
        TRAINING_JOB_NAME=f"pipelines-x-train-{root.name}",
        **aws,
        **job["Environment"],
    )
    toolkit_args = [a for k, v in sorted(values.items()) for a in (f"--{k}", v)]
    return subprocess.run(
        [sys.executable, str(program), *toolkit_args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=code,
    )


@pytest.mark.timeout(900)
def test_tuning_step_trials_print_the_objective_and_the_best_feeds_the_next_step(tmp_path):
    boto3 = pytest.importorskip("boto3")
    from nbscale.backends.sagemaker.pipeline_compile import upload_and_create

    flow = tmp_path / "flow"
    flow.mkdir()
    write_notebook(
        flow / "prepare.ipynb", [cell("rows = 5", "parameters"), cell("data = [1] * rows")]
    )
    write_notebook(flow / "train.ipynb", [cell("lr = 0.5\nlayers = 2", "parameters"), cell(TRAIN)])
    write_notebook(
        flow / "report.ipynb",
        [cell("summary = f\"best lr {model['param']} in {model['ckpt']}\"\nprint(summary)")],
    )
    (flow / "pipeline.yaml").write_text(
        "name: tune\nparameters: {n: 2}\nsteps:\n"
        "  - {name: prepare, notebook: prepare.ipynb}\n"
        "  - name: train\n    notebook: train.ipynb\n    depends_on: [prepare]\n"
        "    sweep: {space: {lr: 'loguniform(1e-4,1e-1)', layers: 'int(1,4)'},"
        " objective: 'val_loss:min', trials: 4, parallel: 2, algorithm: random}\n"
        "  - {name: report, notebook: report.ipynb, depends_on: [train]}\n"
    )
    out = Path(
        compile_pipeline(
            str(flow / "pipeline.yaml"),
            "sagemaker",
            str(tmp_path / "tune.json"),
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
        assert steps["train"]["Type"] == "Tuning"
        params = {p["Name"]: str(p["DefaultValue"]) for p in definition["Parameters"]}

        prepare = tmp_path / "run" / "prepare"
        ran = _processing(steps["prepare"], prepare, s3, params, aws, models={})
        assert ran.returncode == 0, ran.stdout + ran.stderr

        tuning = steps["train"]["Arguments"]
        (metric,) = tuning["TrainingJobDefinition"]["AlgorithmSpecification"]["MetricDefinitions"]
        assert metric["Name"] == "val_loss"
        finals = {}
        for trial, values in {
            "001": {"lr": "0.01", "layers": "1"},
            "002": {"lr": "0.0003", "layers": "3"},
        }.items():
            root = tmp_path / "run" / "train" / trial
            ran = _trial(tuning, root, s3, values, params, aws, prepare / "output" / "outputs")
            assert ran.returncode == 0, ran.stdout + ran.stderr
            # SageMaker reads the objective from the log with the regex: one per epoch, the
            # last is the trial's final value
            found = [float(m) for m in re.findall(metric["Regex"], ran.stdout)]
            lr, layers = float(values["lr"]), int(values["layers"])
            expect = [(math.log10(lr) + 2) ** 2 + 0.01 * 5 * 2 + layers / (e + 1) for e in range(3)]
            assert found == pytest.approx(expect), ran.stdout
            assert sorted(p.name for p in (root / "model").iterdir()) == ["notebook", "outputs"]
            finals[trial] = found[-1]
        best = min(finals, key=finals.get)
        assert best == "001"

        # SageMaker tars the best trial's /opt/ml/model into model.tar.gz; report reads it
        # through Steps.train.TrainingJobSummaries[0]
        (inp,) = [
            i
            for i in steps["report"]["Arguments"]["ProcessingInputs"]
            if i["InputName"] == "in-train"
        ]
        assert {"Get": "Steps.train.TrainingJobSummaries[0].TrainingJobName"} in inp["S3Input"][
            "S3Uri"
        ]["Std:Join"]["Values"]
        model = tmp_path / "run" / "train" / best / "model"
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for path in sorted(model.rglob("*")):
                tar.add(path, arcname=str(path.relative_to(model)), recursive=False)
        report = tmp_path / "run" / "report"
        ran = _processing(
            steps["report"], report, s3, params, aws, models={"train": buf.getvalue()}
        )
        assert ran.returncode == 0, ran.stdout + ran.stderr
        done = (report / "output" / "notebook" / "step.ipynb").read_text()
        # nbscale.param read hyperparameters.json; the trial's checkpoints are its own
        checkpoints = tmp_path / "run" / "train" / "001" / "checkpoints" / "pipelines-x-train-001"
        assert f"best lr 0.01 in {checkpoints}" in done
        executed = json.loads((model / "notebook" / "step.ipynb").read_text())
        injected = [c for c in executed["cells"] if "injected-parameters" in c["metadata"]["tags"]]
        assert "lr = 0.01" in "".join(injected[0]["source"])
