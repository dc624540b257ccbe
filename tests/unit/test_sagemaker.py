"""The SageMaker job backend's settings checks and its mapping of every state SageMaker reports."""

from __future__ import annotations

import pytest

from nbscale.backends.sagemaker.settings import settings
from nbscale.backends.sagemaker.states import SECONDARY, STATUSES, map_state
from nbscale.config import BackendConfig
from nbscale.errors import SpecError
from tests.support.sagemaker import ROLE, SETTINGS


@pytest.mark.parametrize(
    "drop, named",
    [("role_arn", "role_arn"), ("storage", "storage")],
)
def test_a_missing_setting_is_one_message_naming_it(drop, named):
    raw = {k: v for k, v in SETTINGS.items() if k != drop}
    with pytest.raises(SpecError) as err:
        settings(BackendConfig("aws", "sagemaker", raw))
    assert f"[backends.aws] {named}" in str(err.value) and "add" in str(err.value)


def test_bad_settings_are_refused_with_the_fix(monkeypatch):
    for key in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    raw = {k: v for k, v in SETTINGS.items() if k != "region"}
    with pytest.raises(SpecError, match=r"\[backends.aws\] region: is missing"):
        settings(BackendConfig("aws", "sagemaker", raw))
    with pytest.raises(SpecError, match="is not an IAM role ARN"):
        settings(BackendConfig("aws", "sagemaker", {**SETTINGS, "role_arn": "admin"}))
    with pytest.raises(SpecError, match="needs both subnets and security_group_ids"):
        settings(BackendConfig("aws", "sagemaker", {**SETTINGS, "subnets": ["subnet-1"]}))
    with pytest.raises(SpecError, match="is not a setting of the sagemaker backend"):
        settings(BackendConfig("aws", "sagemaker", {**SETTINGS, "rol_arn": ROLE}))


EXPECTED = {
    ("InProgress", "Starting"): ("PENDING", "starting"),
    ("InProgress", "Pending"): ("PENDING", "pending"),
    ("InProgress", "LaunchingMLInstances"): ("PENDING", "launching ML instances"),
    ("InProgress", "PreparingTrainingStack"): ("PENDING", "preparing training stack"),
    ("InProgress", "Downloading"): ("PENDING", "downloading"),
    ("InProgress", "DownloadingTrainingImage"): ("PENDING", "downloading training image"),
    ("InProgress", "Training"): ("RUNNING", "training"),
    ("InProgress", "Uploading"): ("RUNNING", "uploading"),
    ("InProgress", "Interrupted"): ("RUNNING", "interrupted"),
    ("InProgress", "Restarting"): ("RUNNING", "restarting"),
    ("InProgress", "Updating"): ("RUNNING", "updating"),
    ("Stopping", "Stopping"): ("RUNNING", "stopping"),
    ("Completed", "Completed"): ("SUCCEEDED", "ended"),
    ("Failed", "Failed"): ("FAILED", "ended"),
    ("Stopped", "Stopped"): ("CANCELLED", "ended"),
    ("Stopped", "MaxRuntimeExceeded"): ("FAILED", "ended"),
    ("Stopped", "MaxWaitTimeExceeded"): ("FAILED", "ended"),
    ("Deleting", "Stopped"): ("CANCELLED", "ended"),
}


def test_every_state_sagemaker_reports_is_mapped():
    covered = {s for s, _ in EXPECTED} | {s for _, s in EXPECTED}
    assert set(STATUSES) <= covered and set(SECONDARY) <= covered
    for (status, secondary), (ours, phase) in EXPECTED.items():
        got = map_state(
            {
                "TrainingJobStatus": status,
                "SecondaryStatus": secondary,
                "FailureReason": "AlgorithmError: boom",
                "StoppingCondition": {"MaxRuntimeInSeconds": 60, "MaxWaitTimeInSeconds": 120},
            }
        )
        assert (got.status, got.phase) == (ours, phase), (status, secondary)
    assert (
        "max-runtime (60 s)"
        in map_state(
            {
                "TrainingJobStatus": "Stopped",
                "SecondaryStatus": "MaxRuntimeExceeded",
                "StoppingCondition": {"MaxRuntimeInSeconds": 60},
            }
        ).error
    )
    assert (
        "AlgorithmError: boom"
        in map_state({"TrainingJobStatus": "Failed", "FailureReason": "AlgorithmError: boom"}).error
    )
