"""The kubeflow node container contract: the TrainJob's exact node command and environment run as
N local processes with the variables the Trainer torch runtime injects, each with its own home,
the bundle read from the "mounted" ConfigMap (or object storage) and the key from the "mounted"
Secret (in mount namespaces, and network namespaces, where the machine allows); the training
really runs and the outputs come back to the kernel. The cluster is kmock's emulator."""

from __future__ import annotations

from pathlib import Path

import pytest

from nbscale import keys
from nbscale.backends.kubeflow import manifests as mf
from nbscale.jobs import job as job_handle
from nbscale.results import load_results
from nbscale.specs import Entry, JobSpec
from tests.support.emulators import (
    PLANTED_SECRET,
    grep_tree,
)
from tests.support.kubeflow import (
    _cell,
    _trainjob,
    run_nodes,
)
from tests.support.notebooks import write_notebook


@pytest.mark.slow
@pytest.mark.parametrize(
    "pad, netns",
    [(0, False), (1024 * 1024, False), (0, True)],
    ids=["configmap", "object-storage", "network-namespaces"],
)
def test_the_node_container_runs_the_cell_and_the_outputs_come_home(
    cluster, kube, s3_url, tmp_path, pad, netns
):
    api = cluster
    if netns:
        from tests.support.kube_netns import available

        why = available()
        if why:
            pytest.skip(f"each node in its own network namespace: {why}")
    job = _cell(pad=pad).submit()
    body = _trainjob(api, job)
    bundle_arg = body["spec"]["trainer"]["args"][
        body["spec"]["trainer"]["args"].index("--bundle") + 1
    ]
    assert bundle_arg.startswith("s3://" if pad else mf.BUNDLE_MOUNT)
    if netns:
        from tests.support.kube_netns import node_network

        with node_network(2, int(s3_url.rsplit(":", 1)[1])) as network:
            codes = run_nodes(api, kube, job, tmp_path, network)
    else:
        codes = run_nodes(api, kube, job, tmp_path)
    assert codes == [0, 0], job.logs()
    handle = job_handle(job.id)
    rec = handle.wait(timeout=60)
    assert rec.status == "SUCCEEDED", rec.error
    values = load_results(rec)
    assert values["total"] == 30.0 and values["world"] == 2
    # every node's lines, by rank, through the pod logs
    assert "rank 0 of 2 sees 3.0" in handle.logs(0)
    assert "rank 1 of 2 sees 3.0" in handle.logs(1)
    # the key and the credentials are nowhere in the pods' homes or the kernel's home
    key_hex = keys.load("bundle").hex()
    for node in range(2):
        assert grep_tree(tmp_path / f"pod-{node}" / "home", key_hex, PLANTED_SECRET) == []


def folder_file(job, name: str) -> bytes:
    """A file of the job's folder as it travelled (``code.zip`` in object storage)."""
    import io
    import zipfile

    import boto3

    bucket, _, key = job.record.info["code_uri"].removeprefix("s3://").partition("/")
    data = boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return zf.read(name)


SCRIPT = """\
import sys
import torch
import torch.distributed as dist

dist.init_process_group("gloo")
t = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(t)
print("script rank", dist.get_rank(), "of", dist.get_world_size(), "sum", t.item(), sys.argv[1:])
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_a_script_travels_in_its_folder_and_runs_on_two_nodes(cluster, kube, tmp_path):
    """The script's folder is ``code.zip`` in object storage; each pod unpacks it and runs
    the script there (no ConfigMap)."""
    from nbscale.jobs import submit

    script = tmp_path / "train_sum.py"
    script.write_text(SCRIPT)
    job = submit(
        JobSpec(
            entry=Entry.from_path(str(script)),
            name="script",
            backend="kf",
            nodes=2,
            args=("--lr", "0.1"),
        )
    )
    assert folder_file(job, "train_sum.py") == SCRIPT.encode()
    codes = run_nodes(cluster, kube, job, tmp_path)
    assert codes == [0, 0], job.logs()
    rec = job_handle(job.id).wait(timeout=60)
    assert rec.status == "SUCCEEDED" and rec.exit_code == 0, rec.error
    assert "script rank 1 of 2 sum 3.0 ['--lr', '0.1']" in job.logs(1)


@pytest.mark.slow
def test_a_notebook_job_travels_in_its_folder_and_runs_on_two_nodes(cluster, kube, tmp_path):
    """``nbscale run nb.ipynb --backend kf``: each rank executes the notebook with papermill
    in its pod (its own home), with its parameters; rank 0's executed notebook comes home."""
    from nbscale.jobs import submit

    notebook = tmp_path / "report.ipynb"
    write_notebook(
        notebook,
        "import os\nprint('notebook rank', os.environ['RANK'], 'of', os.environ['WORLD_SIZE'], "
        "'n', n)",
        parameters="n = 1",
    )
    job = submit(
        JobSpec(
            entry=Entry.from_path(str(notebook), parameters={"n": 5}),
            name="nb",
            backend="kf",
            nodes=2,
        )
    )
    assert folder_file(job, "report.ipynb") == notebook.read_bytes()
    codes = run_nodes(cluster, kube, job, tmp_path)
    assert codes == [0, 0], job.logs()
    rec = job_handle(job.id).wait(timeout=60)
    assert rec.status == "SUCCEEDED" and rec.exit_code == 0, rec.error
    assert "notebook rank 1 of 2 n 5" in job.logs(1)
    executed = (Path(rec.info["job_dir"]) / "notebooks" / "rank-0.ipynb").read_text()
    assert "notebook rank 0 of 2 n 5" in executed
