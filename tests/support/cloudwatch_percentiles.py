"""CloudWatch percentiles for the AWS emulator front (moto has none).

moto keeps the metric data a test puts and answers ``Sum``/``Average``..., but
``GetMetricData`` with an extended statistic (``p99``) fails inside moto and
``GetMetricStatistics`` ignores ``ExtendedStatistics``. CloudWatch computes a
percentile from every value of the period; so does this front: it keeps the values
of each ``PutMetricData`` (then forwards it to moto, which stores them too), and
answers ``GetMetricData``: the queries with a plain statistic go to moto, the
percentile queries are computed here (``numpy.percentile`` over the values of each
period, repeated by their ``Counts``), and the results come back together in the
documented response shape (``MetricDataResults``: Id, Label, Timestamps, Values,
StatusCode), in the protocol botocore speaks to CloudWatch here (AWS JSON 1.0,
``X-Amz-Target: GraniteServiceVersion20100801.GetMetricData``).
"""

from __future__ import annotations

import datetime
import json
import re
import threading
from typing import Any

import numpy as np

PERCENTILE = re.compile(r"^p(\d+(\.\d+)?)$")
TARGET = "GraniteServiceVersion20100801."
JSON = {"Content-Type": "application/x-amz-json-1.0"}


def _ts(value: Any) -> float:
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    return float(value)


class CloudWatchPercentiles:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        # (namespace, name, dimensions) -> [(time, value, count)]
        self.values: dict[tuple, list[tuple[float, float, float]]] = {}
        self.percentile_queries: list[dict[str, Any]] = []

    def handle(self, path: str, headers, body: bytes, forward) -> tuple | None:
        """The front's answer to a CloudWatch request, or None to let moto answer it."""
        target = headers.get("X-Amz-Target") or ""
        if not target.startswith(TARGET):
            return None
        op = target[len(TARGET) :]
        if op == "PutMetricData":
            self._keep(json.loads(body or b"{}"))
            return None
        if op != "GetMetricData":
            return None
        params = json.loads(body or b"{}")
        queries = params.get("MetricDataQueries") or []
        pct = [q for q in queries if PERCENTILE.match(q.get("MetricStat", {}).get("Stat", ""))]
        if not pct:
            return None
        with self.lock:
            self.percentile_queries.extend(pct)
        results: dict[str, dict[str, Any]] = {}
        rest = [q for q in queries if q not in pct]
        if rest:
            status, data, hdrs = forward(json.dumps({**params, "MetricDataQueries": rest}).encode())
            if status != 200:
                return status, data, hdrs
            for r in json.loads(data).get("MetricDataResults") or []:
                results[r["Id"]] = r
        start, end = _ts(params["StartTime"]), _ts(params["EndTime"])
        for q in pct:
            results[q["Id"]] = self._percentiles(q, start, end)
        answer = {
            "MetricDataResults": [
                {
                    "Id": q["Id"],
                    "Label": results[q["Id"]].get("Label") or q.get("Label") or q["Id"],
                    "Timestamps": [_ts(t) for t in results[q["Id"]].get("Timestamps") or []],
                    "Values": [float(v) for v in results[q["Id"]].get("Values") or []],
                    "StatusCode": "Complete",
                }
                for q in queries
            ],
            "Messages": [],
        }
        return 200, json.dumps(answer).encode(), JSON

    def _keep(self, params: dict[str, Any]) -> None:
        now = datetime.datetime.now(datetime.UTC).timestamp()
        with self.lock:
            for d in params.get("MetricData") or []:
                key = (
                    params["Namespace"],
                    d["MetricName"],
                    frozenset((x["Name"], x["Value"]) for x in d.get("Dimensions") or []),
                )
                t = _ts(d["Timestamp"]) if d.get("Timestamp") else now
                if "Value" in d:
                    self.values.setdefault(key, []).append((t, float(d["Value"]), 1.0))
                counts = d.get("Counts") or [1.0] * len(d.get("Values") or [])
                for v, c in zip(d.get("Values") or [], counts, strict=True):
                    self.values.setdefault(key, []).append((t, float(v), float(c)))

    def _percentiles(self, query: dict[str, Any], start: float, end: float) -> dict[str, Any]:
        stat = query["MetricStat"]
        m = stat["Metric"]
        key = (
            m["Namespace"],
            m["MetricName"],
            frozenset((x["Name"], x["Value"]) for x in m.get("Dimensions") or []),
        )
        q = float(PERCENTILE.match(stat["Stat"]).group(1))
        period = float(stat["Period"])
        with self.lock:
            points = [p for p in self.values.get(key, []) if start <= p[0] < end]
        stamps, values = [], []
        t = start
        while t < end:
            inside = [(v, c) for (ts, v, c) in points if t <= ts < t + period]
            if inside:
                vals = np.repeat([v for v, _ in inside], [int(c) for _, c in inside])
                stamps.append(t)
                values.append(float(np.percentile(vals, q)))
            t += period
        return {"Label": query.get("Label"), "Timestamps": stamps, "Values": values}
