"""The manifest checker is strict: a field a CRD does not declare is refused.

A real API server drops an unknown field of a custom resource silently (unless asked for
``fieldValidation=Strict``), so a misspelt field would pass and do nothing. The checker
(tests/support/kube_schemas.py) refuses it, against the CRDs of every supported Kubeflow
Trainer release and KServe's. Each case starts from an object nbscale really generates,
which passes, and changes one field the way a slip of the keyboard or an old API would.
"""

from __future__ import annotations

import jsonschema
import pytest

from nbscale.backends.kubeflow import manifests as mf
from nbscale.backends.kubeflow.settings import settings
from nbscale.config import BackendConfig
from nbscale.specs import Entry, JobSpec
from tests.support import kube_schemas
from tests.support.kube_schemas import TRAINER_RELEASES, unknown_fields, validate

CONF = settings(
    BackendConfig(
        "kf",
        "kubeflow",
        {
            "storage": "s3://nb-bucket/work",
            "wheelhouse": False,
            "namespace": "team-a",
            "image": "registry.example.com/ml/torch:kernel",
        },
    )
)


def trainjob() -> dict:
    spec = JobSpec(entry=Entry("module", "train"), name="fit", backend="kf", nodes=2).to_dict()
    staged = mf.Staged(
        job_id="fit-0a1b2c",
        spec_b64="eyJ9",
        outputs_uri="s3://nb-bucket/work/jobs/fit-0a1b2c/outputs",
        bundle="s3://nb-bucket/work/b/cell.zip",
    )
    return mf.trainjob("fit-0a1b2c", spec, CONF, staged, "team-a")


def inference_service() -> dict:
    opts = mf.ServingOptions(min_replicas=1, max_replicas=2)
    return mf.inference_service(
        "digits", "s3://nb-bucket/work/models/sha256/ab/model.tar.gz", CONF, opts, "team-a"
    )


@pytest.mark.parametrize("release", TRAINER_RELEASES)
def test_nbscales_own_trainjob_passes_every_release(release):
    validate(trainjob(), release=release)
    assert unknown_fields(trainjob(), release) == []


@pytest.mark.parametrize("release", TRAINER_RELEASES)
def test_the_v21_name_podTemplateOverrides_is_refused(release):
    body = trainjob()
    body["spec"]["podTemplateOverrides"] = [
        {"targetJobs": [{"name": "node"}], "spec": {"nodeSelector": {"a": "b"}}}
    ]
    with pytest.raises(jsonschema.ValidationError, match="podTemplateOverrides"):
        validate(body, release=release)
    assert unknown_fields(body, release) == ["spec.podTemplateOverrides"]


@pytest.mark.parametrize("release", TRAINER_RELEASES)
def test_a_misspelt_command_is_refused(release):
    body = trainjob()
    body["spec"]["trainer"]["commandd"] = body["spec"]["trainer"].pop("command")
    with pytest.raises(jsonschema.ValidationError, match="commandd"):
        validate(body, release=release)
    assert unknown_fields(body, release) == ["spec.trainer.commandd"]


def test_storageURI_in_an_inference_service_is_refused():
    body = inference_service()
    validate(body)
    model = body["spec"]["predictor"]["model"]
    model["storageURI"] = model.pop("storageUri")
    with pytest.raises(jsonschema.ValidationError, match="storageURI"):
        validate(body)
    assert unknown_fields(body) == ["spec.predictor.model.storageURI"]


def test_deep_fields_and_metadata_are_strict_too():
    body = trainjob()
    pod = body["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"][
        "replicatedJobs"
    ][0]["template"]["spec"]["template"]["spec"]
    pod["containers"][0]["volumeMount"] = pod["containers"][0].pop("volumeMounts")
    body["metadata"]["label"] = body["metadata"].pop("labels")
    found = unknown_fields(body)
    assert "metadata.label" in found
    assert any(f.endswith("containers[0].volumeMount") for f in found), found
    with pytest.raises(jsonschema.ValidationError):
        validate(body)


def test_maps_and_preserved_fields_stay_open():
    """``additionalProperties`` maps (labels, nodeSelector, resources) and fields that
    preserve unknown fields take any key: strictness refuses only undeclared fields."""
    body = trainjob()
    body["metadata"]["labels"]["anything.example.com/x"] = "y"
    body["spec"]["trainer"]["resourcesPerNode"]["requests"]["example.com/fpga"] = "1"
    validate(body)
    schema = kube_schemas.strict(
        {
            "type": "object",
            "properties": {
                "a": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                      "properties": {"b": {"type": "string"}}},
                "m": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        }
    )  # fmt: skip
    assert schema["additionalProperties"] is False
    assert "additionalProperties" not in schema["properties"]["a"]
    jsonschema.validate({"a": {"b": "x", "c": 1}, "m": {"k": "v"}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"z": 1}, schema)


def test_the_torch_runtime_of_each_release_renders_and_validates():
    images = set()
    for release in TRAINER_RELEASES:
        runtime = kube_schemas.torch_runtime(release)
        validate(runtime, release=release)
        assert runtime["metadata"]["name"] == "torch-distributed"
        (job,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
        (container,) = job["template"]["spec"]["template"]["spec"]["containers"]
        assert job["name"] == container["name"] == "node"
        images.add(container["image"])
    assert len(images) == len(TRAINER_RELEASES)  # each release pins its own image
