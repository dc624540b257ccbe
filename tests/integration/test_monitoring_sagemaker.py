"""SageMaker endpoint metrics from CloudWatch: sums for counts, p50/p95/p99 for latencies.

The metric data is put into the local AWS (moto behind the emulator front) with real
``PutMetricData`` calls; nbscale reads it back with one ``GetMetricData`` through boto3.
moto has no percentiles: the front computes them from the values put (CloudWatch's
extended statistics), the plain sums come from moto.
"""

from __future__ import annotations

import time

import boto3
import pytest

from nbscale.store.endpoints import EndpointRecord
from tests.support.sagemaker import backend

# its own endpoint name: the emulator (and its CloudWatch data) is shared with other test modules
DIMS = [
    {"Name": "EndpointName", "Value": "cw-percentiles"},
    {"Name": "VariantName", "Value": "AllTraffic"},
]


def record(name: str = "cw-percentiles") -> EndpointRecord:
    return EndpointRecord(
        name=name,
        backend="aws",
        backend_type="sagemaker",
        status="READY",
        url="",
        port=0,
        model_dir="",
        min_replicas=1,
        max_replicas=2,
        replicas=2,
    )


def test_latencies_are_cloudwatch_percentiles_and_counts_are_sums(aws):
    cw = boto3.client("cloudwatch")
    # 1000 requests as CloudWatch receives them from SageMaker: model time 800 us for 400,
    # 1200 us for 500 and 30 ms for 100 (a slow tail); the overhead is 50 us or 2 ms
    cw.put_metric_data(
        Namespace="AWS/SageMaker",
        MetricData=[
            {
                "MetricName": "ModelLatency",
                "Dimensions": DIMS,
                "Values": [800.0, 1200.0, 30000.0],
                "Counts": [400.0, 500.0, 100.0],
                "Unit": "Microseconds",
            },
            {
                "MetricName": "OverheadLatency",
                "Dimensions": DIMS,
                "Values": [50.0, 2000.0],
                "Counts": [980.0, 20.0],
                "Unit": "Microseconds",
            },
            {"MetricName": "Invocations", "Dimensions": DIMS, "Value": 600.0},
            {"MetricName": "Invocations", "Dimensions": DIMS, "Value": 400.0},
            {"MetricName": "Invocation4XXErrors", "Dimensions": DIMS, "Value": 7.0},
            {"MetricName": "Invocation5XXErrors", "Dimensions": DIMS, "Value": 3.0},
            {"MetricName": "InvocationsPerInstance", "Dimensions": DIMS, "Value": 500.0},
        ],
    )
    # another endpoint's data is not counted
    other = [{"Name": "EndpointName", "Value": "other"}, DIMS[1]]
    cw.put_metric_data(
        Namespace="AWS/SageMaker",
        MetricData=[{"MetricName": "ModelLatency", "Dimensions": other, "Value": 9e6}],
    )
    m = backend().metrics(record())

    assert m["Invocations"] == 1000.0
    assert (m["Invocation4XXErrors"], m["Invocation5XXErrors"]) == (7.0, 3.0)
    assert m["InvocationsPerInstance"] == 500.0
    assert m["error_rate"] == pytest.approx(0.01)
    # percentiles, never averages (the average model time would be 3920 us)
    assert (m["ModelLatency_p50"], m["ModelLatency_p95"], m["ModelLatency_p99"]) == (
        1200.0,
        30000.0,
        30000.0,
    )
    assert (m["OverheadLatency_p50"], m["OverheadLatency_p95"]) == (50.0, 50.0)
    assert m["OverheadLatency_p99"] == 2000.0
    assert "ModelLatency" not in m and "ModelLatency_Average" not in str(m)
    assert m["latency_unit"] == "microseconds" and m["p50_ms"] == 1.2
    # a per-minute series for the chart, under the same names
    (minute,) = m["sagemaker_series"]
    assert minute["Invocations"] == 1000.0 and minute["ModelLatency_p99"] == 30000.0
    assert minute["Timestamp"] <= time.time()

    # what was asked of CloudWatch: extended statistics for latencies, sums for counts
    stats = {
        (q["MetricStat"]["Metric"]["MetricName"], q["MetricStat"]["Stat"])
        for q in aws.cloudwatch.percentile_queries
    }
    assert stats == {
        (n, p) for n in ("ModelLatency", "OverheadLatency") for p in ("p50", "p95", "p99")
    }


def test_an_endpoint_without_traffic_has_no_latency(aws):
    m = backend().metrics(record("quiet"))
    assert m["Invocations"] == 0.0 and m["error_rate"] == 0.0
    assert m["ModelLatency_p99"] is None and m["sagemaker_series"] == []
