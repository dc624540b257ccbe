"""A KFP run without a pushed image: the stock image plus nbscale's offline wheelhouse.

Without ``image`` the steps are KFP container components on the stock pytorch/pytorch image
of the kernel's torch and Python: no kfp and no nbscale in it. nbscale's step wheelhouse,
built for the pods' platform (Linux x86_64 manylinux) and the image's Python, goes to
object storage (moto's S3 for MinIO) under its digest and reaches each step as an input
artifact of an importer task. The fake KFP (``tests/support/kfp_api.py``) accepts the run
and plays the launcher: it downloads the artifacts from S3, runs each step's exact command
as a process in a fresh venv standing for the stock image (torch and numpy only), with no
package index, then uploads the outputs; the next step reads them from S3.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest
import yaml

from nbscale.backends.kubeflow.pipelines import KFPPipelines
from nbscale.backends.kubeflow.settings import settings
from nbscale.config import BackendConfig
from nbscale.errors import SpecError
from tests.support.emulators import AWS_ENV, moto_server
from tests.support.kfp_api import FakeKFP, play_run
from tests.support.kube_emulator import KubeApi, KubeEmulator
from tests.support.pipeline_notebooks import cell, write_notebook
from tests.support.stock_image import stock_image_venv

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
NS = "team-a"
BUCKET = "nb-bucket"


@pytest.fixture(scope="module")
def s3_url():
    with moto_server() as url:
        yield url


@pytest.fixture(scope="module")
def built_wheels(tmp_path_factory):
    """The step wheelhouse for the pods' platform and this kernel's Python, built once for
    the module (then copied into each test's cache: the same key, so no second download)."""
    from nbscale.backends.images import kernel_versions
    from nbscale.runtime import wheelhouse

    home = tmp_path_factory.mktemp("builder-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NBSCALE_HOME", str(home))
        folder = wheelhouse.build(
            "step", None, list(wheelhouse.POD_PLATFORMS), kernel_versions().python
        )
    return folder


@pytest.fixture
def env(tmp_path, monkeypatch, nbscale_home, s3_url):
    import boto3

    from nbscale.backends.images import kernel_versions

    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    s3 = boto3.client("s3", endpoint_url=s3_url)
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=BUCKET)
    kube = KubeEmulator()
    monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig(tmp_path / "kubeconfig", NS)))
    fake = FakeKFP()
    # the stock image of this kernel's torch and Python (the shipped table may lack them)
    kernel = kernel_versions()
    image = f"pytorch/pytorch:{kernel.torch}.0-cuda12.8-cudnn9-runtime"
    (nbscale_home / "images").mkdir(parents=True)
    (nbscale_home / "images" / "kubeflow.json").write_text(
        json.dumps({"entries": [{"name": "kernel", "image": image, "torch": kernel.torch,
                                 "python": kernel.python, "processors": ["cpu", "gpu"]}]})
    )  # fmt: skip
    yield {"s3": s3, "kube": kube, "kfp": fake, "image": image, "url": s3_url}
    fake.stop()
    kube.stop()


def _conf(env: dict, **extra):
    table = {
        "kfp_host": env["kfp"].url,
        "namespace": NS,
        "poll_seconds": 0,
        "storage": f"s3://{BUCKET}/work",
        "endpoint_url": env["url"],
        **extra,
    }
    return settings(BackendConfig("kf", "kubeflow", table))


def _flow(tmp_path: Path) -> Path:
    (tmp_path / "shapes.py").write_text("def square(v):\n    return v * v\n")
    return write_notebook(
        tmp_path / "flow.ipynb",
        [
            cell("from shapes import square", "imports"),
            cell("n = 3", "pipeline-parameters"),
            cell("values = [square(v) for v in range(n)]", "step:make"),
            cell("total = sum(values) * 2\nprint('total', total)", "step:use", "prev:make"),
        ],
    )


def _objects(s3, prefix: str = "") -> list[str]:
    found = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents") or []
    return [o["Key"] for o in found]


def _play(env: dict, run, root: Path) -> dict:
    """The fake KFP runs the run: each step in a fresh "stock image" venv (torch and numpy
    only), the key Secret as the kubelet lays it out."""
    api = KubeApi(env["kube"].url)

    def secret(name: str) -> dict[str, bytes]:
        found = api.core.read_namespaced_secret(name, "kubeflow")
        return {k: base64.b64decode(v) for k, v in found.data.items()}

    def image_python(image: str, folder: Path) -> Path:
        assert image == env["image"]
        folder.mkdir(parents=True)
        return stock_image_venv(folder)

    return play_run(env["kfp"], run.run_id, env["s3"], BUCKET, root, image_python, secret)


