"""Opt-in: ``%%train`` and ``%deploy`` end to end on a real Kubernetes cluster.

Skipped unless ``NBSCALE_TEST_KUBECONFIG`` names the kubeconfig of a cluster with
Kubeflow Trainer (v2.2, the ``torch-distributed`` ClusterTrainingRuntime), KServe (with
``deploy/kserve/nbscale-runtime.yaml`` applied) and an S3 store the pods can reach (the
README's kubeflow section sets one up with kind and MinIO). Settings, from the
environment:

- ``NBSCALE_TEST_STORAGE``: ``s3://bucket/prefix`` (default ``s3://nbscale/test``)
- ``NBSCALE_TEST_S3_ENDPOINT``: the store as this machine sees it (a port-forward)
- ``NBSCALE_TEST_POD_S3_ENDPOINT``: the store as the pods see it
- ``NBSCALE_TEST_S3_SECRET``: a Secret in the namespace with AWS_ACCESS_KEY_ID and
  AWS_SECRET_ACCESS_KEY (this process uses the same keys from its environment)
- ``NBSCALE_TEST_NAMESPACE`` (default: the context's), ``NBSCALE_TEST_IMAGE`` (an
  image that brings nbscale; without it the runtime wheels are installed in the stock
  PyTorch image from a wheelhouse built here)
"""

from __future__ import annotations

import os

import numpy as np
import pytest

KUBECONFIG = os.environ.get("NBSCALE_TEST_KUBECONFIG")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not KUBECONFIG, reason="NBSCALE_TEST_KUBECONFIG does not name a real cluster"
    ),
]


@pytest.fixture
def real_cluster(nbscale_home, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", KUBECONFIG)
    lines = [
        "[backends.kind]",
        'type = "kubeflow"',
        f'storage = "{os.environ.get("NBSCALE_TEST_STORAGE", "s3://nbscale/test")}"',
        "poll_seconds = 2",
    ]
    for env, key in (
        ("NBSCALE_TEST_S3_ENDPOINT", "endpoint_url"),
        ("NBSCALE_TEST_POD_S3_ENDPOINT", "pod_endpoint_url"),
        ("NBSCALE_TEST_S3_SECRET", "storage_secret"),
        ("NBSCALE_TEST_NAMESPACE", "namespace"),
        ("NBSCALE_TEST_IMAGE", "image"),
        ("NBSCALE_TEST_IMAGE", "serving_image"),
    ):
        if os.environ.get(env):
            lines.append(f'{key} = "{os.environ[env]}"')
    if os.environ.get("NBSCALE_TEST_IMAGE"):
        lines.append("wheelhouse = false")
    nbscale_home.mkdir(parents=True, exist_ok=True)
    (nbscale_home / "config.toml").write_text("\n".join(lines) + "\n")
    return "kind"


def test_a_cell_trains_on_two_nodes_of_the_cluster(real_cluster):
    import torch

    from nbscale.celljob import prepare_cell
    from nbscale.results import load_results
    from nbscale.specs import Entry, JobSpec

    cell = (
        "import torch.distributed as dist\n"
        "t = torch.tensor([float(dist.get_rank() + 1)])\n"
        "dist.all_reduce(t)\n"
        "total = t.item()\n"
    )
    spec = JobSpec(
        entry=Entry("module", "placeholder"), name="kind-cell", backend=real_cluster, nodes=2
    )
    job = prepare_cell(cell, {"torch": torch}, spec, outputs=["total"]).submit()
    record = job.wait(timeout=1800)
    assert record.status == "SUCCEEDED", (record.error, job.logs())
    assert load_results(record) == {"total": 3.0}
    assert "[rank 1]" in job.logs() or job.logs(1)


def test_a_model_is_served_by_kserve_and_answers_v2(real_cluster):
    import torch

    from nbscale.endpoints import deploy

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 4)).eval()
    ep = deploy(model, name="kind-digits", backend=real_cluster, replicas=(1, 2))
    try:
        x = np.random.default_rng(0).random((3, 8), dtype=np.float32)
        with torch.inference_mode():
            expected = model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(ep.predict(x), expected, rtol=1e-5, atol=1e-6)
    finally:
        ep.delete()
