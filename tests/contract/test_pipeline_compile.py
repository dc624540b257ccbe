"""Compiling: KFP v2 IR run under kfp.local, a SageMaker definition created and started on moto."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nbscale import keys
from nbscale.errors import SpecError
from nbscale.pipelines import compile_pipeline
from tests.support.emulators import (
    AWS_ENV,
    PLANTED_SECRET,
    container_env,
    grep_tree,
    kubernetes_secret_volume,
)


# kfp.local says that display names, resources and retries do nothing locally: that is expected
@pytest.mark.filterwarnings("ignore:Task .* no effect in the current local runner:UserWarning")
# ... and that the step image is not used by SubprocessRunner (this environment stands in for it)
@pytest.mark.filterwarnings("ignore:You may be attemping to run a task:RuntimeWarning")
def test_kfp_ir_compiles_with_resources_and_runs_under_kfp_local(small, tmp_path):
    yaml = pytest.importorskip("yaml")
    pytest.importorskip("kfp")
    from kfp import components, local

    # the pipeline key as the Secret volume KFP mounts (mode 0644: kfp-kubernetes sets none)
    mount = kubernetes_secret_volume(tmp_path / "secret", {"keys.json": keys.export("pipeline")})
    out = Path(
        compile_pipeline(str(small), "kfp", str(tmp_path / "small.kfp.yaml"), key_mount=str(mount))
    )
    ir, platform = yaml.safe_load_all(out.read_text())  # the IR, then the Kubernetes spec
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for executor in ir["deploymentSpec"]["executors"].values():
        env = {e["name"]: e["value"] for e in executor["container"]["env"]}
        assert env == {"NBSCALE_KEY_FILE": f"{mount}/keys.json"}
    assert all(e["secretAsVolume"][0]["secretName"] == "nbscale-keys" for e in k8s.values()), k8s
    assert keys.load("pipeline").hex() not in out.read_text()
    assert set(ir["root"]["dag"]["tasks"]) == {
        "step-make",
        "step-double",
        "step-square",
        "step-total",
    }
    assert ir["root"]["inputDefinitions"]["parameters"]["n"] == {
        "defaultValue": 4.0,
        "isOptional": True,
        "parameterType": "NUMBER_INTEGER",
    }
    assert ir["root"]["inputDefinitions"]["parameters"]["label"]["parameterType"] == "STRING"
    total = ir["root"]["dag"]["tasks"]["step-total"]
    assert sorted(total["dependentTasks"]) == ["step-double", "step-square"]
    assert set(total["inputs"]["artifacts"]) == {"in_double", "in_square"}

    # the compiled file itself is what runs: loaded back from disk, executed by kfp.local
    local.init(
        runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp-root")
    )
    task = components.load_component_from_file(str(out))(n=5, factor=1.0)
    assert task is not None
    executed = list((tmp_path / "kfp-root").rglob("step-total/executed"))
    assert executed, "kfp.local did not run the last step"
    text = executed[0].read_text()
    assert "{'sum': 40.0}" in text  # 0..4 doubled (10.0) plus squares (30)


@pytest.mark.filterwarnings("ignore:Task .* no effect in the current local runner:UserWarning")
@pytest.mark.filterwarnings("ignore:You may be attemping to run a task:RuntimeWarning")
def test_kfp_steps_without_the_key_refuse_each_others_outputs(small, tmp_path, capfd):
    """Each KFP step has its own home: without the Secret, step one's outputs are signed with
    a key nobody else has, and step two refuses them with a message naming the setting."""
    pytest.importorskip("kfp")
    from kfp import components, local

    out = Path(compile_pipeline(str(small), "kfp", str(tmp_path / "nokey.yaml"), key_secret=""))
    local.init(
        runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp-root")
    )
    with pytest.raises(RuntimeError):
        components.load_component_from_file(str(out))(n=2, factor=1.0)
    text = capfd.readouterr().out
    assert list((tmp_path / "kfp-root").rglob("step-make/outputs/manifest.json"))  # step one ran
    # the first of the two steps that read step one's outputs refuses them, naming the setting
    assert "no pipeline signing key" in text and "NBSCALE_KEY_FILE" in text
    assert not list((tmp_path / "kfp-root").rglob("step-total/executed"))


RUNTIME_IMAGE = "registry.example.com/nbscale-runtime:0.1.0"  # built from docker/Dockerfile


@pytest.fixture
def moto_server():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)


def test_sagemaker_definition_is_created_started_and_its_container_command_runs(
    small, tmp_path, moto_server, monkeypatch
):
    boto3 = pytest.importorskip("boto3")
    from nbscale.backends.sagemaker.pipeline_compile import upload_and_create

    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    role = "arn:aws:iam::123456789012:role/nbscale-steps"
    with pytest.raises(SpecError, match="--role"):
        compile_pipeline(str(small), "sagemaker", str(tmp_path / "x.json"))
    out = Path(
        compile_pipeline(
            str(small),
            "sagemaker",
            str(tmp_path / "small.json"),
            role=role,
            bucket="nb-bucket",
            image=RUNTIME_IMAGE,  # nbscale in the image: this machine's python runs the steps
        )
    )
    definition = json.loads(out.read_text())
    assert [s["Name"] for s in definition["Steps"]] == ["make", "double", "square", "total"]
    assert {p["Name"]: p["Type"] for p in definition["Parameters"]} == {
        "n": "Integer",
        "label": "String",
        "factor": "Float",
    }

    s3 = boto3.client("s3", endpoint_url=moto_server)
    sm = boto3.client("sagemaker", endpoint_url=moto_server)
    secrets = boto3.client("secretsmanager", endpoint_url=moto_server)
    s3.create_bucket(Bucket="nb-bucket")
    arn = upload_and_create(out, sm, s3, role, secretsmanager=secrets)
    assert arn.endswith(":pipeline/small")
    stored = json.loads(sm.describe_pipeline(PipelineName="small")["PipelineDefinition"])
    definition = json.loads(out.read_text())
    assert stored == definition
    envs = [s["Arguments"]["Environment"] for s in definition["Steps"]]
    # the pipeline key's ARN and the step's fingerprint (SageMaker's cache compares it)
    assert all(set(e) == {"NBSCALE_KEY_SECRET_ARN", "NBSCALE_STEP_FINGERPRINT"} for e in envs)
    assert envs[0]["NBSCALE_KEY_SECRET_ARN"].startswith("arn:aws:secretsmanager:")
    key_hex = keys.load("pipeline").hex()
    assert key_hex not in json.dumps(definition)  # only the ARN travels
    execution = sm.start_pipeline_execution(
        PipelineName="small", PipelineParameters=[{"Name": "n", "Value": "3"}]
    )["PipelineExecutionArn"]
    described = sm.describe_pipeline_execution(PipelineExecutionArn=execution)
    assert described["PipelineArn"] == arn
    assert upload_and_create(out, sm, s3, role) == arn  # a second create updates

    params = {p["Name"]: str(p["DefaultValue"]) for p in definition["Parameters"]} | {"n": "3"}
    outputs = _run_sagemaker_steps(definition, s3, tmp_path / "proc", params, moto_server)
    assert all(code == 0 for code, _ in outputs.values()), outputs
    executed = (tmp_path / "proc" / "total" / "output" / "notebook" / "step.ipynb").read_text()
    assert "{'sum': 12.5}" in executed  # n=3: doubled 0+2.5+5, squares 0+1+4
    for step in outputs:  # each "container" had its own home and never held the key on disk
        assert grep_tree(tmp_path / "proc" / step, key_hex, PLANTED_SECRET) == []

    # the same steps without the key: step two refuses step one's outputs, saying why
    for step in definition["Steps"]:
        del step["Arguments"]["Environment"]["NBSCALE_KEY_SECRET_ARN"]
    failed = _run_sagemaker_steps(definition, s3, tmp_path / "nokey", params, moto_server, stop=2)
    assert failed["make"][0] == 0
    code, text = failed["double"]
    assert code == 1 and "not signed with this pipeline's key" in text and "NBSCALE_KEY" in text


def _run_sagemaker_steps(definition, s3, root_dir, params, endpoint, stop=None):
    """Each step's exact container command as its own "container": /opt/ml/processing mapped to
    a folder, code fetched back from S3, Get expressions resolved as SageMaker would, its own
    home, and only the environment SageMaker gives (the step's Environment, the role's keys)."""
    results: dict[str, tuple[int, str]] = {}
    outputs: dict[str, Path] = {}
    for step in definition["Steps"][:stop]:
        root = root_dir / step["Name"]
        spec = step["Arguments"]

        def local(path: str, root=root) -> str:
            return path.replace("/opt/ml/processing", str(root))

        for item in spec["ProcessingInputs"]:
            uri = item["S3Input"]["S3Uri"]
            target = Path(local(item["S3Input"]["LocalPath"]))
            target.mkdir(parents=True)
            if isinstance(uri, str):
                prefix = uri.removeprefix("s3://nb-bucket/")
                for obj in s3.list_objects_v2(Bucket="nb-bucket", Prefix=prefix)["Contents"]:
                    dest = target / obj["Key"][len(prefix) + 1 :]
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(
                        s3.get_object(Bucket="nb-bucket", Key=obj["Key"])["Body"].read()
                    )
            else:
                producer = uri["Get"].split(".")[1]
                os.rmdir(target)
                target.symlink_to(outputs[producer])
        args = []
        for arg in spec["AppSpecification"]["ContainerArguments"]:
            if isinstance(arg, dict):
                arg = "".join(params[v["Get"].split(".")[1]] for v in arg["Std:Join"]["Values"])
            args.append(local(arg))
        entry = spec["AppSpecification"]["ContainerEntrypoint"]
        home = root / "home"
        home.mkdir(parents=True)
        env = container_env(
            home, AWS_ENDPOINT_URL=endpoint, **AWS_ENV, **spec.get("Environment", {})
        )
        proc = subprocess.run(
            [sys.executable if entry[0] == "python3" else entry[0], *entry[1:], *args],
            capture_output=True,
            text=True,
            timeout=180,
            env=env,
            cwd=home,
        )
        notebook = root / "output" / "notebook" / "step.ipynb"
        text = proc.stdout + proc.stderr + (notebook.read_text() if notebook.exists() else "")
        results[step["Name"]] = (proc.returncode, text)
        outputs[step["Name"]] = root / "output" / "outputs"
    return results


def test_kfp_steps_on_a_stock_image_are_container_components_with_the_wheelhouse(small, tmp_path):
    """Without nbscale's image each step is a container component: no kfp in its command,
    the wheelhouse an importer's artifact, the typed parameters and the upstream folders
    passed to ``nbscale.pipelines.container_step`` as KFP's launcher fills them in."""
    yaml = pytest.importorskip("yaml")
    pytest.importorskip("kfp")
    from kfp import components

    from nbscale.backends.kubeflow.pipeline_compile import compile_pipeline as kfp_compile
    from nbscale.pipelines.loader import load

    uri = "s3://nb-bucket/work/wheelhouse/sha256/" + "ab" * 32 + "/wheels.zip"
    out = tmp_path / "small.kfp.yaml"
    image = "pytorch/pytorch:2.9.0-cuda12.8-cudnn9-runtime"
    kfp_compile(load(str(small)), out, image=image, wheelhouse_uri=uri)
    ir, platform = yaml.safe_load_all(out.read_text())
    assert (
        components.load_component_from_text(yaml.safe_dump(ir)).name == ir["pipelineInfo"]["name"]
    )
    executors = ir["deploymentSpec"]["executors"]
    assert executors["exec-importer"]["importer"]["artifactUri"] == {"constant": uri}
    tasks = ir["root"]["dag"]["tasks"]
    for name in ("step-make", "step-double", "step-square", "step-total"):
        wheels = tasks[name]["inputs"]["artifacts"]["wheels"]["taskOutputArtifact"]
        assert wheels == {"outputArtifactKey": "artifact", "producerTask": "importer"}
    total = executors["exec-step-total"]["container"]
    assert total["image"] == image
    assert total["command"][:2] == ["sh", "-c"] and "kfp" not in " ".join(total["command"])
    assert "pip install --no-index --no-deps" in total["command"][2]
    args = total["args"]
    assert args[0] == "{{$.inputs.artifacts['wheels'].path}}"
    assert args[args.index("--notebook") + 1] == "{{$.inputs.parameters['notebook']}}"
    ins = [args[i + 1 : i + 3] for i, a in enumerate(args) if a == "--in"]
    assert ins == [
        ["double", "{{$.inputs.artifacts['in_double'].path}}"],
        ["square", "{{$.inputs.artifacts['in_square'].path}}"],
    ]
    make = executors["exec-step-make"]["container"]["args"]
    assert json.loads(make[make.index("--types") + 1]) == {"n": "int"}
    # the notebook and its local module are the step's parameters: KFP's cache key has them
    params = tasks["step-make"]["inputs"]["parameters"]
    assert "from shapes import square" in json.dumps(params["notebook"])
    assert "shapes.py" in json.loads(params["modules"]["runtimeValue"]["constant"])
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(k8s) == {"exec-step-make", "exec-step-double", "exec-step-square", "exec-step-total"}
