"""``--spot`` on Kubeflow against the emulated cluster: the backend's spot node selector and
tolerations on the TrainJob's pods and the checkpoint PVC; refused without spot nodes.
(A reclaimed node resuming from its checkpoint: tests/contract/test_kubeflow_spot.py.)
"""

from __future__ import annotations

import pytest

from nbscale.backends.kubeflow.settings import CHECKPOINT_MOUNT
from nbscale.errors import SpecError
from nbscale.jobs import submit
from nbscale.specs import Entry, JobSpec
from nbscale.store import get_store
from tests.support.kube_schemas import validate
from tests.support.kubeflow import (
    SPOT,
    _trainjob,
    add_settings,
    pod_spec,
)


def test_spot_is_refused_without_spot_nodes_and_sent_nothing(cluster, kube):
    before = len(kube.writes())
    with pytest.raises(SpecError, match="kf backend \\(kubeflow\\) has no spot nodes configured"):
        submit(JobSpec(entry=Entry("module", "m"), backend="kf", spot=True))
    assert len(kube.writes()) == before
    assert get_store().query("SELECT id FROM jobs") == []


def test_spot_pods_go_to_spot_nodes_with_a_checkpoint_volume(cluster, kube, nbscale_home):
    add_settings(nbscale_home, SPOT)
    job = submit(JobSpec(entry=Entry("module", "m"), backend="kf", spot=True, nodes=2))
    body = _trainjob(cluster, job)
    validate(body)  # against the Trainer CRD
    pod = pod_spec(body)
    assert pod["nodeSelector"] == {"karpenter.sh/capacity-type": "spot"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "spot", "operator": "Exists", "effect": "NoSchedule"},
    ]
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["nbscale-checkpoints"]["persistentVolumeClaim"] == {
        "claimName": "nbscale-checkpoints"
    }
    (container,) = pod["containers"]
    assert {"name": "nbscale-checkpoints", "mountPath": CHECKPOINT_MOUNT} in container[
        "volumeMounts"
    ]
    env = {e["name"]: e.get("value") for e in body["spec"]["trainer"]["env"]}
    assert env["NBSCALE_CHECKPOINT_DIR"] == f"{CHECKPOINT_MOUNT}/{job.id}"
    # without --spot: the same backend's pods stay off spot nodes (the checkpoints still go
    # to the volume, so any restarted pod resumes)
    plain = submit(JobSpec(entry=Entry("module", "m"), backend="kf", nodes=1))
    pod = pod_spec(_trainjob(cluster, plain))
    assert "nodeSelector" not in pod
    assert [t["key"] for t in pod["tolerations"]] == ["nvidia.com/gpu"]
    validate(_trainjob(cluster, plain))
