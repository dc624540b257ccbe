"""KServe's deployment modes on the kubeflow backend, against the Kubernetes API emulator.

``deployment_mode`` is KServe's ``serving.kserve.io/deploymentMode`` annotation. Standard
(RawDeployment) runs a Deployment with an HPA: no scale to zero, no canary revisions, no
Knative revision settings, HPA metrics only; each is refused in one message before
anything reaches the cluster. The InferenceService is validated against KServe's CRD.
"""

from __future__ import annotations

import pytest
import yaml

from nbscale.endpoints import deploy
from nbscale.errors import SpecError
from tests.support.kube_schemas import validate
from tests.support.serving import mlp

MODE = "serving.kserve.io/deploymentMode"


def _mode(nbscale_home, mode: str) -> None:
    config = nbscale_home / "config.toml"
    config.write_text(config.read_text() + f'deployment_mode = "{mode}"\n')


def _dry(**kw) -> list[dict]:
    dry = deploy(mlp(), name="digits", backend="kf", dry_run=True, **kw)
    return list(yaml.safe_load_all(dry.text()))


@pytest.mark.parametrize("mode", ["Standard", "RawDeployment"])
def test_standard_mode_is_the_annotation_and_refuses_what_knative_alone_does(
    cluster, kube, nbscale_home, mode
):
    _mode(nbscale_home, mode)
    account, isvc = _dry(replicas=(1, 4), options={"scale_metric": "cpu", "scale_target": 70})
    validate(isvc)
    assert isvc["metadata"]["annotations"][MODE] == mode
    assert isvc["spec"]["predictor"]["scaleMetric"] == "cpu"
    assert account["kind"] == "ServiceAccount"

    before = len(kube.writes())
    refusals = [
        (dict(replicas=(0, 2)), "replicas: scale to zero needs KServe's Knative mode"),
        (
            dict(options={"canary_traffic_percent": 10}),
            "canary: canary rollouts need KServe's Knative mode",
        ),
        (
            dict(options={"scale_metric": "concurrency"}),
            "scale-metric: 'concurrency' scaling is Knative's",
        ),
        (dict(options={"container_concurrency": 4}), "container-concurrency: is a Knative"),
        (dict(options={"timeout_s": 30}), "timeout: is a Knative revision setting"),
    ]
    for kwargs, message in refusals:
        kwargs.setdefault("replicas", (1, 2))
        with pytest.raises(SpecError) as err:
            deploy(mlp(), name="digits", backend="kf", **kwargs)
        assert str(err.value).startswith(message), str(err.value)
        assert f'deployment_mode = "{mode}" in [backends.kf]' in str(err.value)
        assert 'deployment_mode = "Serverless"' in str(err.value)  # the way out
    assert len(kube.writes()) == before


def test_knative_mode_keeps_scale_to_zero_and_concurrency(cluster, nbscale_home):
    _mode(nbscale_home, "Knative")
    _, isvc = _dry(
        replicas=(0, 3), options={"scale_metric": "concurrency", "container_concurrency": 8}
    )
    validate(isvc)
    assert isvc["metadata"]["annotations"][MODE] == "Knative"
    assert isvc["spec"]["predictor"]["minReplicas"] == 0
    assert isvc["spec"]["predictor"]["containerConcurrency"] == 8


def test_an_unknown_mode_is_refused_with_the_known_ones(cluster, nbscale_home):
    _mode(nbscale_home, "ModelMesh")
    with pytest.raises(SpecError, match="deployment_mode"):
        _dry()


def test_scaling_to_zero_in_standard_mode_is_refused_before_anything_is_sent(
    cluster, kube, nbscale_home
):
    from nbscale.backends import get_endpoint_backend
    from nbscale.store import get_store
    from nbscale.store.endpoints import READY, EndpointRecord

    _mode(nbscale_home, "Standard")
    backend = get_endpoint_backend("kf", store=get_store())
    record = EndpointRecord("digits", "kf", "kubeflow", READY, "", 0, "", 1, 2)
    before = len(kube.writes())
    with pytest.raises(SpecError, match="replicas: scale to zero needs KServe's Knative mode"):
        backend.scale(record, 0, 2)
    assert len(kube.writes()) == before
