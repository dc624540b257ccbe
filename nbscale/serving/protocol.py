"""Open Inference Protocol v2 tensors: JSON (and the binary extension) to numpy and back.

Only what a request can get wrong is checked here, and each check names the
problem, so a client sees a 400 it can act on instead of a stack trace.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .jsoncodec import dumps, loads

# V2 datatype -> numpy dtype
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
NUMPY_TO_V2 = {v: k for k, v in DTYPES.items()}


class ProtocolError(Exception):
    """A request the server refuses; ``status`` is the HTTP code, the message goes to the client."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]  # -1 for any size; the first axis is the batch
    datatype: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(str(d["name"]), tuple(int(x) for x in d["shape"]), str(d["datatype"]))


def v2_datatype(dtype: np.dtype) -> str:
    try:
        return NUMPY_TO_V2[np.dtype(dtype)]
    except KeyError:
        raise ProtocolError(
            500, f"the model returned dtype {dtype}, which V2 cannot carry"
        ) from None


def _check_shape(spec: TensorSpec, shape: tuple[int, ...]) -> None:
    if len(shape) != len(spec.shape) or any(
        w != -1 and w != g for w, g in zip(spec.shape, shape, strict=True)
    ):
        raise ProtocolError(
            400,
            f"input '{spec.name}' has shape {list(shape)}, the model takes {list(spec.shape)} (-1: any size)",
        )


def decode_array(
    spec: TensorSpec, shape: Any, datatype: Any, data: Any, raw: bytes | None = None
) -> np.ndarray:
    """One input tensor as a numpy array, checked against the model's signature."""
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ProtocolError(
            400, f"input '{spec.name}': 'shape' must be a list of non-negative integers"
        )
    if datatype != spec.datatype:
        raise ProtocolError(
            400, f"input '{spec.name}' has datatype {datatype!r}, the model takes {spec.datatype}"
        )
    shape_t = tuple(shape)
    _check_shape(spec, shape_t)
    dtype = DTYPES[spec.datatype]
    count = int(np.prod(shape_t)) if shape_t else 1
    if raw is not None:
        if len(raw) != count * dtype.itemsize:
            raise ProtocolError(
                400,
                f"input '{spec.name}': {len(raw)} bytes of binary data, shape {shape} needs {count * dtype.itemsize}",
            )
        return np.frombuffer(raw, dtype=dtype).reshape(shape_t)
    if data is None:
        raise ProtocolError(400, f"input '{spec.name}' has no 'data'")
    try:
        arr = np.asarray(data, dtype=dtype)
    except (ValueError, TypeError) as exc:
        raise ProtocolError(
            400, f"input '{spec.name}': data is not {spec.datatype}: {exc}"
        ) from None
    if arr.size != count:
        raise ProtocolError(
            400, f"input '{spec.name}': {arr.size} values given, shape {shape} needs {count}"
        )
    return arr.reshape(shape_t)


@dataclass
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    binary_outputs: set[str]
    all_binary: bool
    requested: list[str] | None


def parse_infer(body: bytes, header_len: int | None, inputs: list[TensorSpec]) -> InferRequest:
    """Parse a V2 infer body; ``header_len`` is the binary extension's JSON length, if any."""
    head = body if header_len is None else body[:header_len]
    if header_len is not None and not 0 <= header_len <= len(body):
        raise ProtocolError(400, "Inference-Header-Content-Length is larger than the body")
    try:
        req = loads(head)
    except ValueError as exc:
        raise ProtocolError(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(req, dict) or not isinstance(req.get("inputs"), list) or not req["inputs"]:
        raise ProtocolError(400, "the body must be a JSON object with a non-empty 'inputs' list")
    by_name = {s.name: s for s in inputs}
    offset = header_len or 0
    arrays: dict[str, np.ndarray] = {}
    for item in req["inputs"]:
        if not isinstance(item, dict) or "name" not in item:
            raise ProtocolError(
                400, "each input must be an object with 'name', 'shape', 'datatype' and 'data'"
            )
        name = item["name"]
        spec = by_name.get(name)
        if spec is None:
            known = ", ".join(f"'{s.name}'" for s in inputs)
            raise ProtocolError(400, f"unknown input {name!r}; the model takes {known}")
        raw = None
        size = (item.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(body):
                raise ProtocolError(
                    400, f"input '{name}': binary_data_size {size!r} runs past the body"
                )
            raw = body[offset : offset + size]
            offset += size
        arrays[name] = decode_array(
            spec, item.get("shape"), item.get("datatype"), item.get("data"), raw
        )
    missing = [s.name for s in inputs if s.name not in arrays]
    if missing:
        raise ProtocolError(400, f"missing input '{missing[0]}'")
    params = req.get("parameters") or {}
    outputs = req.get("outputs")
    binary, requested = set(), None
    if isinstance(outputs, list):
        requested = []
        for out in outputs:
            if not isinstance(out, dict) or "name" not in out:
                raise ProtocolError(400, "each requested output must be an object with a 'name'")
            requested.append(out["name"])
            if (out.get("parameters") or {}).get("binary_data"):
                binary.add(out["name"])
    rid = req.get("id")
    return InferRequest(
        None if rid is None else str(rid),
        arrays,
        binary,
        bool(params.get("binary_data_output")),
        requested,
    )


def encode_infer(
    model: str, version: str | None, req: InferRequest, outputs: dict[str, np.ndarray]
) -> tuple[bytes, dict[str, str]]:
    """The response body and extra headers (the binary extension's header length)."""
    names = req.requested if req.requested is not None else list(outputs)
    items, blobs = [], []
    for name in names:
        if name not in outputs:
            raise ProtocolError(
                400, f"unknown output {name!r}; the model returns {', '.join(outputs)}"
            )
        arr = np.ascontiguousarray(outputs[name])
        item: dict[str, Any] = {
            "name": name,
            "datatype": v2_datatype(arr.dtype),
            "shape": list(arr.shape),
        }
        if req.all_binary or name in req.binary_outputs:
            blob = arr.tobytes()
            item["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            item["data"] = arr.reshape(-1)
        items.append(item)
    resp: dict[str, Any] = {"model_name": model, "outputs": items}
    if version:
        resp["model_version"] = version
    if req.id is not None:
        resp["id"] = req.id
    head = dumps(resp)
    if not blobs:
        return head, {}
    return head + b"".join(blobs), {"Inference-Header-Content-Length": str(len(head))}
