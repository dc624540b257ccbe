"""JSON with numpy arrays: orjson when installed (several times faster), the stdlib otherwise."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

try:
    import orjson

    _OPTS = orjson.OPT_SERIALIZE_NUMPY

    def dumps(obj: Any) -> bytes:
        try:
            return orjson.dumps(obj, option=_OPTS)
        except TypeError:  # non-contiguous or exotic numpy dtypes
            return json.dumps(obj, default=_default).encode()

    def loads(data: bytes | str) -> Any:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ValueError(str(exc)) from None

except ImportError:  # pragma: no cover - orjson is in the serving extra

    def dumps(obj: Any) -> bytes:
        return json.dumps(obj, default=_default, separators=(",", ":")).encode()

    def loads(data: bytes | str) -> Any:
        try:
            return json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(str(exc)) from None


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")
