"""--idle-ttl on a SageMaker endpoint: a detached watcher deletes it (endpoint, configs, models,
scaling policy) once CloudWatch shows no invocation for the TTL; against the local AWS."""

from __future__ import annotations

import time

import boto3
import pytest

from nbscale.backends.local.processes import stop_tagged_processes, tagged_processes
from nbscale.endpoints import deploy, endpoints
from nbscale.monitoring.idle import idle_teardown
from nbscale.monitoring.idle_watch import WATCH_ENV
from nbscale.store import get_store
from nbscale.store.events import list_events
from tests.support import wait_for
from tests.support.sagemaker import nbscale_resources
from tests.support.serving import make_artifact

GONE = {k: [] for k in ("models", "configs", "endpoints", "targets", "policies")}


@pytest.fixture(autouse=True)
def no_watcher_left():
    """Whatever a failing test leaves, no watcher outlives it."""
    yield
    for name in ("sleepy", "quiet", "bad"):
        stop_tagged_processes(WATCH_ENV, name, 2.0)


def test_an_idle_sagemaker_endpoint_is_deleted_with_everything_it_made(
    aws,
    tmp_path,
):
    # Given a SageMaker endpoint deployed with a one-minute idle TTL
    artifact, _ = make_artifact(tmp_path / "artifact", name="sleepy")
    ep = deploy(artifact, name="sleepy", replicas=(1, 2), backend="aws", idle_ttl="1m")
    assert ep.record.config["idle_ttl_s"] == 60
    # Then a detached watcher looks after it
    wait_for(lambda: tagged_processes(WATCH_ENV, "sleepy"), 30, what="the idle watcher")
    # When it was called within the TTL, it stays
    boto3.client("cloudwatch").put_metric_data(
        Namespace="AWS/SageMaker",
        MetricData=[
            {
                "MetricName": "Invocations",
                "Dimensions": [
                    {"Name": "EndpointName", "Value": "sleepy"},
                    {"Name": "VariantName", "Value": "AllTraffic"},
                ],
                "Value": 3.0,
            }
        ],
    )
    assert idle_teardown("sleepy", now=time.time() + 61) is False
    assert nbscale_resources("sleepy")["endpoints"] == ["sleepy"]
    # And a young endpoint is never judged idle
    assert idle_teardown("sleepy", now=ep.record.created + 30) is False
    # When it is undeployed by hand, the watcher exits too
    ep.delete()
    wait_for(lambda: not tagged_processes(WATCH_ENV, "sleepy"), 40, what="the watcher to exit")


def test_no_invocation_for_the_ttl_deletes_it_and_the_watcher_exits(
    aws,
    tmp_path,
):
    artifact, _ = make_artifact(tmp_path / "artifact", name="quiet")
    ep = deploy(artifact, name="quiet", replicas=(1, 2), backend="aws", idle_ttl="1m")
    wait_for(lambda: tagged_processes(WATCH_ENV, "quiet"), 30, what="the idle watcher")
    # When CloudWatch has no invocation of it for longer than the TTL
    assert idle_teardown("quiet", now=ep.record.created + 120) is True
    # Then the endpoint and everything made for it are gone, and the event says why
    assert nbscale_resources("quiet") == GONE
    assert [e.name for e in endpoints()] == []
    events = list_events(get_store(), kind="endpoint", ref="quiet", types=["idle_deleted"])
    assert len(events) == 1 and events[0]["data"]["idle_ttl_s"] == 60
    deletes = [op for op in ("DeleteEndpoint", "DeleteEndpointConfig", "DeleteModel")]
    for op in deletes:
        assert aws.operations(op), f"no {op} call"
    # And the watcher, finding the endpoint gone, exits (within its 15 s look interval)
    wait_for(lambda: not tagged_processes(WATCH_ENV, "quiet"), 40, what="the watcher to exit")


def test_a_bad_idle_ttl_is_refused_before_anything_is_created(aws, tmp_path):
    artifact, _ = make_artifact(tmp_path / "artifact", name="bad")
    with pytest.raises(Exception, match="not a duration"):
        deploy(artifact, name="bad", backend="aws", idle_ttl="whenever")
    assert nbscale_resources("bad") == GONE
