"""Leaving the machine: a cell's bundle through object storage, nodes that are other machines.

Each node is a process with its *own* ``NBSCALE_HOME``, only what a platform gives a pod
(environment, the key as a mounted Secret file, object storage on a moto server), and the
exact command ``nbscale.backends.remote.staging.stage`` writes into a manifest.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from nbscale import keys
from nbscale.backends.remote.staging import collect, stage
from nbscale.celljob import prepare_cell
from nbscale.results import read_results_file
from nbscale.specs import Entry, JobSpec
from nbscale.storage import ObjectStore
from tests.support.emulators import (
    AWS_ENV,
    PLANTED_SECRET,
    container_env,
    free_port,
    grep_tree,
    moto_server,
    mount_secret,
)

CELL = """\
import torch.distributed as dist
t = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(t)
print("rank", dist.get_rank(), "of", dist.get_world_size(), "sees", t.item())
total = t.item() * factor
world = dist.get_world_size()
"""


@pytest.fixture
def s3(monkeypatch):
    with moto_server() as url:
        for key, value in AWS_ENV.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("AWS_ENDPOINT_URL", url)
        boto3.client("s3").create_bucket(Bucket="nb-team")
        yield url


def _prepared(tmp_path: Path, nodes: int = 2):
    import torch

    (tmp_path / "placeholder.py").write_text("")
    spec = JobSpec(entry=Entry.from_path(str(tmp_path / "placeholder.py")), name="two", nodes=nodes)
    prepared = prepare_cell(
        CELL, {"torch": torch, "factor": 10.0}, spec, outputs=["total", "world"]
    )
    prepared.write()
    return prepared


def _nodes(tmp_path, remote, url, nnodes, key_env):
    port = free_port()
    procs = []
    for node in range(nnodes):
        home = tmp_path / f"node-{node}"
        home.mkdir()
        env = container_env(
            home,
            AWS_ENDPOINT_URL=url,
            **AWS_ENV,
            **key_env,
            PET_NNODES=str(nnodes),
            PET_NPROC_PER_NODE="1",
            PET_NODE_RANK=str(node),
            PET_MASTER_ADDR="127.0.0.1",
            PET_MASTER_PORT=str(port),
        )
        argv = [sys.executable if a == "python" else a for a in remote.argv()]
        with open(tmp_path / f"node-{node}.out", "w") as out:  # a pipe left unread would block
            procs.append(
                subprocess.Popen(argv, env=env, cwd=home, stdout=out, stderr=subprocess.STDOUT)
            )
    try:
        for proc in procs:
            proc.wait(240)
    finally:
        for proc in procs:
            proc.kill()
    outs = [(tmp_path / f"node-{node}.out").read_text() for node in range(nnodes)]
    return [p.returncode for p in procs], outs


def test_a_cell_runs_on_two_nodes_that_share_nothing_but_storage_and_the_key(s3, tmp_path):
    prepared = _prepared(tmp_path)
    store = ObjectStore("s3://nb-team/proj", progress=None)
    job_id = "20261201-remote-two"
    remote = stage(job_id, prepared.spec.to_dict(), store)
    assert remote.uploaded and remote.bundle_uri.startswith("s3://nb-team/proj/bundles/sha256/")
    assert not stage(job_id, prepared.spec.to_dict(), store).uploaded  # unchanged: not sent again
    again = _prepared(tmp_path)  # the same cell captured anew makes the same bytes
    assert not stage("other-job", again.spec.to_dict(), store).uploaded
    secret = mount_secret(tmp_path / "secret-volume" / "keys.json", keys.export("bundle"))

    codes, outs = _nodes(tmp_path, remote, s3, 2, {"NBSCALE_KEY_FILE": str(secret)})
    assert codes == [0, 0], outs
    # every node prints its own ranks' lines, prefixed, for the platform's log collector
    assert "[rank 0] rank 0 of 2 sees 3.0" in outs[0]
    assert "[rank 1] rank 1 of 2 sees 3.0" in outs[1]

    info = collect(job_id, store, remote.outputs_uri, 2)
    assert info["nodes"] == 2 and info["exit_code"] == 0 and info["error"] is None
    values = read_results_file(Path(info["job_dir"]) / "outputs" / "results.zip", job_id)
    assert values == {"total": 30.0, "world": 2}

    # the key and the credentials are nowhere: not in a home, the stdout, nor the bucket
    key_hex = keys.load("bundle").hex()
    for node in range(2):
        assert grep_tree(tmp_path / f"node-{node}", key_hex, PLANTED_SECRET) == []
    assert not any(key_hex in o or PLANTED_SECRET in o for o in outs)
    assert key_hex not in json.dumps(remote.argv()) and PLANTED_SECRET not in json.dumps(
        remote.argv()
    )
    client = boto3.client("s3")
    for obj in client.list_objects_v2(Bucket="nb-team")["Contents"]:
        body = client.get_object(Bucket="nb-team", Key=obj["Key"])["Body"].read()
        assert key_hex.encode() not in body and PLANTED_SECRET.encode() not in body, obj["Key"]


@pytest.mark.parametrize("how", ["wrong key", "no key"])
def test_a_node_without_the_right_key_refuses_the_bundle_before_anything_runs(s3, tmp_path, how):
    prepared = _prepared(tmp_path, nodes=1)
    store = ObjectStore("s3://nb-team/proj", progress=None)
    remote = stage("job-bad-key", prepared.spec.to_dict(), store)
    key_env = {}
    if how == "wrong key":
        other = json.dumps({"bundle": "ab" * 32})
        key_env["NBSCALE_KEY_FILE"] = str(mount_secret(tmp_path / "other" / "keys.json", other))
    codes, outs = _nodes(tmp_path, remote, s3, 1, key_env)
    assert codes == [1]
    if how == "wrong key":
        assert "signature does not match" in outs[0]
    else:
        assert "NBSCALE_KEY_FILE" in outs[0] and "NBSCALE_KEY_SECRET_ARN" in outs[0]
    assert "Traceback" not in outs[0]
    assert not list((tmp_path / "node-0" / ".nbscale" / "jobs" / "job-bad-key" / "logs").glob("*"))
    info = collect("job-bad-key", store, remote.outputs_uri, 1)
    assert info["exit_code"] == 1 and "SignatureError" in info["error"]["message"]


def test_a_tampered_object_in_the_store_is_refused(s3, tmp_path):
    prepared = _prepared(tmp_path, nodes=1)
    store = ObjectStore("s3://nb-team/proj", progress=None)
    remote = stage("job-tampered", prepared.spec.to_dict(), store)
    key = remote.bundle_uri.removeprefix("s3://nb-team/")
    boto3.client("s3").put_object(Bucket="nb-team", Key=key, Body=b"PK not the bundle")
    secret = mount_secret(tmp_path / "secret" / "keys.json", keys.export("bundle"))
    codes, outs = _nodes(tmp_path, remote, s3, 1, {"NBSCALE_KEY_FILE": str(secret)})
    assert codes == [1] and "does not match its sha256" in outs[0]


def test_the_model_server_fetches_its_artifact_from_object_storage(s3, tmp_path):
    """The serving runtime given the URI of a model.tar.gz, as a container with its own home
    and the model key as a mounted Secret: it downloads, unpacks, verifies and answers."""
    import http.client
    import tarfile
    import time

    import numpy as np
    import torch

    from nbscale.serving import package

    model = torch.nn.Sequential(torch.nn.Linear(4, 2)).eval()
    art = package(model, tmp_path / "art", "remote")
    with tarfile.open(tmp_path / "model.tar.gz", "w:gz") as tar:
        for path in sorted(art.rglob("*")):
            tar.add(path, arcname=path.relative_to(art).as_posix(), recursive=False)
    uri = ObjectStore("s3://nb-team/models", progress=None).put(tmp_path / "model.tar.gz")
    secret = mount_secret(tmp_path / "secret" / "keys.json", keys.export("model"))
    (tmp_path / "token").write_text("tok")
    home = tmp_path / "pod"
    home.mkdir()
    port = free_port()
    env = container_env(home, AWS_ENDPOINT_URL=s3, **AWS_ENV, NBSCALE_KEY_FILE=str(secret))
    with open(tmp_path / "serve.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nbscale.serving", "--model-dir", uri, "--port", str(port),
             "--token-file", str(tmp_path / "token")],
            env=env, cwd=home, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("GET", "/v2/health/ready")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.2)
        x = np.ones((2, 4), np.float32)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request(
            "POST",
            "/invocations",
            json.dumps(x.tolist()),
            {"Authorization": "Bearer tok", "Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        assert resp.status == 200
        with torch.inference_mode():
            expected = model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(np.asarray(json.loads(resp.read())), expected, rtol=1e-5)
    finally:
        proc.terminate()
        proc.wait(30)
    assert grep_tree(home, PLANTED_SECRET, keys.load("model").hex()) == []
