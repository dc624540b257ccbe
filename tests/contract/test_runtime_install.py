"""The container runtime installed the way a stock PyTorch image gets it: no Jupyter.

A fresh virtual environment stands for the image: it has torch and numpy (the image's
own, linked in) and nothing else. Into it go only the wheelhouses nbscale builds
(``pip install --no-index --no-deps``). In it run, each as its own "container" with its
own home and the key as a mounted file: a captured cell on two ranks, a serving model
(V2 infer and ``/invocations``), and a pipeline step. ``PYTHONPROFILEIMPORTTIME`` makes
every process list what it imported: no jupyter_server, tornado or ipywidgets.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from nbscale import keys
from nbscale.runtime import wheelhouse
from tests.support import REPO
from tests.support.emulators import container_env, free_port, mount_secret
from tests.support.stock_image import stock_image_venv

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
IMPORTED = re.compile(r"import time:\s+\d+ \|\s+\d+ \|\s*(\S+)")
JUPYTER = {"jupyter_server", "tornado", "ipywidgets"}


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """A venv with the image's torch and numpy, then only the wheelhouse the Dockerfile
    installs (``--kind image``: built for the pods' platform and this Python), by the
    Dockerfile's own RUN line: no package index."""
    import nbscale

    root = tmp_path_factory.mktemp("image")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NBSCALE_HOME", str(root / "builder-home"))
        wheels = root / "wheels"
        wheelhouse.build("image", wheels)
    python = stock_image_venv(root)
    # the Dockerfile's own RUN line, its folder mapped here, the image's python first on PATH
    copied = root / "opt-nbscale-wheels"
    shutil.copytree(wheels, copied)
    install = docker_run_line().replace("/opt/nbscale/wheels", str(copied))
    assert install.startswith("python -m pip install --no-index --no-deps")
    env = {
        **os.environ,
        "PATH": f"{python.parent}:{os.environ['PATH']}",
        "NBSCALE_VERSION": nbscale.__version__,  # the build argument
        "PIP_FIND_LINKS": "",  # nothing but the wheelhouse
    }
    subprocess.run(["sh", "-c", install], check=True, env=env)
    assert not copied.exists()  # the image keeps no wheels
    return {"python": str(python), "wheels": wheels, "root": root}


DOCKERFILE = REPO / "docker" / "Dockerfile"


def docker_run_line() -> str:
    runs = [ln[4:] for ln in DOCKERFILE.read_text().splitlines() if ln.startswith("RUN ")]
    assert len(runs) == 1, runs
    return runs[0]


def docker_entry() -> list[str]:
    lines = DOCKERFILE.read_text().splitlines()
    entry = json.loads(next(ln[11:] for ln in lines if ln.startswith("ENTRYPOINT ")))
    cmd = json.loads(next(ln[4:] for ln in lines if ln.startswith("CMD ")))
    return [*entry, *cmd]


def _imported(text: str) -> set[str]:
    return {m.group(1).split(".")[0] for m in IMPORTED.finditer(text)}


def test_the_runtime_installs_without_jupyter(image):
    wheels = sorted(p.name for p in image["wheels"].glob("*.whl"))
    names = {w.split("-")[0].lower().replace("_", "-") for w in wheels}
    assert not names & {"jupyter-server", "ipywidgets", "jupyterlab", "notebook", "torch", "numpy"}
    assert "nbscale" in names and "cloudpickle" in names
    listed = subprocess.check_output(
        [image["python"], "-m", "pip", "list", "--format=json"], text=True
    )
    installed = {d["name"].lower() for d in json.loads(listed)}
    assert "jupyter-server" not in installed and "ipywidgets" not in installed
    probe = subprocess.run(
        [image["python"], "-c", "import nbscale, sys; print(sorted(m for m in sys.modules "
         "if m.startswith('nbscale')))"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert probe.stdout.strip() == "['nbscale']"  # import nbscale imports nothing else


def test_every_package_of_the_source_is_in_the_wheel(image):
    import zipfile

    wheel = next(image["wheels"].glob("nbscale-*.whl"))
    inside = {Path(n).parent.as_posix() for n in zipfile.ZipFile(wheel).namelist()}
    root = REPO
    packages = {
        p.parent.relative_to(root).as_posix() for p in (root / "nbscale").rglob("__init__.py")
    }
    packages = {p for p in packages if "labextension" not in p}
    assert packages <= inside, f"missing from the wheel (pyproject packages): {packages - inside}"


def test_a_cell_on_two_ranks_runs_in_the_runtime_image(image, tmp_path):
    import torch

    from nbscale.backends.remote.staging import collect, stage
    from nbscale.celljob import prepare_cell
    from nbscale.results import read_results_file
    from nbscale.specs import Entry, JobSpec
    from nbscale.storage import ObjectStore

    (tmp_path / "p.py").write_text("")
    spec = JobSpec(entry=Entry.from_path(str(tmp_path / "p.py")), name="img", nodes=2)
    source = (
        "import torch.distributed as dist\n"
        "t = torch.ones(1) * (dist.get_rank() + 1)\n"
        "dist.all_reduce(t)\n"
        "total = float(t.item())\n"
    )
    prepared = prepare_cell(source, {"torch": torch}, spec, outputs=["total"])
    prepared.write()
    store = ObjectStore(str(tmp_path / "bucket"), progress=None)  # a path stands for the store
    remote = stage("img-job", prepared.spec.to_dict(), store)
    secret = mount_secret(tmp_path / "secret" / "keys.json", keys.export("bundle"))
    port = free_port()
    procs = []
    for node in range(2):
        home = tmp_path / f"node-{node}"
        home.mkdir()
        env = container_env(
            home,
            NBSCALE_KEY_FILE=str(secret),
            PYTHONPROFILEIMPORTTIME="1",
            PET_NNODES="2",
            PET_NPROC_PER_NODE="1",
            PET_NODE_RANK=str(node),
            PET_MASTER_ADDR="127.0.0.1",
            PET_MASTER_PORT=str(port),
        )
        argv = [image["python"] if a == "python" else a for a in remote.argv()]
        with open(tmp_path / f"node-{node}.out", "w") as out:  # a pipe left unread would block
            procs.append(
                subprocess.Popen(argv, env=env, cwd=home, stdout=out, stderr=subprocess.STDOUT)
            )
    for proc in procs:
        proc.wait(300)
    outs = [(tmp_path / f"node-{node}.out").read_text() for node in range(2)]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:]
    info = collect("img-job", store, remote.outputs_uri, 2)
    assert read_results_file(Path(info["job_dir"]) / "outputs" / "results.zip", "img-job") == {
        "total": 3.0
    }
    worker_imports = _imported("\n".join(outs))
    assert "torch" in worker_imports and "cloudpickle" in worker_imports
    assert not worker_imports & JUPYTER, worker_imports & JUPYTER


def _request(port, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(method, path, body, headers or {})
    resp = conn.getresponse()
    return resp.status, resp.read()


def test_a_model_is_served_in_the_runtime_image(image, tmp_path):
    import torch

    from nbscale.serving import package

    model = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    art = package(model, tmp_path / "model", "tiny")
    secret = mount_secret(tmp_path / "secret" / "keys.json", keys.export("model"))
    (tmp_path / "token").write_text("t0ken")
    home = tmp_path / "serve-home"
    home.mkdir()
    port = free_port()
    env = container_env(home, NBSCALE_KEY_FILE=str(secret), PYTHONPROFILEIMPORTTIME="1")
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [image["python"], "-m", "nbscale.serving", "--model-dir", str(art), "--port", str(port),
         "--token-file", str(tmp_path / "token")],
        env=env, cwd=home, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if _request(port, "GET", "/v2/health/ready")[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the model server did not become ready"
            time.sleep(0.2)
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        auth = {"Authorization": "Bearer t0ken", "Content-Type": "application/json"}
        body = json.dumps(
            {"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32",
                         "data": x.ravel().tolist()}]}
        )  # fmt: skip
        status, answer = _request(port, "POST", "/v2/models/tiny/infer", body, auth)
        assert status == 200, answer
        with torch.inference_mode():
            expected = model(torch.from_numpy(x)).numpy()
        got = np.asarray(json.loads(answer)["outputs"][0]["data"], np.float32).reshape(2, 3)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        status, answer = _request(port, "POST", "/invocations", json.dumps(x.tolist()), auth)
        assert status == 200
        np.testing.assert_allclose(np.asarray(json.loads(answer)), expected, rtol=1e-5, atol=1e-6)
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    imported = _imported((tmp_path / "serve.log").read_text())
    assert "torch" in imported and "httptools" in imported
    assert not imported & JUPYTER, imported & JUPYTER


def test_a_pipeline_step_installs_its_wheelhouse_in_a_stock_image(tmp_path):
    """Compiled for the default stock PyTorch image, each step's exact entry command installs
    the wheelhouse shipped with the code offline, then runs the step; each step is its own
    container (its own home and venv), the key a mounted file."""
    from nbscale.backends.images import kernel_versions
    from nbscale.pipelines import compile_pipeline
    from tests.support.pipeline_notebooks import cell, write_notebook
    from tests.support.sagemaker import kernel_image_entry

    kernel_image_entry()  # the stock image of this kernel's torch and Python (a table entry)
    kernel = kernel_versions()
    write_notebook(
        tmp_path / "flow.ipynb",
        [
            cell("values = [1, 2, 3]", "step:make"),
            cell("total = sum(values) * 2\nprint('total', total)", "step:use", "prev:make"),
        ],
    )
    out = Path(
        compile_pipeline(
            str(tmp_path / "flow.ipynb"),
            "sagemaker",
            str(tmp_path / "flow.json"),
            role="arn:aws:iam::123456789012:role/x",
            bucket="b",
        )
    )
    definition = json.loads(out.read_text())
    code_root = out.with_name("flow.code")
    wheels = {p.name.split("-")[0].lower() for p in (code_root / ".runtime").glob("*.whl")}
    assert {"nbscale", "papermill", "ipykernel"} <= wheels and "jupyter_server" not in wheels
    secret = mount_secret(tmp_path / "secret" / "keys.json", keys.export("pipeline"))
    produced = {}
    for step in definition["Steps"]:
        name = step["Name"]
        app = step["Arguments"]["AppSpecification"]
        assert app["ImageUri"] == (
            "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:"
            f"{kernel.torch}-cpu-py{kernel.python.replace('.', '')}"
        )
        root = tmp_path / "proc" / name

        def local(text: str, root=root) -> str:
            return text.replace("/opt/ml/processing", str(root))

        (root / "input").mkdir(parents=True)
        for item in step["Arguments"]["ProcessingInputs"]:
            uri, target = item["S3Input"]["S3Uri"], Path(local(item["S3Input"]["LocalPath"]))
            if isinstance(uri, str):  # s3://b/flow/code/<folder>/<sha256>, from flow.code/
                folder = uri.rsplit("/", 2)[1]  # the step's folder, or .runtime (the wheels)
                target.symlink_to(code_root / folder)
            else:
                target.symlink_to(produced[uri["Get"].split(".")[1]])
        python = stock_image_venv(tmp_path / f"image-{name}")  # a fresh container each step
        home = tmp_path / f"home-{name}"
        home.mkdir()
        env = container_env(
            home,
            NBSCALE_KEY_FILE=str(secret),
            PYTHONPROFILEIMPORTTIME="1",
            PATH=f"{python.parent}:{os.environ['PATH']}",
        )
        argv = [local(a) for a in app["ContainerEntrypoint"]]
        argv += [local(a) for a in app["ContainerArguments"]]
        proc = subprocess.run(argv, env=env, cwd=home, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert not _imported(proc.stderr) & {"jupyter_server", "ipywidgets"}
        produced[name] = root / "output" / "outputs"
    executed = (tmp_path / "proc" / "use" / "output" / "notebook" / "step.ipynb").read_text()
    assert "total 12" in executed


def test_the_image_entry_serves_as_sagemaker_starts_it(image, tmp_path):
    """The Dockerfile's ENTRYPOINT + CMD (``serve``), as SageMaker runs it: the model folder,
    the port in SAGEMAKER_BIND_TO_PORT, /ping and /invocations; bound to loopback here."""
    import torch

    from nbscale.serving import package

    model = torch.nn.Sequential(torch.nn.Linear(4, 2)).eval()
    art = package(model, tmp_path / "opt-ml-model", "sm")
    secret = mount_secret(tmp_path / "secret" / "keys.json", keys.export("model"))
    home = tmp_path / "container"
    home.mkdir()
    port = free_port()
    env = container_env(home, NBSCALE_KEY_FILE=str(secret), SAGEMAKER_BIND_TO_PORT=str(port))
    entry = docker_entry()
    assert entry == ["python", "-m", "nbscale.serving", "serve"]
    argv = [image["python"], *entry[1:], "--model-dir", str(art), "--host", "127.0.0.1"]
    with open(tmp_path / "serve.log", "w") as log:
        proc = subprocess.Popen(argv, env=env, cwd=home, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120  # SageMaker allows a container minutes to answer /ping
        while True:
            try:
                if _request(port, "GET", "/ping")[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "/ping never answered"
            time.sleep(0.2)
        x = np.ones((3, 4), np.float32)
        status, answer = _request(
            port,
            "POST",
            "/invocations",
            json.dumps(x.tolist()),
            {"Content-Type": "application/json"},
        )
        assert status == 200, answer
        with torch.inference_mode():
            expected = model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(np.asarray(json.loads(answer)), expected, rtol=1e-5, atol=1e-6)
    finally:
        proc.terminate()
        proc.wait(30)


# kfp.local says that display names, resources and retries do nothing locally: expected
@pytest.mark.filterwarnings("ignore:Task .* no effect in the current local runner:UserWarning")
@pytest.mark.filterwarnings("ignore:You may be attemping to run a task:RuntimeWarning")
def test_a_kfp_step_runs_in_the_image_through_kfps_own_executor(
    image, small, tmp_path, monkeypatch
):
    """The KFP step role: the compiled components name nbscale's image and do not install
    kfp (install_kfp_package=False), so the image's own kfp runs ``kfp.dsl.executor_main``;
    kfp.local runs each component's exact command with the image's python."""
    import yaml
    from kfp import components, local
    from kfp.local import subprocess_task_handler

    from nbscale.backends.kubeflow.images import runtime_image
    from nbscale.pipelines import compile_pipeline
    from tests.support.emulators import kubernetes_secret_volume

    mount = kubernetes_secret_volume(tmp_path / "secret", {"keys.json": keys.export("pipeline")})
    out = Path(compile_pipeline(str(small), "kfp", str(tmp_path / "s.yaml"), key_mount=str(mount)))
    ir, _ = yaml.safe_load_all(out.read_text())
    for executor in ir["deploymentSpec"]["executors"].values():
        container = executor["container"]
        assert container["image"] == runtime_image()
        command = " ".join(container["command"])
        assert "kfp.dsl.executor_main" in command and "pip install" not in command

    python = image["python"]
    real = subprocess_task_handler.replace_python_executable
    monkeypatch.setattr(
        subprocess_task_handler,
        "replace_python_executable",
        lambda command, _executable: real(command, python),
    )
    local.init(
        runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp-root")
    )
    components.load_component_from_file(str(out))(n=5, factor=1.0)
    executed = list((tmp_path / "kfp-root").rglob("step-total/executed"))
    assert executed, "the last step did not run"
    assert "{'sum': 40.0}" in executed[0].read_text()  # 0..4 doubled (10.0) plus squares (30)
