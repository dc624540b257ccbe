"""The SageMaker job backend's settings checks and its mapping of every state SageMaker reports."""

from __future__ import annotations

import pytest

from nbscale.backends.sagemaker.endpoints import STATES as ENDPOINT_STATES
from nbscale.backends.sagemaker.settings import settings
from nbscale.backends.sagemaker.states import (
    EXECUTION_STATES,
    SECONDARY,
    STATUSES,
    STEP_STATES,
    map_state,
)
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


def _enum(shape: str) -> set[str]:
    """The values SageMaker's API (botocore's service model) lists for a status shape."""
    import botocore.session

    model = botocore.session.get_session().get_service_model("sagemaker")
    return set(model.shape_for(shape).enum)


@pytest.mark.parametrize(
    "shape, mapped",
    [
        ("TrainingJobStatus", set(STATUSES)),
        ("SecondaryStatus", set(SECONDARY)),
        ("PipelineExecutionStatus", set(EXECUTION_STATES)),
        ("StepStatus", set(STEP_STATES)),
        ("EndpointStatus", set(ENDPOINT_STATES)),
    ],
)
def test_every_state_in_sagemakers_api_is_mapped(shape, mapped):
    # botocore's model is AWS's own list: a state SageMaker adds fails here until mapped
    assert _enum(shape) - mapped == set(), f"{shape} values nbscale does not map"


def test_every_state_sagemaker_reports_is_mapped():
    # every (TrainingJobStatus, SecondaryStatus) pair from AWS's own enums has an answer
    covered = {s for s, _ in EXPECTED} | {s for _, s in EXPECTED}
    assert _enum("TrainingJobStatus") <= covered and _enum("SecondaryStatus") <= covered
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
