"""The container's world (issue 19): a job's folder and requirements travel, and nothing else.

The "image" is a fresh venv (no ``--system-site-packages``) holding only what a stock PyTorch
image holds: this machine's Python 3.11 and torch (the image table's pick for the kernel),
and no nbscale (``tests/support/stock_image.py``). The job's exact entry command runs there,
as the platform starts it: Kubeflow's TrainJob command with the Trainer's ``PET_*``
variables, SageMaker's entry point in an ``/opt/ml`` laid out from the request's channels.
The nbscale runtime comes from the runtime wheelhouse, the cell's package from the
requirements wheelhouse (a pure-Python package built here, so nothing is downloaded while
the job runs). The ``%%train`` cell imports a sibling module of the kernel's folder, reads
a file next to it and imports the package only ``--requirements`` provides; the results come
back to the kernel.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from nbscale import keys, paths
from nbscale.celljob import prepare_cell
from nbscale.jobs import job as job_handle
from nbscale.results import load_results
from nbscale.specs import Entry, JobSpec
from tests.support.aws_emulator import Emulator
from tests.support.emulators import AWS_ENV, free_port
from tests.support.kubeflow import _trainjob, run_nodes
from tests.support.stock_image import stock_image_venv

pytestmark = pytest.mark.slow

CELL = """\
import tinyreq
from siblingmod import scale
rows = open("data/labels.csv").read().split()
answer = scale(len(rows))
where = tinyreq.VALUE
import os
print("cwd", os.getcwd(), "rank", os.environ["RANK"], flush=True)
"""
TORCH = "2.13.0"


def _images(home: Path) -> None:
    """The stock image of the kernel's torch and Python, as a user's table entry (the
    shipped tables hold the published images)."""
    folder = home / "images"
    folder.mkdir(parents=True, exist_ok=True)
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    (folder / "kubeflow.json").write_text(json.dumps({"entries": [{
        "name": "stock-test", "image": f"pytorch/pytorch:{TORCH}-stock", "torch": TORCH,
        "python": py, "processors": ["cpu", "gpu"]}]}))  # fmt: skip
    (folder / "sagemaker.json").write_text(json.dumps({"entries": [{
        "name": "stock-test", "scope": "training", "repository": "pytorch-training",
        "torch": TORCH, "python": py, "processors": ["cpu", "gpu"],
        "tag": f"{TORCH}-{{processor}}-py{py.replace('.', '')}"}]}))  # fmt: skip


def _project(root: Path) -> Path:
    """The kernel's working folder: a sibling module, a data file, requirements."""
    root.mkdir(parents=True)
    (root / "siblingmod.py").write_text("def scale(n):\n    return n * 100\n")
    (root / "data").mkdir()
    (root / "data" / "labels.csv").write_text("a\nb\nc\n")
    (root / "checkpoints").mkdir()
    (root / "checkpoints" / "huge.pt").write_bytes(b"\0" * 4096)
    (root / ".gitignore").write_text("checkpoints/\n")
    src = root.parent / "tinyreq-src"
    (src / "tinyreq").mkdir(parents=True)
    (src / "tinyreq" / "__init__.py").write_text("VALUE = 'from the requirements'\n")
    (src / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "tinyreq"\nversion = "0.1.0"\n'
    )
    wheels = root.parent / "local-wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "--no-index", "-w", str(wheels), str(src)],
        check=True, capture_output=True,
    )  # fmt: skip
    (root / "requirements.txt").write_text(f"--no-index\n--find-links {wheels}\ntinyreq==0.1.0\n")
    return root


@pytest.fixture(scope="module")
def runtime_wheels(tmp_path_factory):
    """The ``job`` runtime wheelhouse (nbscale and its closure), built once for the module."""
    import os

    from nbscale.runtime import wheelhouse

    home = tmp_path_factory.mktemp("wheel-home")
    old = os.environ.get("NBSCALE_HOME")
    os.environ["NBSCALE_HOME"] = str(home)
    try:
        folder = wheelhouse.build("job")
    finally:
        if old is None:
            os.environ.pop("NBSCALE_HOME")
        else:
            os.environ["NBSCALE_HOME"] = old
    return folder


