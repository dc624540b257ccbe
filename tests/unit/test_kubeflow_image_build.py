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