def _seed_cache(built: Path) -> None:
    from nbscale import paths

    shutil.copytree(built, paths.home() / "wheelhouse" / built.name)


def test_a_run_without_an_image_runs_its_steps_on_the_stock_image_from_the_wheelhouse(
    env, tmp_path, built_wheels
):
    from kfp import components

    _seed_cache(built_wheels)
    runner = KFPPipelines(_conf(env))
    flow = str(_flow(tmp_path))
    dry = runner.plan(flow, {"n": 5})  # the package a run would send; nothing is uploaded
    assert _objects(env["s3"], "work/") == [] and env["kfp"].runs == {}
    run = runner.start(flow, {"n": 5})
    (post,) = [r for r in env["kfp"].requests if r[0] == "POST" and r[1] == "/apis/v2beta1/runs"]
    ir = post[2]["pipeline_spec"]["pipeline_spec"]
    # the same package (the wheelhouse's digest aside: nbscale's wheel is built from this
    # checkout, which may change in between, and then the wheelhouse is built anew)
    planned = dry.documents[0]["deploymentSpec"]["executors"]
    assert {k: e for k, e in planned.items() if "container" in e} == {
        k: e for k, e in ir["deploymentSpec"]["executors"].items() if "container" in e
    }
    assert planned["exec-importer"]["importer"]["artifactUri"]["constant"].startswith(
        f"s3://{BUCKET}/work/wheelhouse/sha256/"
    )
    assert any(f"on the stock image {env['image']}" in note for note in dry.notes)
    # the IR is KFP's own (the kfp compiler's), and the SDK loads it back
    assert components.load_component_from_text(yaml.safe_dump(ir)).name == "flow"
    executors = ir["deploymentSpec"]["executors"]
    (importer,) = [e["importer"] for e in executors.values() if "importer" in e]
    uri = importer["artifactUri"]["constant"]
    assert uri.startswith(f"s3://{BUCKET}/work/wheelhouse/sha256/") and uri.endswith("/wheels.zip")
    # the wheelhouse is in object storage, under the digest of its bytes, built for the pods
    key = uri[len(f"s3://{BUCKET}/") :]
    assert key in _objects(env["s3"], "work/wheelhouse/")
    archive = tmp_path / "got.zip"
    env["s3"].download_file(BUCKET, key, str(archive))
    assert uri.split("/")[-2] == __import__("hashlib").sha256(archive.read_bytes()).hexdigest()
    names = zipfile.ZipFile(archive).namelist()
    wanted = {"nbscale", "papermill", "ipykernel"}
    assert wanted <= {n.split("-")[0].lower() for n in names}
    (zmq,) = [n for n in names if n.startswith("pyzmq-")]
    assert "manylinux" in zmq and "x86_64" in zmq  # the pod's platform, not this machine's tag
    assert not [n for n in names if n.startswith(("kfp", "torch", "jupyter_server"))]
    containers = [e["container"] for e in executors.values() if "container" in e]
    assert len(containers) == 2
    for c in containers:
        assert c["image"] == env["image"]  # the stock image: no kfp, no nbscale in it
        text = " ".join(c["command"] + c["args"])
        assert "--no-index" in text and "kfp" not in text
    assert ir["root"]["dag"]["tasks"]["importer"]["taskInfo"]["name"] == "nbscale-wheelhouse"

    done = _play(env, run, tmp_path / "pods")
    assert {n: t.returncode for n, t in done.items()} == {"make": 0, "use": 0}, {
        n: t.output[-3000:] for n, t in done.items()
    }
    for task in done.values():
        script = task.argv[2]
        assert "pip install --no-index" in script and task.env["PIP_NO_INDEX"] == "1"
        assert "NBSCALE_KEY_FILE" in task.env and "AWS_ACCESS_KEY_ID" not in task.env
        assert os.path.realpath(task.env["PATH"].split(":")[0]).startswith(str(tmp_path / "pods"))
    # nbscale ran from what the wheelhouse installed into the "image", not from this checkout
    for name in ("step-make", "step-use"):
        venv = tmp_path / "pods" / name / "image" / "venv"
        (dist,) = venv.rglob("nbscale-*.dist-info")
        origin = json.loads((dist / "direct_url.json").read_text())
        assert origin["url"].endswith(".whl") and "dir_info" not in origin  # not editable
        assert list(venv.rglob("papermill-*.dist-info"))
    # the step's output: the executed notebook, as uploaded to the pipeline root
    executed = [k for k in _objects(env["s3"], f"v2/artifacts/flow/{run.run_id}/step-use/")
                if k.endswith("executed/step.ipynb")]  # fmt: skip
    assert executed
    body = env["s3"].get_object(Bucket=BUCKET, Key=executed[0])["Body"].read().decode()
    assert "total 60" in body  # squares of 0..4 (30), doubled, with n=5 from the run
    seen: list[tuple[str, str]] = []
    runner.follow(run, lambda name, fields: seen.append((name, fields["status"])))
    assert run.status == "SUCCEEDED"
    assert set(run.steps) == {"make", "use"}  # the importer is no step of the flow


