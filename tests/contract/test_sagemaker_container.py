"""The training container contract: the job's exact entry command, run as SageMaker runs it.

Each "instance" is a process in its own mount namespace where a temporary folder is
mounted at ``/opt/ml``, laid out as SageMaker lays it out (``input/config/*.json``,
``input/data/<channel>`` copied from the request's S3 channels, ``model``, ``output``,
``checkpoints``), with its own home and only the environment a training container gets
(the request's ``Environment``, credentials, the region). Two instances train together
(torch distributed across "hosts" algo-1 and algo-2); what they leave in ``/opt/ml/model``
is what SageMaker uploads as ``model.tar.gz``, and the backend brings it home verified.

Whether SageMaker merges every host's ``/opt/ml/model`` into ``model.tar.gz`` or uploads
one host's is not relied on: the results come from algo-1 (rank 0's host), and a failure
on another host is named from that host's node record in its CloudWatch stream when the
archive lacks it (both deliveries are tested).

A spot interruption is SIGTERM to both instances mid-training; SageMaker then uploads
``/opt/ml/checkpoints`` to the CheckpointConfig S3 URI and copies it back to every new
instance. The resumed job ends with the same weights and losses as an uninterrupted one.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import boto3
import pytest

from nbscale import keys
from nbscale.celljob import prepare_cell
from nbscale.errors import SpecError
from nbscale.jobs import submit
from nbscale.results import load_results, read_results_file
from nbscale.specs import Entry, JobSpec
from tests.support import wait_for
from tests.support.emulators import PLANTED_SECRET, free_port, grep_tree
from tests.support.sagemaker import config
from tests.support.sagemaker_instances import (
    model_tar,
    require_mount_namespaces,
    running_emulator,
    start_instances,
    stdout,
    upload_folder,
    use_emulator,
    wait_all,
)

pytestmark = pytest.mark.slow

CELL = """\
import time
import torch
import nbscale.checkpoint as ckpt
from torch.nn.parallel import DistributedDataParallel as DDP
torch.manual_seed(0)
net = torch.nn.Linear(8, 1)
ddp = DDP(net)
opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
state = ckpt.load(model=ddp, optimizer=opt)
start = state.step + 1 if state else 0
losses = list(state.extra["losses"]) if state else []
print("resuming at step", start, flush=True)
X = torch.linspace(-1, 1, 64 * 8).reshape(64, 8)
y = X.sum(1, keepdim=True) * 0.5
for step in range(start, steps):
    idx = torch.randint(0, 64, (16,))
    loss = ((ddp(X[idx]) - y[idx]) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(loss.item())
    ckpt.save(step, model=ddp, optimizer=opt, extra={"losses": losses})
    print("step", step, "loss", round(loss.item(), 6), flush=True)
    time.sleep(delay)
weights = net.weight.detach().clone()
"""


@pytest.fixture(scope="module")
def emulator():
    yield from running_emulator()


@pytest.fixture
def aws(emulator, monkeypatch):
    return use_emulator(emulator, monkeypatch)


@pytest.fixture(scope="module")
def namespaces():
    require_mount_namespaces()


def prepared_job(tmp_path: Path, steps: int, delay: float):
    import torch

    (tmp_path / "placeholder.py").write_text("")
    spec = JobSpec(
        entry=Entry.from_path(str(tmp_path / "placeholder.py")),
        name="sm-ddp",
        backend="aws",
        nodes=2,
        procs_per_node=1,
        max_runtime=600,
    )
    prepared = prepare_cell(
        CELL, {"torch": torch, "steps": steps, "delay": delay}, spec, outputs=["weights", "losses"]
    )
    prepared.write()
    return prepared.spec


def test_two_instances_train_together_and_a_spot_interruption_resumes(aws, namespaces, tmp_path):
    # an image that brings nbscale (the Dockerfile's runtime image): installing the runtime
    # channel here would install over this machine's own nbscale
    cfg = config(
        spot=True,
        max_wait=1200,
        image="123456789012.dkr.ecr.us-east-1.amazonaws.com/nbscale-runtime:0.1.0",
    )
    job = submit(prepared_job(tmp_path, steps=14, delay=0.25), config=cfg)
    request = aws.operations("CreateTrainingJob")[-1]
    name = request["TrainingJobName"]
    assert request["CheckpointConfig"]["LocalPath"] == "/opt/ml/checkpoints"

    # 1. uninterrupted: the reference run
    ref_root = tmp_path / "reference"
    ref = start_instances(ref_root, request, free_port())
    assert wait_all(ref) == [0, 0], stdout(ref_root, "algo-1") + stdout(ref_root, "algo-2")
    ref_model = ref[0][1] / "model"
    assert (ref_model / "results.zip").is_file() and (ref_model / "nodes" / "0.json").is_file()
    assert (ref[1][1] / "model" / "nodes" / "1.json").is_file()
    out1 = stdout(ref_root, "algo-1")
    assert "[rank 0] step 13 loss" in out1 and "[rank 1] step 13 loss" in stdout(ref_root, "algo-2")
    reference = read_results_file(ref_model / "results.zip", job.id)

    # 2. interrupted mid-training (SIGTERM to both instances, as a spot reclaim does)
    run_root = tmp_path / "interrupted"
    port = free_port()
    first = start_instances(run_root, request, port)
    ckpts = first[0][1] / "checkpoints"
    wait_for(
        lambda: any(p.name >= "ckpt-0000000004.pt" for p in ckpts.glob("ckpt-*.pt")),
        timeout=240,
        what="a checkpoint of step 4",
    )
    for proc, _ in first:
        proc.send_signal(signal.SIGTERM)
    codes = wait_all(first, timeout=120)
    assert codes != [0, 0]
    assert "step 13" not in stdout(run_root, "algo-1")
    # SageMaker uploads every instance's checkpoints to the S3 URI...
    for _, opt_ml in first:
        upload_folder(opt_ml / "checkpoints", request["CheckpointConfig"]["S3Uri"])

    # 3. ...and new instances start with them: the job resumes where it was
    resumed_root = tmp_path / "resumed"
    second = start_instances(resumed_root, request, free_port())
    assert wait_all(second) == [0, 0], stdout(resumed_root, "algo-1")
    out = stdout(resumed_root, "algo-1")
    resumed_at = int(out.split("resuming at step ")[1].split()[0])
    assert resumed_at >= 5, out
    assert f"[rank 0] step {resumed_at - 1} loss" not in out  # nothing trained twice

    # SageMaker uploads /opt/ml/model as model.tar.gz; whether it merges every host's folder
    # or takes one host's is not relied on: here only algo-1's, which is all the driver needs
    boto3.client("s3").put_object(
        Bucket="nb-team",
        Key=f"proj/jobs/{name}/output/model.tar.gz",
        Body=model_tar([second[0][1]]),
    )
    aws.set_training(name, "InProgress", "Training")
    aws.set_training(name, "InProgress", "Interrupted", "The spot instance was interrupted")
    aws.set_training(name, "InProgress", "Training")
    aws.set_training(name, "Completed", "Completed", BillableTimeInSeconds=41)
    record = job.wait(timeout=30)
    assert record.status == "SUCCEEDED", record.error
    got = load_results(record)
    assert len(got["losses"]) == 14
    assert got["losses"] == pytest.approx(reference["losses"], rel=1e-6, abs=1e-9)
    import torch

    assert torch.allclose(got["weights"], reference["weights"], rtol=1e-6, atol=1e-8)

    # the key and the credentials are in no instance's home, stdout or model folder
    key_hex = keys.load("bundle").hex()
    for root in (ref_root, run_root, resumed_root):
        assert grep_tree(root, key_hex, PLANTED_SECRET) == []


def test_a_script_job_runs_from_its_code_channel_with_its_secret_env(
    aws, namespaces, tmp_path, monkeypatch
):
    import hashlib

    value = "s3cr3t-" + "v" * 24
    monkeypatch.setenv("MY_API_TOKEN", value)
    script = tmp_path / "train.py"
    script.write_text(
        "import hashlib, os, sys\n"
        "import torch.distributed as dist\n"
        "dist.init_process_group('gloo')\n"
        "print('hello from', dist.get_rank(), 'of', dist.get_world_size(), sys.argv[1:])\n"
        "print('token', hashlib.sha256(os.environ['MY_API_TOKEN'].encode()).hexdigest())\n"
        "dist.destroy_process_group()\n"
    )
    spec = JobSpec(
        entry=Entry.from_path(str(script)),
        backend="aws",
        procs_per_node=2,
        args=("--epochs", "3"),
        secret_env=("MY_API_TOKEN",),
    )
    cfg = config(image="123456789012.dkr.ecr.us-east-1.amazonaws.com/nbscale-runtime:0.1.0")
    submit(spec, config=cfg)
    request = aws.operations("CreateTrainingJob")[-1]
    root = tmp_path / "run"
    procs = start_instances(root, request, free_port())
    assert wait_all(procs) == [0], stdout(root, "algo-1")
    out = stdout(root, "algo-1")
    assert "[rank 0] hello from 0 of 2 ['--epochs', '3']" in out, out
    assert "[rank 1] hello from 1 of 2 ['--epochs', '3']" in out, out
    record = json.loads((procs[0][1] / "model" / "nodes" / "0.json").read_text())
    assert record["exit_code"] == 0 and record["errors"] == []
    # the secret reached every rank through Secrets Manager, and no file or log holds it
    digest = hashlib.sha256(value.encode()).hexdigest()
    assert f"[rank 0] token {digest}" in out and f"[rank 1] token {digest}" in out
    assert "NBSCALE_ENV_SECRET_ARN" in request["Environment"]
    assert value not in json.dumps(request)
    assert grep_tree(root, value) == []


FAILING = """\
import torch
import torch.distributed as dist
t = torch.ones(1)
dist.all_reduce(t)
if dist.get_rank() == 1:
    raise ValueError("bad shard on rank 1")
dist.all_reduce(t)
total = t.item()
"""


def test_a_failure_on_the_second_host_is_named_whichever_model_folders_are_uploaded(
    aws, namespaces, tmp_path
):
    import torch

    from tests.support.sagemaker import put_logs

    (tmp_path / "placeholder.py").write_text("")
    spec = JobSpec(
        entry=Entry.from_path(str(tmp_path / "placeholder.py")),
        name="sm-fail",
        backend="aws",
        nodes=2,
        procs_per_node=1,
        max_runtime=600,
    )
    prepared = prepare_cell(FAILING, {"torch": torch}, spec, outputs=["total"])
    prepared.write()
    cfg = config(image="123456789012.dkr.ecr.us-east-1.amazonaws.com/nbscale-runtime:0.1.0")
    merged = submit(prepared.spec, config=cfg)
    merged_request = aws.operations("CreateTrainingJob")[-1]
    alone = submit(prepared.spec, config=cfg)
    alone_name = aws.operations("CreateTrainingJob")[-1]["TrainingJobName"]

    root = tmp_path / "run"
    procs = start_instances(root, merged_request, free_port())
    codes = wait_all(procs)
    out1, out2 = stdout(root, "algo-1"), stdout(root, "algo-2")
    assert 0 not in codes, out1 + out2
    assert "[rank 1] ValueError: bad shard on rank 1" in out2 or "bad shard on rank 1" in out2
    # each host: its record on stdout (CloudWatch), a failed node's cause for FailureReason
    assert "nbscale: node-record {" in out1 and "nbscale: node-record {" in out2
    (algo1, algo1_ml), (_, algo2_ml) = procs
    cause2 = (algo2_ml / "output" / "failure").read_text()
    assert cause2.startswith("rank 1: ValueError: bad shard on rank 1"), cause2
    # SageMaker reports one host's failure file; algo-1's is the secondary error of rank 0
    reason = "AlgorithmError: " + (algo1_ml / "output" / "failure").read_text()
    assert "rank 0" in reason

    # 1. every host's /opt/ml/model merged into model.tar.gz: nodes/1.json is there
    deliveries = [(merged, [algo1_ml, algo2_ml]), (alone, [algo1_ml])]
    # 2. only algo-1's folder uploaded: rank 1's record comes from algo-2's log stream
    for host, text in ((1, out1), (2, out2)):
        put_logs(alone_name, host, text.splitlines())
    for job, folders in deliveries:
        name = job.record.native_id
        boto3.client("s3").put_object(
            Bucket="nb-team",
            Key=f"proj/jobs/{name}/output/model.tar.gz",
            Body=model_tar(folders),
        )
        aws.set_training(name, "InProgress", "Training")
        aws.set_training(name, "Failed", "Failed", FailureReason=reason)
        record = job.wait(timeout=60)
        assert record.status == "FAILED"
        assert record.error.startswith("rank 1: bad shard on rank 1"), (name, record.error)
        assert record.failed_rank == 1
        assert "ValueError: bad shard on rank 1" in record.info["traceback"]
    names = [n.name for n in (algo2_ml / "model" / "nodes").iterdir()]
    assert names == ["1.json"]  # what the merged archive had and algo-1's alone lacks


def test_a_notebook_job_runs_in_a_stock_image_with_the_notebook_closure(aws, namespaces, tmp_path):
    """``nbscale run nb.ipynb --backend aws`` on a stock PyTorch image: the runtime channel is
    the step closure (papermill, ipykernel), installed offline by the exact entry command in
    the instance's own venv and home; each rank executes the notebook with its parameters,
    and rank 0's executed notebook comes back with the job."""
    from nbscale.runtime import wheelhouse
    from tests.support.notebooks import code, write_notebook
    from tests.support.stock_image import stock_image_venv

    notebook = tmp_path / "analysis.ipynb"
    write_notebook(
        notebook,
        code("n = 1", "parameters"),
        code("import os\nrank = int(os.environ['RANK'])\nprint('rank', rank, 'of', "
             "os.environ['WORLD_SIZE'], 'squares', n * n)"),
    )  # fmt: skip
    wheels = wheelhouse.build("step", tmp_path / "wheels")
    spec = JobSpec(
        entry=Entry.from_path(str(notebook), parameters={"n": 7}),
        name="sm-nb",
        backend="aws",
        procs_per_node=2,
    )
    # a wheelhouse without papermill cannot run a notebook: said before anything is sent
    created = len(aws.operations("CreateTrainingJob"))  # the emulator outlives one test
    with pytest.raises(SpecError, match="no papermill wheel"):
        submit(spec, config=config())
    assert len(aws.operations("CreateTrainingJob")) == created
    job = submit(spec, config=config(wheelhouse=str(wheels)))
    request = aws.operations("CreateTrainingJob")[-1]
    channels = {c["ChannelName"] for c in request["InputDataConfig"]}
    assert {"spec", "code", "runtime"} <= channels and "bundle" not in channels

    python = stock_image_venv(tmp_path / "image")  # torch and numpy, no nbscale, no papermill
    check = subprocess.run([python, "-c", "import papermill"], capture_output=True)
    assert check.returncode != 0
    root = tmp_path / "run"
    procs = start_instances(
        root, request, free_port(), PATH=f"{python.parent}:/usr/local/bin:/usr/bin:/bin"
    )
    assert wait_all(procs, timeout=600) == [0], stdout(root, "algo-1")[-4000:]
    out = stdout(root, "algo-1")
    assert "[rank 0] rank 0 of 2 squares 49" in out and "[rank 1] rank 1 of 2 squares 49" in out
    opt_ml = procs[0][1]
    assert (opt_ml / "model" / "notebooks" / "rank-0.ipynb").is_file()
    home = root / "algo-1" / "home"
    assert (home / ".nbscale" / "jobs" / job.id / "notebooks" / "rank-1.ipynb").is_file()

    name = request["TrainingJobName"]
    boto3.client("s3").put_object(
        Bucket="nb-team",
        Key=f"proj/jobs/{name}/output/model.tar.gz",
        Body=model_tar([opt_ml]),
    )
    aws.set_training(name, "InProgress", "Training")
    aws.set_training(name, "Completed", "Completed", BillableTimeInSeconds=12)
    record = job.wait(timeout=60)
    assert record.status == "SUCCEEDED", record.error
    executed = json.loads((Path(record.info["job_dir"]) / "notebooks" / "rank-0.ipynb").read_text())
    text = json.dumps(executed["cells"])
    assert "rank 0 of 2 squares 49" in text and '"n = 7' in text  # papermill's injected cell
