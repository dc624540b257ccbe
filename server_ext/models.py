"""Request and response bodies of ``/nbscale/api/``, named by operation.

``openapi.py`` publishes these as ``server_ext/openapi.json``; the panel's
``extension/src/api/models.ts`` mirrors them (a test keeps the two in step).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from nbscale.specs import MAX_RESOURCES
from nbscale.store.jobs import STATUSES
from nbscale.store.paging import MAX_CURSOR

JobStatus = Literal["PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "LOST"]
assert set(JobStatus.__args__) == set(STATUSES)  # the engine is the source of truth


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OpenModel(BaseModel):
    """A body whose engine dict may carry more fields than the ones the panel reads."""

    model_config = ConfigDict(extra="allow")


class ErrorResponse(Model):
    error: str
    message: str
    field: str | None = None


class VersionResponse(Model):
    version: str
    api_version: int


class BackendInfo(Model):
    name: str
    type: str
    default: bool
    reachable: bool
    detail: str
    price_per_node_hour: float


class ListBackendsResponse(Model):
    backends: list[BackendInfo]


MAX_LOG_OFFSET = 2**40  # 1 TiB
MAX_HOURS = 24 * 366  # a year: no estimate is asked for longer


class CostEstimateQuery(Model):
    backend: str | None = None
    nodes: int = Field(1, ge=1, le=MAX_RESOURCES["nodes"])
    procs_per_node: int = Field(1, ge=1, le=MAX_RESOURCES["procs_per_node"])
    gpus_per_proc: int = Field(0, ge=0, le=MAX_RESOURCES["gpus_per_proc"])
    instance_type: str | None = None
    hours: float = Field(1.0, gt=0, le=MAX_HOURS, allow_inf_nan=False)


class CostEstimate(Model):
    backend: str
    price_per_node_hour: float
    nodes: int
    hours: float
    total: float
    currency: str = "USD"


# -- jobs --------------------------------------------------------------------


def after_field() -> Any:
    return Field(
        None,
        description=f"the 'next' cursor of the page before (at most {MAX_CURSOR} characters); "
        "left out: the first page",
    )


def next_field() -> Any:
    return Field(
        description="the cursor of the page after this one (send it as ?after=); "
        "null on the last page"
    )


class ListJobsQuery(Model):
    status: JobStatus | None = None
    backend: str | None = None
    limit: int = Field(50, ge=1, le=500)
    after: str | None = after_field()


class DescribeJob(Model):
    id: str
    name: str
    backend: str
    backend_type: str
    status: JobStatus
    created: float
    started: float | None
    ended: float | None
    duration: float | None
    nodes: int
    procs_per_node: int
    gpus_per_proc: int
    cost: float | None
    error: str | None
    exit_code: int | None = None
    failed_rank: int | None = None
    restarts: int = 0
    notebook: str | None = None
    spec: dict[str, Any] | None = None
    sweep: str | None = Field(None, description="the sweep this job is a trial of")
    trial: int | None = Field(None, description="its trial number in that sweep")


class ListJobsResponse(Model):
    jobs: list[DescribeJob]
    total: int = Field(description="jobs that match the filters, in all pages")
    limit: int
    next: str | None = next_field()


class CreateJob(Model):
    path: str = Field(..., min_length=1, description="notebook path relative to the server root")
    name: str | None = None
    backend: str | None = None
    nodes: int = Field(1, ge=1, le=MAX_RESOURCES["nodes"])
    procs_per_node: int = Field(1, ge=1, le=MAX_RESOURCES["procs_per_node"])
    gpus_per_proc: int = Field(0, ge=0, le=MAX_RESOURCES["gpus_per_proc"])
    instance_type: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)


class JobLogsQuery(Model):
    rank: int = Field(0, ge=0, le=MAX_RESOURCES["nodes"] * MAX_RESOURCES["procs_per_node"])
    # a byte offset in the rank's log; logs are capped far below this, and a seek past
    # what the file system allows fails, so bigger numbers are refused here
    offset: int = Field(0, ge=0, le=MAX_LOG_OFFSET)


class JobLogs(Model):
    rank: int
    text: str
    offset: int
    next_offset: int
    ranks: list[int]
    status: JobStatus


class MetricPoint(OpenModel):
    name: str
    value: float | str
    step: int | None = None
    rank: int | None = None
    time: float | None = None


class JobMetrics(Model):
    metrics: list[MetricPoint]


# -- endpoints ---------------------------------------------------------------


class DescribeEndpoint(OpenModel):
    name: str
    status: str
    url: str | None = None
    #: why it failed, or which alarm made the platform roll its new version back
    error: str | None = None


class ListEndpointsQuery(Model):
    limit: int = Field(50, ge=1, le=500)
    after: str | None = after_field()


class ListEndpointsResponse(Model):
    endpoints: list[DescribeEndpoint]
    next: str | None = next_field()


class ScaleEndpoint(Model):
    min_replicas: int = Field(..., ge=0)
    max_replicas: int = Field(..., ge=1)


class EndpointMetrics(OpenModel):
    """Whatever the engine reports; the panel reads latency percentiles and throughput series."""


# -- pipelines ---------------------------------------------------------------


class ListRunsQuery(Model):
    limit: int = Field(50, ge=1, le=500)
    after: str | None = after_field()


class PipelineStep(OpenModel):
    name: str
    status: str
    cached: bool = False
    cache_reason: str | None = Field(
        None, description="why the step was taken from the cache or run again"
    )
    depends_on: list[str] = Field(default_factory=list)
    notebook: str | None = None
    error: str | None = None
    attempts: int | None = Field(None, description="tries so far, retries included")


class DescribeRun(OpenModel):
    id: str
    status: str
    steps: list[PipelineStep] = Field(default_factory=list)


class ListRunsResponse(Model):
    runs: list[DescribeRun]
    next: str | None = next_field()


class CreateRun(Model):
    path: str = Field(
        ..., min_length=1, description="notebook or pipeline file relative to the server root"
    )
    backend: str = "local"
    parameters: dict[str, Any] = Field(default_factory=dict)


# -- monitoring: drift per window, what runs and what it costs (nbscale.monitoring) ------------


class EndpointDriftQuery(Model):
    window: str = "1h"
    since: str | None = None


class DriftFeature(OpenModel):
    feature: str
    drifting: bool
    ks: float
    p_value: float
    psi: float
    psi_threshold: float
    share: float


class DriftWindow(OpenModel):
    start: float
    end: float
    rows: int
    skipped: str | None = None
    drifting: list[str]
    features: list[DriftFeature]


class EndpointDrift(OpenModel):
    endpoint: str
    window_s: float
    captured_rows: int
    drifting: list[str]
    alerts: int
    windows: list[DriftWindow]


class IdleItem(OpenModel):
    kind: str
    name: str
    backend: str
    status: str
    units: int
    cost_per_hour: float
    since: float | None = None
    idle: str | None = None


class ListIdleResponse(Model):
    items: list[IdleItem]
    cost_per_hour: float


# -- sweeps: trials sampled by Optuna (local), Katib (Kubeflow) or automatic model tuning ----


class ListSweepsQuery(Model):
    limit: int = Field(50, ge=1, le=500)


class SweepTrial(OpenModel):
    number: int
    params: dict[str, Any]
    status: str = Field(description="PENDING, RUNNING, SUCCEEDED, FAILED, PRUNED or CANCELLED")
    value: float | None = Field(None, description="the objective's final value")
    last: float | None = Field(None, description="the objective's latest value while it runs")
    steps: int = Field(0, description="how many values of the objective it logged")
    job_id: str | None = Field(
        None, description="its nbscale job (local), Katib Trial or training job"
    )
    started: float | None = None
    ended: float | None = None
    duration: float | None = None
    error: str | None = None
    cost: float | None = None


class SweepSummary(Model):
    id: str
    name: str
    backend: str
    backend_type: str
    status: str = Field(description="RUNNING, SUCCEEDED, FAILED, CANCELLED or STOPPED")
    objective: str = Field(description='the metric and its direction, e.g. "val_loss:min"')
    planned: int = Field(description="the trials asked for (--trials)")
    done: int = Field(description="trials that ended (succeeded, failed, pruned, cancelled)")
    running: int
    best_value: float | None
    best_trial: int | None
    cost: float | None = Field(description="USD spent by its trials, where they are priced")
    created: float
    ended: float | None
    error: str | None


class ListSweepsResponse(Model):
    sweeps: list[SweepSummary]


class DescribeSweep(OpenModel):
    id: str
    name: str
    backend: str
    status: str = Field(description="RUNNING, SUCCEEDED, FAILED, CANCELLED or STOPPED")
    objective: str
    planned: int
    native_id: str | None = None
    error: str | None = None
    notes: list[str] = Field(default_factory=list)
    counts: dict[str, int] = Field(default_factory=dict, description="trials per status")
    cost: float | None = Field(None, description="USD spent by its trials, where they are priced")
    best: SweepTrial | None = None
    trials: list[SweepTrial] = Field(
        default_factory=list, description="by the objective, best first; unscored last"
    )
