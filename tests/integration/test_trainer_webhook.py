"""The emulated API server admits TrainJobs as a cluster with Kubeflow Trainer does.

tests/support/kube_emulator.py ports the checks of the Trainer v2.2 validating webhook
(pkg/webhooks, pkg/runtime/core, the jobset and torch plugins): the named runtime exists,
runtimePatches touch only replicated jobs and containers the runtime has and set no env on
its own containers, no reserved torchrun variable (``PET_*``) is set by the user, the
patch's manager is domain-prefixed, runtimePatches stay as they are while the TrainJob
runs. A refusal is the API server's answer to a webhook's denial: a ``Status`` with code
403, reason Forbidden, message ``admission webhook "validator.trainjob..." denied the
request: ...``. Before the webhook: strict decoding (400) and the CRD's schema and CEL
rules (422). nbscale's own TrainJob passes under each supported release, and when the
cluster refuses one, nbscale says so in one message that carries the webhook's reason.
"""

from __future__ import annotations

import copy
import json

import kubernetes
import pytest

from nbscale.errors import NbscaleError
from nbscale.jobs import job as job_handle
from nbscale.jobs import jobs
from tests.support.kube_emulator import KubeApi, KubeEmulator
from tests.support.kube_schemas import TRAINER_RELEASES, torch_runtime
from tests.support.kubeflow import NS, _cell, add_settings
from tests.unit.test_kube_strict_schemas import trainjob

GROUP, VERSION = "trainer.kubeflow.org", "v1alpha1"
DENIED = 'admission webhook "validator.trainjob.trainer.kubeflow.org" denied the request: '


@pytest.fixture(params=TRAINER_RELEASES)
def emulated(request):
    emu = KubeEmulator(trainer_release=request.param)
    yield KubeApi(emu.url), emu
    emu.stop()


def create(api: KubeApi, body: dict, **kw) -> dict:
    return api.custom.create_namespaced_custom_object(GROUP, VERSION, NS, "trainjobs", body, **kw)


def refused(api: KubeApi, body: dict, code: int, **kw) -> dict:
    with pytest.raises(kubernetes.client.exceptions.ApiException) as info:
        create(api, body, **kw)
    assert info.value.status == code
    status = json.loads(info.value.body)
    assert status["kind"] == "Status" and status["status"] == "Failure"
    assert status["code"] == code
    return status


def pod_patch(body: dict) -> dict:
    return body["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"][
        "replicatedJobs"
    ][0]["template"]["spec"]["template"]["spec"]


def named(body: dict, name: str) -> dict:
    body = copy.deepcopy(body)
    body["metadata"]["name"] = name
    return body


def test_nbscales_trainjob_is_admitted_and_stamped(emulated):
    api, _ = emulated
    made = create(api, trainjob())
    (patch,) = made["spec"]["runtimePatches"]
    assert patch["manager"] == "nbscale.io/nbscale" and patch["time"].endswith("Z")


def test_the_webhooks_rules_each_refuse_with_403(emulated):
    api, _ = emulated
    base = trainjob()

    body = named(base, "no-runtime")
    body["spec"]["runtimeRef"]["name"] = "torch-missing"
    status = refused(api, body, 403)
    assert status["reason"] == "Forbidden"
    assert status["message"].startswith(DENIED)
    assert (
        'clustertrainingruntimes.trainer.kubeflow.org "torch-missing" not found'
        in (status["message"])
    )
    assert "must be created before the TrainJob is created" in status["message"]

    body = named(base, "pet-env")
    body["spec"]["trainer"]["env"] += [
        {"name": "PET_NNODES", "value": "4"},
        {"name": "PET_MASTER_PORT", "value": "29500"},
    ]
    message = refused(api, body, 403)["message"]
    assert message.startswith(DENIED + "spec.trainer.env: Invalid value: ")
    assert message.endswith(
        "must not have reserved envs, invalid envs configured: [PET_MASTER_PORT PET_NNODES]"
    )

    body = named(base, "bare-manager")
    body["spec"]["runtimePatches"][0]["manager"] = "nbscale"
    assert (
        'must be a domain-prefixed path (such as "acme.io/foo")'
        in (refused(api, body, 403)["message"])
    )

    body = named(base, "wrong-container")
    pod_patch(body)["containers"][0]["name"] = "trainer"
    assert (
        "must not have container that doesn't exist in the runtime job node"
        in (refused(api, body, 403)["message"])
    )

    body = named(base, "patched-env")
    pod_patch(body)["containers"][0]["env"] = [{"name": "A", "value": "1"}]
    assert (
        "must not have envs for the dataset-initializer, model-initializer, node containers"
        in (refused(api, body, 403)["message"])
    )

    body = named(base, "wrong-job")
    body["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][
        0
    ]["name"] = "worker"
    assert (
        "must not have replicated job that doesn't exist in the runtime job template"
        in (refused(api, body, 403)["message"])
    )

    # two problems at once: both said, as Go's aggregate error lists them
    body = named(base, "two-problems")
    body["spec"]["runtimePatches"][0]["manager"] = "nbscale"
    body["spec"]["trainer"]["env"].append({"name": "PET_NODE_RANK", "value": "0"})
    message = refused(api, body, 403)["message"]
    assert message.startswith(DENIED + "[") and message.count("Invalid value") == 2
    # nothing refused was stored
    names = [t["metadata"]["name"] for t in api.trainjobs(NS)]
    assert names == []


