"""SageMaker endpoint monitoring: CloudWatch metrics (sums for counts, p50/p95/p99 for
latencies), and drift from the endpoint's data capture in S3.

The metric data is put into the local AWS (moto behind the emulator front) with real
``PutMetricData`` calls; nbscale reads it back with one ``GetMetricData`` through boto3.
moto has no percentiles: the front computes them from the values put (CloudWatch's
extended statistics), the plain sums come from moto.
"""

from __future__ import annotations

import json
import time

import boto3
import numpy as np
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


# -- drift from SageMaker's data capture in S3 ---------------------------------------------


def _capture_line(t: float, rows: np.ndarray, encoding: str) -> str:
    """One captured request as SageMaker's data capture writes it (model-monitor docs)."""
    import base64
    import io
    import uuid
    from datetime import UTC, datetime

    if encoding == "BASE64":  # nbscale's own requests: application/x-npy, not a capture type
        buf = io.BytesIO()
        np.save(buf, rows.astype(np.float32), allow_pickle=False)
        part = {
            "observedContentType": "application/x-npy",
            "mode": "INPUT",
            "data": base64.b64encode(buf.getvalue()).decode(),
            "encoding": "BASE64",
        }
    elif encoding == "JSON":  # a V2 request body
        body = {
            "inputs": [
                {
                    "name": "input-0",
                    "shape": list(rows.shape),
                    "datatype": "FP32",
                    "data": rows.reshape(-1).tolist(),
                }
            ]
        }
        part = {
            "observedContentType": "application/json",
            "mode": "INPUT",
            "data": json.dumps(body),
            "encoding": "JSON",
        }
    else:
        part = {
            "observedContentType": "text/csv",
            "mode": "INPUT",
            "data": "\n".join(",".join(f"{v:.6f}" for v in row) for row in rows),
            "encoding": "CSV",
        }
    output = {"observedContentType": "application/json", "mode": "OUTPUT", "data": "[[0.1]]"}
    return json.dumps(
        {
            "captureData": {
                "endpointInput": part,
                "endpointOutput": {**output, "encoding": "JSON"},
            },
            "eventMetadata": {
                "eventId": str(uuid.uuid4()),
                "inferenceTime": datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            },
            "eventVersion": "0",
        }
    )


def test_drift_on_sagemaker_reads_the_data_capture_in_s3(aws, tmp_path):
    from nbscale.endpoints import deploy
    from tests.support.serving import make_artifact

    rng = np.random.default_rng(3)
    train = rng.normal(size=(3000, 64))
    artifact, _ = make_artifact(tmp_path / "a", name="watched")
    ep = deploy(artifact, name="watched", backend="aws", baseline=train)
    capture = aws.operations("CreateEndpointConfig")[-1]["DataCaptureConfig"]
    assert capture["InitialSamplingPercentage"] == 100  # a baseline turns capture on
    assert capture["DestinationS3Uri"] == "s3://nb-models/serve/capture/watched"

    s3 = boto3.client("s3")
    hour = int(time.time() // 3600) * 3600
    # two hours ago: traffic like the training data; the last hour: feature 5 has moved
    for start, shift, encodings in (
        (hour - 7200, 0.0, ("BASE64", "JSON", "CSV")),
        (hour - 3600, 3.0, ("BASE64", "CSV", "JSON")),
    ):
        for n, encoding in enumerate(encodings):
            lines = []
            for i in range(20):
                rows = rng.normal(size=(5, 64))
                rows[:, 5] += shift
                lines.append(_capture_line(start + 60 + n * 600 + i, rows, encoding))
            stamp = time.strftime("%Y/%m/%d/%H", time.gmtime(start))
            key = f"serve/capture/watched/watched/AllTraffic/{stamp}/{n}-{start}.jsonl"
            s3.put_object(Bucket="nb-models", Key=key, Body="\n".join(lines).encode())
    # another endpoint's capture is not read
    s3.put_object(
        Bucket="nb-models",
        Key=f"serve/capture/other/other/AllTraffic/{time.strftime('%Y/%m/%d/%H', time.gmtime(hour - 3600))}/x.jsonl",
        Body=_capture_line(hour - 3000, rng.normal(size=(5, 64)) + 9, "CSV").encode(),
    )

    report = ep.drift(window="1h", since="3h")
    assert report.captured_rows == 2 * 3 * 20 * 5
    by_start = {w.start: w for w in report.windows}
    assert set(by_start) == {hour - 7200, hour - 3600}
    assert not by_start[hour - 7200].drifting  # drift not found where there is none
    assert [f.feature for f in by_start[hour - 3600].drifting] == [report.drifting[0]]
    assert report.drifting == ["f5"]
    backend().undeploy("watched")
