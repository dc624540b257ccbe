"""Loading an artifact the way the SageMaker PyTorch container does.

``code/inference.py`` is imported and its ``model_fn``, ``input_fn``,
``predict_fn`` and ``output_fn`` used; missing ones fall back to defaults
that serve a torch.export program or a plain module.
"""

from __future__ import annotations

import importlib.util
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .artifact import read_manifest, verify
from .protocol import DTYPES, ProtocolError, TensorSpec, cast_checked


def _default_model_fn(model_dir: str):
    path = Path(model_dir) / "model.pt2"
    if not path.is_file():
        raise FileNotFoundError(
            f"{model_dir} has neither code/inference.py with model_fn nor model.pt2"
        )
    from .exported import load_program

    return load_program(model_dir)  # ModelHandler checks inputs against the signature


def _default_input_fn(body: bytes, content_type: str):
    import torch

    if content_type in ("application/x-npy", "application/npy"):
        return torch.from_numpy(np.load(io.BytesIO(body), allow_pickle=False))
    return torch.as_tensor(np.asarray(json.loads(body), dtype=np.float32))


def _default_predict_fn(data, model):
    import torch

    with torch.inference_mode():
        return model(data)


def _default_output_fn(prediction, accept: str):
    arr = as_numpy(prediction)
    if accept in ("application/x-npy", "application/npy"):
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        return buf.getvalue()
    return json.dumps(arr.tolist())


def as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        try:
            return value.numpy()  # a CPU tensor outside autograd, as inference gives: no copy
        except (RuntimeError, TypeError):  # one that needs grad, or on another device
            return value.detach().cpu().numpy()
    return np.asarray(value)


class ModelHandler:
    def __init__(self, model_dir: str | Path):
        self.model_dir = Path(model_dir)
        self.manifest = read_manifest(self.model_dir)
        verify(self.model_dir)  # before any of its code is imported or its weights read
        self.name = self.manifest.get("name") or self.model_dir.name
        self.inputs = [TensorSpec.from_dict(d) for d in self.manifest["inputs"]]
        self.outputs = [TensorSpec.from_dict(d) for d in self.manifest["outputs"]]
        if len(self.inputs) != 1:
            raise ValueError("nbscale serves models with one input tensor")
        self.input = self.inputs[0]
        self.dtype = DTYPES[self.input.datatype]
        code = self.model_dir / "code" / "inference.py"
        module = None
        if code.is_file():
            spec = importlib.util.spec_from_file_location(f"nbscale_inference_{id(self)}", code)
            module = importlib.util.module_from_spec(spec)
            sys.path.insert(
                0, str(code.parent)
            )  # as SageMaker does, so helper modules in code/ import
            spec.loader.exec_module(module)
        self.model_fn = getattr(module, "model_fn", None) or _default_model_fn
        self.input_fn = getattr(module, "input_fn", None) or _default_input_fn
        self.predict_fn = getattr(module, "predict_fn", None) or _default_predict_fn
        self.output_fn = getattr(module, "output_fn", None) or _default_output_fn
        self.custom_input = hasattr(module, "input_fn")
        self.custom_output = hasattr(module, "output_fn")
        self.model = None
        self.load_seconds = 0.0

    def load(self) -> None:
        """Load and warm up: readiness is only reported after this returns."""
        start = time.perf_counter()
        self.model = self.model_fn(str(self.model_dir))
        warm = np.zeros((2, *[d if d > 0 else 1 for d in self.input.shape[1:]]), dtype=self.dtype)
        for _ in range(3):
            self.run(warm)
        self.load_seconds = time.perf_counter() - start

    def run(self, batch: np.ndarray) -> np.ndarray:
        import torch

        out = self.predict_fn(torch.from_numpy(batch), self.model)
        return as_numpy(out)

    def check_rows(self, arr: np.ndarray) -> np.ndarray:
        """Rows from a SageMaker body, checked against the signature like a V2 tensor."""
        spec = self.input
        if arr.ndim == len(spec.shape) - 1:
            arr = arr[None]
        if arr.ndim != len(spec.shape) or any(
            w != -1 and w != g for w, g in zip(spec.shape, arr.shape, strict=True)
        ):
            raise ProtocolError(
                400,
                f"the input has shape {list(arr.shape)}, the model takes {list(spec.shape)} (-1: any size)",
            )
        if arr.shape[0] == 0:
            raise ProtocolError(400, "the input has no rows")
        return np.ascontiguousarray(cast_checked(arr, self.dtype, "the input"))