def test_a_namespaced_training_runtime_must_exist_in_the_namespace(emulated):
    api, emu = emulated
    body = trainjob()
    body["spec"]["runtimeRef"] = {"apiGroup": GROUP, "kind": "TrainingRuntime", "name": "mine"}
    message = refused(api, body, 403)["message"]
    assert 'trainingruntimes.trainer.kubeflow.org "mine" not found' in message
    assert "spec.runtimeRef" in message
    rt = torch_runtime(emu.trainer_release)
    rt.update(kind="TrainingRuntime")
    rt["metadata"].update(name="mine", namespace=NS)
    api.custom.create_namespaced_custom_object(GROUP, VERSION, NS, "trainingruntimes", rt)
    assert create(api, body)["metadata"]["name"] == body["metadata"]["name"]


def test_runtime_patches_are_frozen_while_the_trainjob_runs(emulated):
    api, _ = emulated
    name = create(api, trainjob())["metadata"]["name"]
    patches = copy.deepcopy(trainjob()["spec"]["runtimePatches"])
    patches[0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"][
        "template"
    ]["spec"]["nodeSelector"] = {"a": "b"}
    with pytest.raises(kubernetes.client.exceptions.ApiException) as info:
        api.custom.patch_namespaced_custom_object(
            GROUP, VERSION, NS, "trainjobs", name, {"spec": {"runtimePatches": patches}}
        )
    assert info.value.status == 403
    assert "RuntimePatches can only be modified when the TrainJob is suspended" in info.value.body
    # suspended first: allowed
    api.custom.patch_namespaced_custom_object(
        GROUP, VERSION, NS, "trainjobs", name, {"spec": {"suspend": True}}
    )
    api.custom.patch_namespaced_custom_object(
        GROUP, VERSION, NS, "trainjobs", name, {"spec": {"runtimePatches": patches}}
    )


def test_decoding_and_schema_come_before_the_webhook(emulated):
    api, emu = emulated
    body = named(trainjob(), "typo")
    body["spec"]["trainer"]["commandd"] = body["spec"]["trainer"].pop("command")
    status = refused(api, body, 400)
    assert status["reason"] == "BadRequest"
    assert status["message"] == (
        'TrainJob in version "v1alpha1" cannot be handled as a TrainJob: strict decoding '
        'error: unknown field "spec.trainer.commandd"'
    )
    body = named(trainjob(), "old-name")
    body["spec"]["podTemplateOverrides"] = []
    assert 'unknown field "spec.podTemplateOverrides"' in refused(api, body, 400)["message"]
    # what a real server does by default (Warn): the field is dropped, a warning kept
    made = create(api, named(body, "warned"), field_validation="Warn")
    assert "podTemplateOverrides" not in made["spec"]
    assert emu.emulator.warnings[-1] == (
        "TrainJob",
        "warned",
        ['unknown field "spec.podTemplateOverrides"'],
    )
    body = named(trainjob(), "bad-type")
    body["spec"]["trainer"]["numNodes"] = "two"
    status = refused(api, body, 422)
    assert status["reason"] == "Invalid"
    assert status["details"]["causes"][0]["field"] == "spec.trainer.numNodes"
    body = named(trainjob(), "Upper")
    status = refused(api, body, 422)
    assert "metadata.name must match RFC 1035 DNS label format" in status["message"]


def test_nbscale_says_the_webhooks_reason_in_one_message(cluster, kube, nbscale_home):
    add_settings(nbscale_home, 'runtime = "torch-gpu"\n')
    with pytest.raises(NbscaleError) as info:
        _cell(nodes=1).submit()
    text = str(info.value)
    assert text.startswith("creating TrainJob ")
    assert "403 " + DENIED in text
    assert 'clustertrainingruntimes.trainer.kubeflow.org "torch-gpu" not found' in text
    # nothing half-made: no TrainJob, no bundle ConfigMap; the job's row says why it failed
    assert cluster.trainjobs(NS) == []
    assert cluster.core.list_namespaced_config_map(NS).items == []
    (row,) = jobs(backend="kf")
    assert row.record.status == "FAILED" and "torch-gpu" in row.record.error
    assert job_handle(row.id).status() == "FAILED"


def test_a_webhook_denial_is_not_called_a_permission_problem(cluster, kube, nbscale_home):
    add_settings(nbscale_home, 'runtime = "torch-gpu"\n')
    with pytest.raises(NbscaleError) as info:
        _cell(nodes=1).submit()
    assert "may not do this" not in (info.value.hint or "")
    assert "admission webhook refused the manifest" in (info.value.hint or "")
