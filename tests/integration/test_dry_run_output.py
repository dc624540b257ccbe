"""``--dry-run`` as ``kubectl --dry-run=client -o yaml`` does it: stdout carries exactly what
would be sent (YAML for Kubernetes, one JSON document for AWS) and nothing else, so it pipes
into ``jq``, ``yaml.safe_load_all`` and ``kubectl apply -f -``; the commentary (estimate,
notes, the Secrets that would be created or updated, by name) goes to stderr. No Secret
object is ever printed: its data cannot be shown, and a placeholder would make
``kubectl apply`` create a broken Secret."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.emulators import AWS_ENV
from tests.support.kube_emulator import KubeApi
from tests.support.kube_schemas import validate
from tests.support.serving import make_artifact

REPO = Path(__file__).resolve().parents[2]
PIPELINE = REPO / "examples" / "pipeline" / "pipeline.yaml"

SAGEMAKER = """\
[backends.sm]
type = "sagemaker"
region = "us-east-1"
role_arn = "arn:aws:iam::123456789012:role/nbscale"
storage = "s3://nb-models/work"
instance_type = "ml.m5.xlarge"
image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/nbscale:0.1.0"
serving_image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/nbscale:0.1.0"
pipeline_image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/nbscale:0.1.0"
"""


def _jq(text: str, program: str) -> str:
    """``... | jq -e PROGRAM``: fails unless stdout is JSON that jq accepts."""
    jq = shutil.which("jq")
    assert jq, "jq is installed by scripts/install.sh test"
    proc = subprocess.run([jq, "-e", program], input=text, capture_output=True, text=True)
    assert proc.returncode == 0, f"jq refused the dry run's stdout: {proc.stderr}\n{text[:500]}"
    return proc.stdout


def _no_secret_data(out: str, err: str) -> None:
    assert "<redacted>" not in out + err
    assert "keys.json:" not in out  # no Secret's data field on stdout


@pytest.fixture
def sm(aws, nbscale_cli, tmp_path):
    (tmp_path / "nbscale.toml").write_text(SAGEMAKER)

    def run(*args: str):
        return nbscale_cli(*args, cwd=tmp_path, env={"AWS_ENDPOINT_URL": aws.url, **AWS_ENV})

    return run


def test_sagemaker_dry_runs_print_one_json_document_each(sm, aws, tmp_path):
    script = tmp_path / "train.py"
    script.write_text("print('hello')\n")
    calls = len(aws.calls)

    run = sm("run", str(script), "--backend", "sm", "--nodes", "2", "--dry-run")
    assert run.returncode == 0, run.stderr
    assert _jq(run.stdout, ".ResourceConfig.InstanceCount").strip() == "2"
    request = json.loads(run.stdout)  # one document, nothing before or after it
    assert request["AlgorithmSpecification"]["TrainingImage"].endswith("/nbscale:0.1.0")
    assert run.stderr.startswith("dry run: nothing submitted\n")
    assert "would be created or updated" in run.stderr and "nbscale" in run.stderr
    assert f"the folder {tmp_path} would travel: " in run.stderr  # the script's folder
    _no_secret_data(run.stdout, run.stderr)

    art, _ = make_artifact(tmp_path / "art", "digits")
    deploy = sm("deploy", str(art), "--name", "digits", "--backend", "sm", "--dry-run")
    assert deploy.returncode == 0, deploy.stderr
    shown = json.loads(_jq(deploy.stdout, "."))
    assert set(shown) == {"CreateModel", "CreateEndpointConfig", "CreateEndpoint"}
    assert "deploying" not in deploy.stderr  # nothing is being deployed
    assert "the model would be uploaded to s3://nb-models/work/" in deploy.stderr

    pipe = sm("pipeline", "run", str(PIPELINE), "--backend", "sm", "-p", "C", "0.5", "--dry-run")
    assert pipe.returncode == 0, pipe.stderr
    sent = json.loads(_jq(pipe.stdout, ".StartPipelineExecution"))
    assert sent["PipelineParameters"] == [{"Name": "C", "Value": "0.5"}]
    definition = json.loads(pipe.stdout)["CreatePipeline"]["PipelineDefinition"]
    assert [s["Type"] for s in definition["Steps"]] and definition["Version"]
    assert "would be uploaded under s3://nb-models/" in pipe.stderr
    assert "estimated cost: " in pipe.stderr  # the steps' processing prices, when known
    bad = sm("pipeline", "run", str(PIPELINE), "--backend", "sm", "-p", "nope", "1", "--dry-run")
    assert bad.returncode != 0 and "nope" in bad.stderr and bad.stdout == ""

    assert aws.operations("CreateTrainingJob") == [] and aws.operations("CreateModel") == []
    assert aws.operations("CreatePipeline") == [] and aws.operations("StartPipelineExecution") == []
    assert len([c for c in aws.calls[calls:] if c[0].startswith("Create")]) == 0


def test_kubeflow_dry_runs_apply_to_the_api_server_as_printed(kube, nbscale_cli, tmp_path):
    kubeconfig = kube.kubeconfig(tmp_path / "kubeconfig", namespace="team-a")
    (tmp_path / "nbscale.toml").write_text(
        "[backends.kf]\n"
        'type = "kubeflow"\n'
        'storage = "s3://nb-bucket/work"\n'
        "wheelhouse = false\n"
        'image = "ghcr.io/acme/nbscale:0.1.0"\n'
        f'kubeconfig = "{kubeconfig}"\n'
        'kfp_host = "http://127.0.0.1:9"\n'
    )
    run = nbscale_cli(
        "run", "-m", "train.main", "--backend", "kf", "--nodes", "2", "--dry-run", cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    art, _ = make_artifact(tmp_path / "art", "digits")
    deploy = nbscale_cli(
        "deploy", str(art), "--name", "digits", "--backend", "kf", "--dry-run", cwd=tmp_path
    )
    assert deploy.returncode == 0, deploy.stderr
    assert kube.writes() == []  # a dry run sends nothing

    api = KubeApi(kube.url)
    applied = []
    for proc in (run, deploy):
        _no_secret_data(proc.stdout, proc.stderr)
        # the user's own key Secret (the context's user: emu), for the job and the endpoint
        assert (
            "Secret nbscale-keys-emu in namespace team-a would be created or updated" in proc.stderr
        )
        for doc in yaml.safe_load_all(proc.stdout):  # the whole stdout is one YAML stream
            assert doc["kind"] != "Secret"
            validate(doc)  # the published CRDs, strictly
            # `kubectl apply -f -`: each object as printed, to the API server
            group, _, version = doc["apiVersion"].rpartition("/")
            plural = {"TrainJob": "trainjobs", "InferenceService": "inferenceservices"}
            namespace = doc["metadata"]["namespace"]
            if doc["kind"] in plural:
                api.custom.create_namespaced_custom_object(
                    group, version, namespace, plural[doc["kind"]], doc
                )
            else:
                assert doc["kind"] == "ConfigMap"
                api.core.create_namespaced_config_map(namespace, doc)
            applied.append(doc["kind"])
    assert applied[0] == "TrainJob" and applied[-1] == "InferenceService"
    assert "Secret nbscale-token-digits" in deploy.stderr  # the endpoint's token, named
    assert [j["spec"]["trainer"]["numNodes"] for j in api.trainjobs("team-a")] == [2]

    # a pipeline run on KFP: the package the run would upload, and nothing else
    pipe = nbscale_cli("pipeline", "run", str(PIPELINE), "--backend", "kf", "--dry-run")
    assert pipe.returncode == 0, pipe.stderr
    docs = [d for d in yaml.safe_load_all(pipe.stdout) if d]
    assert docs[0]["pipelineInfo"]["name"] and "deploymentSpec" in docs[0]
    assert "a run of this package would be created on http://127.0.0.1:9" in pipe.stderr
    _no_secret_data(pipe.stdout, pipe.stderr)


def test_a_local_pipeline_dry_run_prints_the_steps_it_would_run(nbscale_cli, tmp_path):
    proc = nbscale_cli(
        "pipeline", "run", str(PIPELINE), "--only", "prepare", "-p", "C", "0.5", "--dry-run"
    )
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(_jq(proc.stdout, "."))
    assert [s["name"] for s in plan["steps"]] == ["prepare"]
    assert plan["parameters"]["C"] == 0.5
    assert "would run on this machine" in proc.stderr
    assert nbscale_cli("pipeline", "runs").stdout.startswith("no pipeline runs yet")
    bad = nbscale_cli("pipeline", "run", str(PIPELINE), "-p", "nope", "1", "--dry-run")
    assert bad.returncode != 0 and "nope" in bad.stderr and bad.stdout == ""


def test_a_local_run_dry_run_prints_the_spec_it_would_run(nbscale_cli, tmp_path):
    script = tmp_path / "train.py"
    script.write_text("print('hello')\n")
    proc = nbscale_cli("run", str(script), "--procs-per-node", "2", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    spec = json.loads(_jq(proc.stdout, ".procs_per_node"))
    assert spec == 2
    assert json.loads(proc.stdout)["entry"]["target"] == str(script)
    assert proc.stderr.startswith("dry run: nothing submitted\n")


def test_train_magic_dry_run_keeps_stdout_for_what_would_be_sent(kernel):
    k = kernel()
    k.ok("import json\nrows = list(range(10))")
    reply = k.ok("""
        %%train --procs-per-node 2 --outputs n --dry-run
        n = len(json.dumps(rows))
        """)
    spec = json.loads(reply.streams["stdout"])  # the whole stdout: the spec, nothing else
    assert spec["procs_per_node"] == 2 and spec["entry"]["kind"] == "bundle"
    err = reply.streams["stderr"]
    assert err.startswith("dry run: nothing submitted\n")
    assert "import json" in err and "rows" in err  # the capture report is commentary
