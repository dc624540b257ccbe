"""The wheelhouses a pod installs are built for the pod (Linux x86_64 manylinux, the
image's Python), never for the machine that builds them; the one image's closure has
kfp for the KFP executor; image names follow nbscale's version."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import nbscale
from nbscale.runtime import wheelhouse


@pytest.fixture
def pip_calls(monkeypatch, nbscale_home):
    calls: list[list[str]] = []

    def fake_pip(*args, env=None):
        calls.append(list(args))
        dest = Path(args[args.index("-d") + 1])
        (dest / "papermill-2.6.0-py3-none-any.whl").write_bytes(b"")

    def fake_wheel(dest: Path) -> Path:
        dest.mkdir(parents=True, exist_ok=True)
        out = dest / f"nbscale-{nbscale.__version__}-py3-none-any.whl"
        out.write_bytes(b"")
        return out

    monkeypatch.setattr(wheelhouse, "_pip", fake_pip)
    monkeypatch.setattr(wheelhouse, "nbscale_wheel", fake_wheel)
    # kfp-server-api (source only) is built by `pip wheel` first: a contract test runs it
    monkeypatch.setattr(wheelhouse, "_source_only_wheels", lambda closure, dest: None)
    return calls


def _option(args: list[str], name: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == name]


@pytest.mark.parametrize("kind", ["step", "serving", "image"])
def test_a_compiled_wheelhouse_is_for_the_pods_platform_and_python(pip_calls, kind):
    wheelhouse.build(kind)
    (download,) = pip_calls
    assert download[0] == "download" and "--only-binary=:all:" in download
    assert _option(download, "--platform") == list(wheelhouse.POD_PLATFORMS)
    assert "manylinux2014_x86_64" in _option(download, "--platform")
    assert _option(download, "--python-version") == [
        f"{sys.version_info.major}.{sys.version_info.minor}"
    ]


def test_an_explicit_target_and_native(pip_calls):
    wheelhouse.build("step", platform="manylinux2014_aarch64", python_version="3.12")
    wheelhouse.build("step", platform="native")
    first, native = pip_calls
    assert _option(first, "--platform") == ["manylinux2014_aarch64"]
    assert _option(first, "--python-version") == ["3.12"]
    assert _option(native, "--platform") == []


def test_the_job_wheelhouse_stays_pure_python(pip_calls):
    wheelhouse.build("job")
    (download,) = pip_calls
    assert _option(download, "--platform") == ["any"] and "--python-version" not in download


def test_the_image_closure_runs_every_role():
    names = {r.split(">")[0].split("=")[0] for r in wheelhouse.CLOSURE["image"]}
    # serving, papermill + ipykernel for notebook steps, kfp for KFP's executor
    assert {"prometheus_client", "papermill", "ipykernel", "kfp", "kfp-kubernetes"} <= names
    assert not names & {"jupyter_server", "notebook", "jupyterlab"}


# -- the default training image follows the Trainer runtime's pinned CUDA ---------------


def _released_runtime(release: str) -> dict:
    """The torch-distributed runtime of a Trainer release (its Helm template, the template
    lines dropped)."""
    import yaml

    from tests.support.kube_schemas import SCHEMAS

    text = (SCHEMAS / "kubeflow-trainer" / release / "runtime-torch-distributed.yaml").read_text()
    lines = [ln for ln in text.splitlines() if "{{" not in ln and "}}" not in ln]
    start = next(i for i, ln in enumerate(lines) if ln.startswith("apiVersion:"))
    return yaml.safe_load("\n".join(lines[start:]))


def test_a_v22_cluster_gets_no_cuda_13_image():
    from nbscale.backends import images
    from nbscale.backends.kubeflow import images as kf

    kernel = images.Versions("2.9", "3.11")
    v22, v23 = _released_runtime("v2.2.1"), _released_runtime("v2.3.0")
    assert kf.cuda_cap(runtime=v22) == "12.8" == kf.cuda_cap("v2.2.1")
    assert kf.cuda_cap(runtime=v23) == "13.0" == kf.cuda_cap("v2.3")
    # the table's pins are the releases' own
    for release, runtime in (("v2.2", v22), ("v2.3", v23)):
        pinned = runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]
        image = pinned["template"]["spec"]["containers"][0]["image"]
        assert kf.table()["trainer_runtimes"][release]["image"] == image
    on_v22 = kf.stock_image(True, "kf", kernel, cuda_max=kf.cuda_cap(runtime=v22))
    assert on_v22 == "pytorch/pytorch:2.9.0-cuda12.8-cudnn9-runtime"
    assert kf.image_cuda(on_v22) == "12.8"
    on_v23 = kf.stock_image(True, "kf", kernel, cuda_max=kf.cuda_cap(runtime=v23))
    assert on_v23 == "pytorch/pytorch:2.9.0-cuda13.0-cudnn9-runtime"
    # no build of the kernel's torch under the cap: one refusal that names the cap
    with pytest.raises(Exception, match=r"up to CUDA 12.4 \(the cluster's Trainer runtime's\)"):
        kf.stock_image(True, "kf", kernel, cuda_max="12.4")


def test_the_runtime_image_is_named_by_nbscales_version():
    from nbscale.backends.kubeflow import images as kf
    from nbscale.backends.kubeflow import pipeline_compile

    assert kf.runtime_image() == f"nbscale/runtime:{nbscale.__version__}"
    assert kf.runtime_image() == pipeline_compile.DEFAULT_IMAGE