def _outputs(job, python: Path):
    rec = job.wait(timeout=60)
    assert rec.status == "SUCCEEDED", rec.error
    values = load_results(rec)
    assert values == {"answer": 300, "where": "from the requirements"}
    check = subprocess.run([python, "-c", "import tinyreq"], capture_output=True)
    assert check.returncode == 0  # installed in the image's venv by the entry command
    return rec


def _cell(monkeypatch, root: Path, **spec_fields):
    monkeypatch.chdir(root)  # the kernel's working folder travels
    spec = JobSpec(entry=Entry("bundle", "<not captured yet>"), name="world", **spec_fields)
    return prepare_cell(CELL, {}, spec, outputs=["answer", "where"])


@pytest.mark.parametrize("pip_index", [False, True], ids=["wheelhouse", "pip-index"])
def test_kubeflow_node_runs_in_a_stock_image_with_the_folder_and_requirements(
    cluster, kube, tmp_path, monkeypatch, nbscale_home, runtime_wheels, pip_index
):
    """``pip_index``: only the file travels and the pod's pip reads it (its --find-links
    is a folder of this machine, which the pod-process can read: no index is contacted)."""
    conf = nbscale_home / "config.toml"
    conf.write_text(
        conf.read_text().replace("wheelhouse = false", "wheelhouse = true")
        + ("pip_index = true\n" if pip_index else "")
    )
    shutil.copytree(runtime_wheels, paths.home() / "wheelhouse" / runtime_wheels.name)
    _images(nbscale_home)
    python = stock_image_venv(tmp_path / "image")
    assert subprocess.run([python, "-c", "import nbscale"], capture_output=True).returncode != 0
    root = _project(tmp_path / "project")
    job = _cell(monkeypatch, root, backend="kf", procs_per_node=2).submit()
    body = _trainjob(cluster, job)
    assert any(e["name"] == "NBSCALE_WHEELHOUSE_URL" for e in body["spec"]["trainer"]["env"])
    codes = run_nodes(cluster, kube, job, tmp_path / "pods", python=python)
    assert codes == [0], job.logs()
    rec = _outputs(job, python)
    log = job_handle(rec.id).logs(0)
    how = "from the index" if pip_index else "1 wheels, offline"
    assert f"requirements installed ({how})" in log
    assert "/code rank 0" in log.replace("\\", "/")  # the folder is the working directory


@pytest.fixture(scope="module")
def emulator():
    emu = Emulator()
    yield emu
    emu.stop()


def test_sagemaker_instance_runs_in_a_stock_image_with_the_folder_and_requirements(
    emulator, tmp_path, monkeypatch, nbscale_home, runtime_wheels
):
    from tests.support.sagemaker import config
    from tests.support.sagemaker_instances import model_tar, start_instances, stdout, wait_all

    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", "mount -t tmpfs none /opt"],
        capture_output=True,
    )
    if probe.returncode != 0:
        pytest.skip("an instance needs its own /opt/ml (a mount namespace)")
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", emulator.url)
    s3 = boto3.client("s3")
    if "nb-team" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket="nb-team")
    keys.forget_delivered()
    _images(nbscale_home)
    python = stock_image_venv(tmp_path / "image")
    root = _project(tmp_path / "project")
    prepared = _cell(
        monkeypatch, root, backend="aws", procs_per_node=2,
        requirements=str(root / "requirements.txt"),
    )  # fmt: skip
    from nbscale.jobs import submit

    prepared.write()
    job = submit(prepared.spec, config=config(wheelhouse=str(runtime_wheels)))
    request = emulator.operations("CreateTrainingJob")[-1]
    channels = {c["ChannelName"] for c in request["InputDataConfig"]}
    assert {"bundle", "spec", "code", "runtime", "requirements"} <= channels
    run = tmp_path / "run"
    procs = start_instances(
        run, request, free_port(), PATH=f"{python.parent}:/usr/local/bin:/usr/bin:/bin"
    )
    assert wait_all(procs, timeout=600) == [0], stdout(run, "algo-1")[-4000:]
    out = stdout(run, "algo-1")
    assert "requirements installed (1 wheels, offline)" in out
    name = request["TrainingJobName"]
    s3.put_object(
        Bucket="nb-team",
        Key=f"proj/jobs/{name}/output/model.tar.gz",
        Body=model_tar([procs[0][1]]),
    )
    emulator.set_training(name, "InProgress", "Training")
    emulator.set_training(name, "Completed", "Completed", BillableTimeInSeconds=5)
    _outputs(job, python)
