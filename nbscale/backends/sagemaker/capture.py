"""An endpoint's SageMaker data capture, read back for drift.

SageMaker writes captured requests as JSON Lines under
``{DestinationS3Uri}/{EndpointName}/{VariantName}/yyyy/mm/dd/hh/*.jsonl``; each line is one
request::

    {"captureData": {"endpointInput": {"observedContentType": "application/x-npy",
                                       "mode": "INPUT", "data": "...", "encoding": "BASE64"},
                     "endpointOutput": {...}},
     "eventMetadata": {"eventId": "...", "inferenceTime": "2026-12-06T10:15:02Z"},
     "eventVersion": "0"}

``encoding`` is ``JSON`` or ``CSV`` for the content types the endpoint config lists in
``CaptureContentTypeHeader``, else ``BASE64`` of the bytes as sent (nbscale's own requests:
``application/x-npy``). Each line gives the request's rows as a 2-D array.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np


def parse_time(text: str) -> float:
    """``eventMetadata.inferenceTime`` (ISO 8601, UTC) -> epoch seconds."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC).timestamp()


def hour_key(t: float) -> str:
    """The ``yyyy/mm/dd/hh`` part of the keys SageMaker writes for requests at ``t``."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y/%m/%d/%H")


def _rows(value: Any) -> np.ndarray | None:
    """A request body's rows: a V2 request (``inputs``), ``instances``, or a plain array."""
    if isinstance(value, dict):
        if value.get("inputs"):
            first = value["inputs"][0]
            arr = np.asarray(first["data"], dtype=float)
            shape = first.get("shape")
            value = arr.reshape(shape) if shape else arr
        elif "instances" in value:
            value = value["instances"]
        else:
            return None
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        return None
    if arr.ndim == 0:
        return None
    return arr.reshape(arr.shape[0], -1) if arr.ndim > 1 else arr[None, :]


def _decode(part: dict[str, Any]) -> np.ndarray | None:
    encoding = str(part.get("encoding", "")).upper()
    kind = str(part.get("observedContentType", "")).split(";")[0].strip().lower()
    data = part.get("data", "")
    if encoding == "BASE64":
        raw = base64.b64decode(data)
        if kind == "application/x-npy":
            return _rows(np.load(io.BytesIO(raw), allow_pickle=False))
        data = raw.decode("utf-8", errors="replace")
        encoding = "CSV" if kind == "text/csv" else "JSON"
    if encoding == "CSV":
        rows = [[float(x) for x in row] for row in csv.reader(io.StringIO(data)) if row]
        return _rows(rows) if rows else None
    try:
        return _rows(json.loads(data))
    except ValueError:
        return None


def captured_inputs(lines: bytes) -> Iterator[tuple[float, np.ndarray]]:
    """(time, rows) of each captured request in one capture file (unreadable lines skipped)."""
    for line in lines.splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            part = rec["captureData"]["endpointInput"]
            t = parse_time(rec["eventMetadata"]["inferenceTime"])
        except (ValueError, KeyError, TypeError):
            continue
        rows = _decode(part)
        if rows is not None and rows.size:
            yield t, rows
