"""KFP step pods get no Istio sidecar (an injected proxy keeps a finished step's pod
running without Kubernetes' native sidecars), and the backend's ``annotations``; with
``istio_sidecar = true`` the sidecar is kept."""

from __future__ import annotations

import yaml

from nbscale.backends.kubeflow import pipeline_compile as kfp_target
from nbscale.backends.kubeflow.manifests import pod_annotations
from nbscale.backends.kubeflow.settings import settings
from nbscale.config import BackendConfig
from nbscale.pipelines.loader import load
from tests.support.pipeline_notebooks import cell, write_notebook


def _compiled(tmp_path, **options) -> dict:
    write_notebook(tmp_path / "a.ipynb", [cell("x = 1")])
    write_notebook(tmp_path / "b.ipynb", [cell("y = x + 1")])
    (tmp_path / "pipeline.yaml").write_text(
        "name: two\nsteps:\n  - {name: a, notebook: a.ipynb}\n"
        "  - {name: b, notebook: b.ipynb, depends_on: [a]}\n"
    )
    out = tmp_path / "two.kfp.yaml"
    kfp_target.compile_pipeline(load(str(tmp_path / "pipeline.yaml")), out, **options)
    _, platform = yaml.safe_load_all(out.read_text())
    return platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_a_step_pod_has_no_sidecar_by_default(tmp_path):
    executors = _compiled(tmp_path)
    assert len(executors) == 2
    for executor in executors.values():
        assert executor["podMetadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}


def test_the_backends_annotations_reach_the_step_pods_and_a_kept_sidecar_is_not_refused(
    tmp_path,
):
    conf = settings(
        BackendConfig("kf", "kubeflow", {"annotations": {"team": "vision"}, "istio_sidecar": True})
    )
    assert pod_annotations(conf) == {"team": "vision"}
    for executor in _compiled(tmp_path, annotations=pod_annotations(conf)).values():
        assert executor["podMetadata"]["annotations"] == {"team": "vision"}
    default = settings(BackendConfig("kf", "kubeflow", {"annotations": {"team": "vision"}}))
    assert pod_annotations(default) == {"team": "vision", "sidecar.istio.io/inject": "false"}
