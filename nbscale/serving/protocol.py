"""Open Inference Protocol v2 tensors: JSON (and the binary extension) to numpy and back.

Only what a request can get wrong is checked here, and each check names the
problem, so a client sees a 400 it can act on instead of a stack trace.
"""

from __future__ import annotations

import math
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
    want = spec.shape
    if shape and shape[0] > 0 and want[0] in (-1, shape[0]) and shape[1:] == want[1:]:
        return  # the usual request: rows, and every other axis as the signature fixes it
    if len(shape) != len(spec.shape) or any(
        w != -1 and w != g for w, g in zip(spec.shape, shape, strict=True)
    ):
        raise ProtocolError(
            400,
            f"input '{spec.name}' has shape {list(shape)}, the model takes {list(spec.shape)} (-1: any size)",
        )
    if shape and shape[0] == 0:
        raise ProtocolError(400, f"input '{spec.name}' has no rows (shape {list(shape)})")


def cast_checked(arr: np.ndarray, dtype: np.dtype, what: str) -> np.ndarray:
    """``arr`` as ``dtype``, or a 400 when a value does not fit (UINT8 300, 1e300 as FP32, 1.5 as INT)."""
    kind = arr.dtype.kind
    if kind not in "biuf":
        raise ProtocolError(
            400,
            f"{what}: the values are not numbers that fit {NUMPY_TO_V2.get(dtype, dtype)} "
            f"(read as {arr.dtype})",
        )
    if arr.dtype == dtype:
        return arr
    name = NUMPY_TO_V2.get(dtype) or str(dtype)
    if arr.size and dtype.kind in "iu" and kind != "b":
        if kind == "f" and not (np.isfinite(arr).all() and (arr == np.trunc(arr)).all()):
            raise ProtocolError(400, f"{what}: {name} takes whole numbers only")
        info = np.iinfo(dtype)
        lo, hi = arr.min(), arr.max()
        if lo < info.min or hi > info.max:
            bad = lo if lo < info.min else hi
            raise ProtocolError(
                400, f"{what}: value {bad} is out of range for {name} ({info.min}..{info.max})"
            )
    elif arr.size and dtype.kind == "b" and kind != "b" and not ((arr == 0) | (arr == 1)).all():
        raise ProtocolError(400, f"{what}: BOOL takes 0/1 or true/false only")
    with np.errstate(over="ignore"):  # an overflow is found and refused just below
        out = arr.astype(dtype)
    if arr.size and dtype.kind == "f" and kind in "iuf" and np.isinf(out).any():
        overflow = np.isinf(out) & np.isfinite(arr)
        if overflow.any():
            bad = arr[overflow].flat[0]
            raise ProtocolError(400, f"{what}: value {bad} is out of range for {name}")
    return out


def decode_array(
    spec: TensorSpec, shape: Any, datatype: Any, data: Any, raw: bytes | None = None
) -> np.ndarray:
    """One input tensor as a numpy array, checked against the model's signature."""
    if not isinstance(shape, list) or not all(
        type(d) is int and d >= 0 for d in shape
    ):  # bool is an int to Python, not a size
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
    count = math.prod(shape_t)  # Python ints: [2**62, 64] does not wrap around to 0
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
        arr = np.asarray(data)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ProtocolError(
            400, f"input '{spec.name}': data is not a flat or nested list of numbers: {exc}"
        ) from None
    if arr.size != count:
        raise ProtocolError(
            400, f"input '{spec.name}': {arr.size} values given, shape {shape} needs {count}"
        )
    return cast_checked(arr, dtype, f"input '{spec.name}'").reshape(shape_t)


def check_npy(body: bytes, spec: TensorSpec) -> None:
    """A ``.npy`` body's header against the signature and the body length, before ``np.load``."""
    import io

    from numpy.lib import format as npy

    f = io.BytesIO(body)
    try:
        version = npy.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = npy.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = npy.read_array_header_2_0(f)
        else:
            raise ValueError(f".npy format {version[0]}.{version[1]} (send 1.0 or 2.0)")
    except Exception as exc:  # a header from the network: whatever it breaks is the sender's error
        raise ProtocolError(400, f"the body is not a readable .npy array: {exc}") from None
    if dtype.hasobject or dtype.kind not in "biuf" or dtype.subdtype is not None:
        raise ProtocolError(400, f"the .npy array has dtype {dtype}; send numbers")
    rows = tuple(shape)
    if len(rows) == len(spec.shape) - 1:
        rows = (1, *rows)
    _check_shape(spec, rows)
    need = math.prod(shape) * dtype.itemsize
    if len(body) - f.tell() != need:
        raise ProtocolError(
            400,
            f"the .npy header declares shape {list(shape)} ({need} bytes), "
            f"the body carries {len(body) - f.tell()}",
        )


def _params(obj: dict, what: str) -> dict:
    params = obj.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ProtocolError(400, f"{what}: 'parameters' must be an object")
    return params


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
        if not isinstance(name, str):
            raise ProtocolError(400, f"an input's 'name' must be a string, got {name!r:.60}")
        if name in arrays:
            raise ProtocolError(400, f"input '{name}' is given twice")
        spec = by_name.get(name)
        if spec is None:
            known = ", ".join(f"'{s.name}'" for s in inputs)
            raise ProtocolError(400, f"unknown input {name!r}; the model takes {known}")
        raw = None
        size = _params(item, f"input '{name}'").get("binary_data_size")
        if size is not None:
            if header_len is None:
                raise ProtocolError(
                    400,
                    f"input '{name}' has binary_data_size but the request has no "
                    "Inference-Header-Content-Length header",
                )
            if type(size) is not int or size < 0 or offset + size > len(body):
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
    params = _params(req, "the request")
    outputs = req.get("outputs")
    binary, requested = set(), None
    if outputs is not None and not isinstance(outputs, list):
        raise ProtocolError(400, "'outputs' must be a list of objects with a 'name'")
    if isinstance(outputs, list):
        requested = []
        for out in outputs:
            if not isinstance(out, dict) or not isinstance(out.get("name"), str):
                raise ProtocolError(
                    400, "each requested output must be an object with a string 'name'"
                )
            requested.append(out["name"])
            if _params(out, f"output '{out['name']}'").get("binary_data"):
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
