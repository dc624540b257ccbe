"""Issue 19: a job in a user's own image whose Python or torch is not the kernel's fails at
container start with one line naming both sides, before anything is unpickled.

The kernel-side bundle records other versions than this machine's (it is signed with the
home's key, as the kernel signs it); the training job's exact entry command runs as
SageMaker runs it (tests/contract/test_sagemaker_container.py's instance: its own
``/opt/ml`` and home, only the request's environment)."""

from __future__ import annotations

import platform

import pytest

from nbscale import bundle
from nbscale.celljob import prepare_cell
from nbscale.jobs import submit
from nbscale.runtime.cell import KIND, here_versions
from nbscale.specs import Entry, JobSpec
from tests.support.emulators import free_port
from tests.support.sagemaker import config
from tests.support.sagemaker_instances import (
    require_mount_namespaces,
    running_emulator,
    start_instances,
    stdout,
    use_emulator,
    wait_all,
)

pytestmark = pytest.mark.slow

OWN_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/nbscale-runtime:0.1.0"


@pytest.fixture(scope="module")
def emulator():
    yield from running_emulator()


@pytest.fixture
def aws(emulator, monkeypatch):
    return use_emulator(emulator, monkeypatch)


@pytest.fixture(scope="module")
def namespaces():
    require_mount_namespaces()


def kernel_bundle(tmp_path, versions: dict[str, str], backend: str = "aws") -> JobSpec:
    """A %%train cell's spec whose bundle says it was made with ``versions``."""
    (tmp_path / "placeholder.py").write_text("")
    spec = JobSpec(entry=Entry.from_path(str(tmp_path / "placeholder.py")), backend=backend)
    prepared = prepare_cell("total = factor * 3\n", {"factor": 2}, spec, outputs=["total"])
    prepared.write()
    path = prepared.spec.entry.target
    found = bundle.read(path, KIND)
    manifest = {k: v for k, v in found.manifest.items() if k not in ("format", "parts")}
    bundle.write(path, {**manifest, "versions": {**manifest["versions"], **versions}}, found.parts)
    return prepared.spec


@pytest.mark.parametrize(
    "made",
    [
        {"python": "3.9.18"},  # another Python minor
        {"torch": "2.1.2"},  # another torch minor
    ],
    ids=["python", "torch"],
)
def test_a_bundle_from_other_versions_fails_at_container_start_in_one_line(
    aws,  # noqa: F811 - the fixture imported above
    namespaces,  # noqa: F811
    tmp_path,
    made,
):
    submit(kernel_bundle(tmp_path, made), config=config(image=OWN_IMAGE))
    request = aws.operations("CreateTrainingJob")[-1]
    root = tmp_path / "run"
    procs = start_instances(root, request, free_port())
    assert wait_all(procs) == [1]
    out = stdout(root, "algo-1")
    here = here_versions()
    label, theirs = next(iter(made.items()))
    name = {"python": "Python", "torch": "torch"}[label]
    line = (
        f"nbscale: cannot start: VersionMismatch: the cell was captured with {name} {theirs} "
        f"but this container has {name} {here[label]}; pickled values may not load, so "
        "nothing was unpickled"
    )
    assert line in out, out
    assert [x for x in out.splitlines() if "VersionMismatch" in x and "node-record" not in x] == [
        x for x in out.splitlines() if x.startswith(line)
    ]
    assert "Traceback" not in out and "UnpicklingError" not in out
    assert "[rank " not in out  # no rank started
    # SageMaker's FailureReason: the same cause, from /opt/ml/output/failure
    failure = (procs[0][1] / "output" / "failure").read_text()
    assert failure.startswith(f"VersionMismatch: the cell was captured with {name} {theirs}")
    assert platform.python_version() == here["python"]


def test_a_kubeflow_node_refuses_a_bundle_from_another_torch_in_one_line(cluster, kube, tmp_path):
    """The same check on Kubeflow: the TrainJob's exact node command with the PET_* variables
    the Trainer injects (tests/support/kubeflow.py plays the controller and the kubelet); the
    job fails with the one line as its error, and no rank starts."""
    from nbscale.jobs import job as job_handle
    from tests.support.kubeflow import run_nodes

    made = {"torch": "2.1.2"}
    conf = cluster  # the test's API client; the kf backend is configured by the fixture
    spec = kernel_bundle(tmp_path, made, backend="kf")
    handle = submit(spec)
    assert run_nodes(conf, kube, handle, tmp_path) == [1]
    record = job_handle(handle.id).wait(timeout=60)
    here = here_versions()
    assert record.status == "FAILED"
    assert record.error.startswith(
        f"VersionMismatch: the cell was captured with torch 2.1.2 but this container has torch "
        f"{here['torch']}"
    ), record.error
