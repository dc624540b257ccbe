"""Issue 19 on Kubeflow, against the Kubernetes API emulator: no pytorch/pytorch image for
the kernel's versions is refused before anything reaches the cluster; a user's table entry
is the TrainJob's image, and a job on an 8-GPU node type asks for its 8 GPUs and runs 8
processes (also what the store records)."""

from __future__ import annotations

import json

import pytest

from nbscale.backends import images
from nbscale.errors import SpecError
from nbscale.jobs import dry_run_plan, submit
from nbscale.specs import Entry, JobSpec
from nbscale.store import get_store
from nbscale.store.jobs import get_job
from tests.support.kubeflow import NS


@pytest.fixture
def stock(cluster, nbscale_home, monkeypatch):
    """The ``kf`` backend without an image of its own, for a kernel on torch 2.13 / 3.11."""
    config = nbscale_home / "config.toml"
    lines = [x for x in config.read_text().splitlines() if not x.startswith("image = ")]
    config.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(images, "kernel_versions", lambda: images.Versions("2.13", "3.11"))
    return cluster


def test_no_image_for_the_kernel_is_refused_before_anything_is_sent(stock, kube):
    before = len(kube.writes())
    with pytest.raises(SpecError) as err:
        submit(JobSpec(entry=Entry("module", "train"), backend="kf"))
    text = str(err.value)
    assert text.startswith(
        "image: no pytorch/pytorch image has the kernel's torch 2.13 and Python 3.11 (cpu)"
    )
    assert "nearest: pytorch/pytorch:2.9.0-cuda13.0-cudnn9-runtime (torch 2.9" in text
    assert 'set image = "..." in [backends.kf] (or --image)' in text
    assert len(kube.writes()) == before
    assert stock.trainjobs(NS) == []


def test_a_users_entry_is_the_image_and_an_8_gpu_node_runs_8_processes(stock, kube, nbscale_home):
    (nbscale_home / "images").mkdir()
    (nbscale_home / "images" / "kubeflow.json").write_text(
        json.dumps(
            {
                "entries": [
                    {
                        "name": "ours",
                        "image": "registry.example.com/ml/torch:2.13",
                        "torch": "2.13.0",
                        "python": "3.11",
                        "processors": ["cpu", "gpu"],
                    }
                ]
            }
        )
    )
    job = submit(
        JobSpec(entry=Entry("module", "train"), backend="kf", instance_type="p4d.24xlarge")
    )
    (body,) = stock.trainjobs(NS)
    trainer = body["spec"]["trainer"]
    assert trainer["image"] == "registry.example.com/ml/torch:2.13"
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "8"
    assert trainer["numProcPerNode"] == 8
    stored = get_job(get_store(), job.id).spec
    assert (stored["procs_per_node"], stored["gpus_per_proc"]) == (8, 1)


# -- nbscale's own image: the serving runtime takes it as a parameter --------------------


def test_the_serving_runtime_takes_the_image_as_a_kustomize_parameter(tmp_path):
    """``kubectl apply -k deploy/kserve`` renders the ClusterServingRuntime with the image
    the kustomization names; by default nbscale's own image of this version."""
    import shutil
    import subprocess

    import yaml

    import nbscale
    from nbscale.backends.kubeflow.images import runtime_image
    from tests.support import REPO
    from tests.support.kube_schemas import validate

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")

    def render(folder) -> dict:
        out = subprocess.run(
            [kubectl, "kustomize", str(folder)], capture_output=True, text=True, check=True
        ).stdout
        (doc,) = yaml.safe_load_all(out)
        validate(doc)
        return doc

    default = render(REPO / "deploy" / "kserve")
    (container,) = default["spec"]["containers"]
    assert container["image"] == runtime_image() == f"nbscale/runtime:{nbscale.__version__}"
    # the file alone names the same image (kubectl apply -f)
    plain = yaml.safe_load((REPO / "deploy" / "kserve" / "nbscale-runtime.yaml").read_text())
    assert plain["spec"]["containers"][0]["image"] == runtime_image()

    # a pushed image, set as `kustomize edit set image` writes it
    copy = tmp_path / "kserve"
    shutil.copytree(REPO / "deploy" / "kserve", copy)
    kustomization = yaml.safe_load((copy / "kustomization.yaml").read_text())
    (entry,) = kustomization["images"]
    entry.update(newName="registry.example.com/ml/nbscale-runtime", newTag="0.1.0-rc1")
    (copy / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    (container,) = render(copy)["spec"]["containers"]
    assert container["image"] == "registry.example.com/ml/nbscale-runtime:0.1.0-rc1"
    assert container["command"] == ["python", "-m", "nbscale.serving"]


@pytest.mark.parametrize(
    ("release", "image"),
    [
        # v2.2's runtime pins CUDA 12.8: a CUDA 13 build would need a driver >= 580
        ("v2.2.1", "pytorch/pytorch:2.9.0-cuda12.8-cudnn9-runtime"),
        ("v2.3.0", "pytorch/pytorch:2.9.0-cuda13.0-cudnn9-runtime"),
    ],
)
def test_the_stock_gpu_image_never_has_a_newer_cuda_than_the_clusters_runtime(
    cluster, nbscale_home, monkeypatch, release, image
):
    """The Trainer runtime read from the cluster sets the newest CUDA the default image
    may have; the kernel's torch 2.9 has builds for CUDA 12.8 and 13.0."""
    from tests.support.kube_emulator import KubeEmulator

    emu = KubeEmulator(trainer_release=release)
    try:
        config = nbscale_home / "config.toml"
        text = "\n".join(x for x in config.read_text().splitlines() if not x.startswith("image = "))
        config.write_text(text + "\n")
        monkeypatch.setenv("KUBECONFIG", str(emu.kubeconfig(nbscale_home / "kubeconfig", NS)))
        monkeypatch.setattr(images, "kernel_versions", lambda: images.Versions("2.9", "3.11"))
        plan = dry_run_plan(JobSpec(entry=Entry("module", "train"), backend="kf", gpus_per_proc=1))
        (trainjob,) = [d for d in plan.documents if d["kind"] == "TrainJob"]
        assert trainjob["spec"]["trainer"]["image"] == image
    finally:
        emu.stop()
