"""One endpoint's figures from the replicas that serve its socket themselves.

When every replica accepts on the endpoint's port (``direct``), the router
proxies no request and counts none: each replica counts its own. ``/metrics``
and ``/nbscale/stats`` then answer for the endpoint as a whole, from what each
replica reports:

- metrics (the Prometheus text of each replica): counters and histograms are
  summed sample by sample, as a Prometheus ``sum()`` over the replicas would;
  a gauge is a replica's own state (its queue, its batch limit), so its samples
  are kept apart with a ``replica`` label;
- stats: requests, errors and throughput are summed; the latency percentiles
  come from the replicas' windows merged, each replica weighted by the requests
  it served (``Rolling.snapshot(digest=True)`` gives its latencies at every
  0.1% rank); a point of the per-second series sums requests and errors and
  shows the slowest replica's p50 and p99 for that second.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

SUMMED = ("counter", "histogram", "summary", "gaugehistogram")


class _Merged:
    """A collector of already merged families, for ``generate_latest``."""

    def __init__(self, families: list[Metric]):
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def merged_exposition(bodies: Mapping[int, bytes]) -> bytes:
    """The Prometheus text of replicas ``{replica id: their /metrics}`` as one endpoint's."""
    families: dict[str, Metric] = {}
    sums: dict[str, dict[tuple, float]] = {}
    for rid, body in sorted(bodies.items()):
        for fam in text_string_to_metric_families(body.decode("utf-8")):
            merged = families.get(fam.name)
            if merged is None:
                merged = families[fam.name] = Metric(fam.name, fam.documentation, fam.type)
                sums[fam.name] = {}
            for s in fam.samples:
                if fam.type in SUMMED:
                    key = (s.name, tuple(sorted(s.labels.items())))
                    seen = sums[fam.name].get(key)
                    if s.name.endswith("_created"):  # when the series began: the earliest
                        sums[fam.name][key] = s.value if seen is None else min(seen, s.value)
                    else:
                        sums[fam.name][key] = s.value + (seen or 0.0)
                else:
                    merged.add_sample(s.name, {**s.labels, "replica": str(rid)}, s.value)
    for name, merged in families.items():
        for (sample, labels), value in sums[name].items():
            merged.add_sample(sample, dict(labels), value)
    return generate_latest(_Merged(list(families.values())))  # type: ignore[arg-type]


def merged_stats(snaps: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The request figures of the replicas' ``/nbscale/stats?digest=1`` answers, as one."""
    snaps = list(snaps)
    total = sum(int(s.get("requests_total", 0)) for s in snaps)
    errors = sum(int(s.get("errors_total", 0)) for s in snaps)
    window = sum(int(s.get("window_requests", 0)) for s in snaps)
    window_errors = sum(int(s.get("window_errors", 0)) for s in snaps)
    out: dict[str, Any] = {
        "requests_total": total,
        "errors_total": errors,
        "throughput_rps": round(sum(float(s.get("throughput_rps", 0.0)) for s in snaps), 2),
        "error_rate": round(window_errors / window, 4) if window else 0.0,
    }
    points, weights = [], []
    for s in snaps:
        q = s.get("latency_quantiles_ms") or []
        if q and s.get("window_requests"):
            points.extend(q)
            weights.extend([s["window_requests"] / len(q)] * len(q))
    for key, rank in (("p50_ms", 50), ("p95_ms", 95), ("p99_ms", 99)):
        out[key] = (
            round(float(np.percentile(points, rank, weights=weights, method="inverted_cdf")), 3)
            if points
            else None
        )
    by_second: dict[int, dict[str, Any]] = {}
    for s in snaps:
        for point in s.get("series") or []:
            m = by_second.setdefault(point["time"], {"time": point["time"], "rps": 0, "errors": 0})
            m["rps"] += point.get("rps", 0)
            m["errors"] += point.get("errors", 0)
            for key in ("p50_ms", "p99_ms"):
                if point.get(key) is not None:
                    m[key] = max(m.get(key) or 0.0, point[key])
    out["series"] = [{"p50_ms": None, "p99_ms": None, **m} for _, m in sorted(by_second.items())]
    return out