def test_a_configured_image_runs_as_before_without_a_wheelhouse(env, tmp_path):
    image = "registry.example.com/ml/nbscale-runtime:0.1.0"  # built from docker/Dockerfile
    runner = KFPPipelines(_conf(env, image=image, storage=f"s3://{BUCKET}/configured"))
    runner.start(str(_flow(tmp_path)), {})
    (post,) = [r for r in env["kfp"].requests if r[0] == "POST" and r[1] == "/apis/v2beta1/runs"]
    executors = post[2]["pipeline_spec"]["pipeline_spec"]["deploymentSpec"]["executors"]
    assert not [e for e in executors.values() if "importer" in e]
    for e in executors.values():
        assert e["container"]["image"] == image
        assert "kfp.dsl.executor_main" in " ".join(e["container"]["command"])
    assert _objects(env["s3"], "configured/") == []  # nothing uploaded: no wheelhouse
    assert not list((Path(os.environ["NBSCALE_HOME"]) / "wheelhouse").glob("step-*"))


def test_a_wheelhouse_pip_cannot_build_for_the_pods_is_refused_before_anything_is_sent(
    env, tmp_path, built_wheels, monkeypatch
):
    """pip finds no wheel of pyzmq for the pods' platform (an index without it): one message
    naming the package and the image setting, and nothing reaches KFP, the cluster or S3."""
    index = tmp_path / "index"
    index.mkdir()
    for wheel in built_wheels.glob("*.whl"):
        if not wheel.name.startswith("pyzmq-"):
            shutil.copy2(wheel, index / wheel.name)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    before = _objects(env["s3"])
    runner = KFPPipelines(_conf(env))
    with pytest.raises(SpecError) as err:
        runner.start(str(_flow(tmp_path)), {})
    text = str(err.value)
    assert text.startswith("[backends.kf] image: is not set, and nbscale's step wheelhouse")
    assert "pip finds no wheel of pyzmq for it" in text and "Linux x86_64" in text
    assert 'image = "REGISTRY/..."' in text
    assert env["kfp"].requests == [] and env["kube"].writes() == []
    assert _objects(env["s3"]) == before


def test_no_image_and_no_storage_or_wheelhouse_is_one_message(env, tmp_path):
    base = {"kfp_host": env["kfp"].url, "namespace": NS}
    for table, why in (
        (base, "storage is not set"),
        ({**base, "storage": f"s3://{BUCKET}/w", "wheelhouse": False}, "wheelhouse = false"),
    ):
        runner = KFPPipelines(settings(BackendConfig("kf", "kubeflow", table)))
        with pytest.raises(SpecError, match=rf"\[backends.kf\] image: is not set, and {why}"):
            runner.start(str(_flow(tmp_path)), {})
    assert env["kfp"].requests == [] and env["kube"].writes() == []


def test_a_failing_step_on_the_stock_image_fails_the_run_and_says_why(env, tmp_path, built_wheels):
    """The step's command exits non-zero: the task and the run are FAILED, the next step never
    runs, and the pod's log has the cell's error."""
    _seed_cache(built_wheels)
    write_notebook(
        tmp_path / "bad.ipynb",
        [
            cell("values = [1, 2]\nraise ValueError('no good values')", "step:make"),
            cell("total = sum(values)", "step:use", "prev:make"),
        ],
    )
    runner = KFPPipelines(_conf(env))
    run = runner.start(str(tmp_path / "bad.ipynb"), {})
    done = _play(env, run, tmp_path / "pods")
    assert list(done) == ["make"] and done["make"].returncode == 1
    assert "ValueError" in done["make"].output and "no good values" in done["make"].output
    runner.follow(run)
    assert run.status == "FAILED"
    assert run.steps == {"make": {"status": "FAILED", "error": "exit code 1"}}
