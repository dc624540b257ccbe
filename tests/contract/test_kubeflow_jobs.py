"""The kubeflow node container contract: the TrainJob's exact node command and environment run as
N local processes with the variables the Trainer torch runtime injects, each with its own home,
the bundle read from the "mounted" ConfigMap (or object storage) and the key from the "mounted"
Secret (in mount namespaces, and network namespaces, where the machine allows); the training
really runs and the outputs come back to the kernel. The cluster is kmock's emulator."""

from __future__ import annotations

import base64
import json
import threading
from pathlib import Path

import pytest
import yaml

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
    NBSCALE_RUNTIME,
    NS,
    _cell,
    _pod_name,
    _trainjob,
    add_settings,
    install_runtime,
    play_trainer,
    run_nodes,
    trainer_pods,
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


RAISES = """\
import os
runs = os.path.join(os.environ["HOME"], "runs")
n = len(open(runs).read()) + 1 if os.path.exists(runs) else 1
open(runs, "a").write("x")
raise ValueError(f"boom in run {n}")
"""


def _raising_cell():
    """A cell that raises, saying which run of its pod it is (a count in the pod's home)."""
    return _cell(outputs=(), nodes=1, source=RAISES)


def kube_log(kube, job) -> str:
    """What the played kubelet holds of the job's node-0 pod log."""
    return "\n".join(line for _, line in kube._logs[(NS, _pod_name(job, 0))])


@pytest.mark.slow
def test_the_stock_runtime_runs_a_raising_cell_seven_times_unless_nbscale_stops_it(
    cluster, kube, tmp_path
):
    """Played as the Trainer and JobSet build it, the stock torch-distributed runtime restarts
    the failed container (OnFailure) until backoffLimit 6 is spent. nbscale, polling, fails
    the job at the first non-zero exit with that run's traceback and deletes the TrainJob, so
    the cell runs once."""
    stray = _raising_cell().submit()  # nobody polls: the runtime has its way
    run = play_trainer(cluster, kube, stray, tmp_path / "stray")
    assert (run.restart_policy, run.backoff_limit) == ("OnFailure", 6)
    assert [code for _, _, code in run.runs] == [1] * 7
    assert "boom in run 7" in kube_log(kube, stray)
    stray.cancel()

    job = _raising_cell().submit()
    played: dict = {}
    thread = threading.Thread(
        target=lambda: played.update(
            run=play_trainer(cluster, kube, job, tmp_path / "job", restart_delay=4)
        ),
        daemon=True,
    )
    thread.start()
    rec = job_handle(job.id).wait(timeout=120)
    thread.join(60)
    assert rec.status == "FAILED"
    assert "boom in run 1" in rec.error, rec.error  # the first run's, not a later one's
    assert len(played["run"].runs) == 1  # never run again
    assert [t for t in cluster.trainjobs(NS) if t["metadata"]["name"] == rec.native_id] == []
    assert "Traceback" in job_handle(job.id).logs(0)


@pytest.mark.slow
def test_nbscales_runtime_fails_a_raising_cell_after_one_run(cluster, kube, tmp_path, nbscale_home):
    """``runtime = "nbscale-torch-distributed"`` (deploy/kubeflow/): restartPolicy Never and
    backoffLimit 0, so the cluster itself runs the cell once, even with nobody polling."""
    install_runtime(cluster, yaml.safe_load(NBSCALE_RUNTIME.read_text()))  # kubectl apply -f
    add_settings(nbscale_home, 'runtime = "nbscale-torch-distributed"\n')
    job = _raising_cell().submit()
    run = play_trainer(cluster, kube, job, tmp_path)
    assert (run.restart_policy, run.backoff_limit) == ("Never", 0)
    assert run.codes == [1] and len(run.runs) == 1
    rec = job_handle(job.id).wait(timeout=60)
    assert rec.status == "FAILED" and "boom in run 1" in rec.error, rec.error


@pytest.mark.slow
def test_two_users_jobs_each_mount_only_their_own_users_key(
    cluster, kube, tmp_path, nbscale_home, monkeypatch
):
    """Alice and Bob, each with the keys of their own nbscale home, submit to one profile
    namespace: each key is in a Secret named after its user, each job's pods (built from the
    runtime and the TrainJob) mount only their user's, and each job's results verify with
    that user's key only."""
    homes = {"alice": nbscale_home, "bob": tmp_path / "bob-home"}
    homes["bob"].mkdir()
    (homes["bob"] / "config.toml").write_text((nbscale_home / "config.toml").read_text())
    jobs = {}
    for user, home in homes.items():
        monkeypatch.setenv("NBSCALE_HOME", str(home))
        monkeypatch.setenv("NBSCALE_USER", user)
        keys.forget_delivered()
        jobs[user] = (_cell(nodes=1).submit(), keys.load("bundle").hex())
    assert jobs["alice"][1] != jobs["bob"][1]  # two homes, two keys
    for user, (job, key_hex) in jobs.items():
        secret = cluster.core.read_namespaced_secret(f"nbscale-keys-{user}", NS)
        assert json.loads(base64.b64decode(secret.data["keys.json"]))["bundle"] == key_hex
        for pod in trainer_pods(_trainjob(cluster, job)):
            mounted = [v["secret"]["secretName"] for v in pod["spec"]["volumes"] if "secret" in v]
            assert mounted == [f"nbscale-keys-{user}"]
    for user, (job, _) in jobs.items():
        monkeypatch.setenv("NBSCALE_HOME", str(homes[user]))
        monkeypatch.setenv("NBSCALE_USER", user)
        assert run_nodes(cluster, kube, job, tmp_path / user) == [0]
        rec = job_handle(job.id).wait(timeout=60)
        assert rec.status == "SUCCEEDED", rec.error
        assert load_results(rec)["world"] == 1
