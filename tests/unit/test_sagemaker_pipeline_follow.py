"""Following a SageMaker pipeline execution never ends a run before its failed step (and
that step's reason) is reported, whatever moment the execution fails at."""

from __future__ import annotations

from nbscale.backends.sagemaker.pipelines import Execution, SageMakerPipelines


class Racing:
    """SageMaker as it moves on between two calls: the step fails, then the execution, right
    after the first read of a refresh, whichever read that is."""

    def __init__(self) -> None:
        self.failed = False

    def _after_a_read(self) -> None:
        self.failed = True

    def describe_pipeline_execution(self, PipelineExecutionArn):
        status = "Failed" if self.failed else "Executing"
        self._after_a_read()
        return {"PipelineExecutionStatus": status, "FailureReason": "step prepare failed"}

    def list_pipeline_execution_steps(self, PipelineExecutionArn):
        step = {"StepName": "prepare", "StepStatus": "Executing"}
        if self.failed:
            step = {**step, "StepStatus": "Failed", "FailureReason": "KeyError 'label'"}
        self._after_a_read()
        return {"PipelineExecutionSteps": [step]}


def test_the_failed_step_is_reported_before_the_run_ends():
    follower = SageMakerPipelines.__new__(SageMakerPipelines)
    follower._clients = {"sagemaker": Racing()}
    heard: list[tuple[str, str, str | None]] = []
    execution = Execution("arn:pipeline", "arn:execution")
    while execution.status not in ("FAILED", "SUCCEEDED", "CANCELLED"):
        follower.refresh(execution, lambda n, f: heard.append((n, f["status"], f["error"])))
    assert ("prepare", "FAILED", "KeyError 'label'") in heard


class CompletedWithFailures:
    """An execution SageMaker ends as CompletedWithFailures (a step failed, the execution
    went on to its end); DescribePipelineExecution gives no FailureReason then."""

    def describe_pipeline_execution(self, PipelineExecutionArn):
        return {"PipelineExecutionStatus": "CompletedWithFailures"}

    def list_pipeline_execution_steps(self, PipelineExecutionArn):
        return {
            "PipelineExecutionSteps": [
                {"StepName": "train", "StepStatus": "Failed", "FailureReason": "OOM"},
                {"StepName": "prepare", "StepStatus": "Succeeded"},
            ]
        }


def test_an_execution_completed_with_failures_ends_as_failed_naming_the_step():
    follower = SageMakerPipelines.__new__(SageMakerPipelines)
    follower._clients = {"sagemaker": CompletedWithFailures()}
    follower.settings = type("S", (), {"poll_seconds": 0.0})()
    execution = follower.follow(Execution("arn:pipeline", "arn:execution"), timeout=5)
    assert execution.status == "FAILED"
    assert execution.error == "the execution completed with failed steps: train"
