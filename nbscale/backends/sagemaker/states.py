"""SageMaker's states, mapped to nbscale's: training jobs and pipeline executions.

DescribeTrainingJob reports ``TrainingJobStatus`` (InProgress, Completed, Failed,
Stopping, Stopped, Deleting) and a finer ``SecondaryStatus``. nbscale shows the
secondary status as the job's phase and maps the pair to one of its own statuses.
DescribePipelineExecution reports ``PipelineExecutionStatus`` and
ListPipelineExecutionSteps each step's ``StepStatus``. Every value botocore's service
model lists is named in a table here (a unit test reads the enums from the model, so a
state SageMaker adds fails it until it is mapped).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ...store.jobs import CANCELLED, FAILED, PENDING, RUNNING, SUCCEEDED

# secondary statuses before the first training step starts: nbscale's PENDING
WAITING = {
    "Pending",
    "Starting",
    "LaunchingMLInstances",
    "PreparingTrainingStack",
    "Downloading",
    "DownloadingTrainingImage",
}
# the job is training, or between attempts of one job (spot interruption, retry)
ACTIVE = {"Training", "Uploading", "Interrupted", "Restarting", "Updating", "Stopping"}
# the job has ended (or is being deleted)
ENDED = {"Completed", "Failed", "Stopped", "MaxRuntimeExceeded", "MaxWaitTimeExceeded"}
STATUSES = ("InProgress", "Completed", "Failed", "Stopping", "Stopped", "Deleting")
SECONDARY = (*sorted(WAITING), *sorted(ACTIVE), *sorted(ENDED))

# a pipeline step (StepStatus) and a pipeline execution (PipelineExecutionStatus)
STEP_STATES = {
    "Starting": RUNNING,
    "Executing": RUNNING,
    "Stopping": RUNNING,
    "Stopped": CANCELLED,
    "Failed": FAILED,
    "Succeeded": SUCCEEDED,
}
EXECUTION_STATES = {
    "Executing": RUNNING,
    "Stopping": RUNNING,
    "Stopped": CANCELLED,
    "Failed": FAILED,
    "Succeeded": SUCCEEDED,
    # the execution ended and some step failed (the pipeline let it go on): not a success
    "CompletedWithFailures": FAILED,
}


@dataclass(frozen=True)
class Mapped:
    status: str  # nbscale's
    phase: str  # shown to the user
    error: str | None = None


def phase_name(secondary: str) -> str:
    """``LaunchingMLInstances`` -> ``launching ML instances``."""
    words = re.findall(r"ML|[A-Z][a-z]*|[a-z]+", secondary)
    return " ".join(w if w == "ML" else w.lower() for w in words)


def map_state(description: dict) -> Mapped:
    """nbscale's status, phase and error for one DescribeTrainingJob answer."""
    status = description.get("TrainingJobStatus", "")
    secondary = description.get("SecondaryStatus", "") or status
    phase = phase_name(secondary) if secondary else "unknown"
    reason = description.get("FailureReason")
    if status == "InProgress":
        return Mapped(PENDING if secondary in WAITING else RUNNING, phase)
    if status == "Stopping":
        return Mapped(RUNNING, "stopping")
    if status == "Completed":
        return Mapped(SUCCEEDED, "ended")
    if status == "Failed":
        return Mapped(FAILED, "ended", reason or "the training job failed (no reason given)")
    if status == "Stopped":
        runtime = description.get("StoppingCondition", {}).get("MaxRuntimeInSeconds")
        if secondary == "MaxRuntimeExceeded":
            return Mapped(
                FAILED,
                "ended",
                f"stopped by SageMaker: the job ran past --max-runtime ({runtime} s)",
            )
        if secondary == "MaxWaitTimeExceeded":
            wait = description.get("StoppingCondition", {}).get("MaxWaitTimeInSeconds")
            return Mapped(
                FAILED,
                "ended",
                f"stopped by SageMaker: no spot capacity and training within MaxWaitTimeInSeconds ({wait} s)",
            )
        return Mapped(CANCELLED, "ended", "cancelled")
    if status == "Deleting":
        return Mapped(CANCELLED, "ended", "the training job is being deleted")
    # a status added to the API after this code: keep watching, say what it is
    return Mapped(RUNNING, phase or status.lower())
