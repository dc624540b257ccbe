"""Model artifacts in the SageMaker PyTorch inference layout.

    model_dir/
      model.pt2            torch.export program (a torch.nn.Module), or
      model.pkl + .hmac    a signed pickle (any object with ``predict``)
      code/inference.py    model_fn, input_fn, predict_fn, output_fn
      nbscale.json         name, format, signature (V2 metadata)

The stock SageMaker PyTorch container serves the same directory (tar it as
model.tar.gz): it imports ``code/inference.py`` exactly as our runtime does.
A pickle is signed with a key kept in ``$NBSCALE_HOME`` (mode 0600) and
checked before anything is unpickled.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import paths
from ..errors import SpecError
from .protocol import NUMPY_TO_V2, TensorSpec

MANIFEST = "nbscale.json"
KEY_FILE = "model-signing.key"


def signing_key() -> bytes:
    path = paths.home() / KEY_FILE
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    return bytes.fromhex(path.read_text().strip())


def _example(model: Any, example: Any, input_shape: Any):
    import torch

    if example is not None:
        return torch.as_tensor(np.asarray(example))
    if input_shape is not None:
        shape = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
        return torch.zeros((2, *shape), dtype=torch.float32)
    features = getattr(model, "n_features_in_", None)
    if features is None and isinstance(model, torch.nn.Module):
        for layer in model.modules():
            if isinstance(layer, torch.nn.Linear):
                features = layer.in_features
                break
    if features is None:
        raise SpecError(
            "example",
            "nbscale cannot tell the model's input shape",
            "pass example=<one input batch> or input_shape=(features, ...)",
        )
    return torch.zeros((2, int(features)), dtype=torch.float32)


def _v2(dtype) -> str:
    dt = np.dtype(str(dtype).replace("torch.", "")) if not isinstance(dtype, np.dtype) else dtype
    if dt not in NUMPY_TO_V2:
        raise SpecError(
            "example", f"dtype {dt} cannot be carried by the V2 protocol", "use float32 inputs"
        )
    return NUMPY_TO_V2[dt]


def package(
    model: Any, directory: str | Path, name: str, example: Any = None, input_shape: Any = None
) -> Path:
    """Write ``model`` as an artifact directory and return it."""
    import torch

    out = Path(directory)
    if out.exists() and any(out.iterdir()):
        raise SpecError("directory", f"{out} is not empty", "give an empty or new directory")
    if not isinstance(model, torch.nn.Module) and not callable(getattr(model, "predict", None)):
        raise SpecError(
            "model",
            f"a {type(model).__name__} is neither a torch.nn.Module nor has a predict method",
            "deploy a torch.nn.Module, an object with predict(), or a saved artifact directory",
        )
    x = _example(model, example, input_shape)
    if x.ndim < 1 or x.shape[0] < 1:
        raise SpecError(
            "example", "must have a batch axis first", "pass a batch of at least one row"
        )
    tmp = out.with_name(out.name + f".tmp-{secrets.token_hex(4)}")
    (tmp / "code").mkdir(parents=True)
    try:
        if isinstance(model, torch.nn.Module):
            fmt, model_file = _save_module(model, x, tmp)
            with torch.inference_mode():
                y = model.eval()(x)
            y_np = y.detach().cpu().numpy()
        else:
            import cloudpickle

            fmt, model_file = "pickle", "model.pkl"
            payload = cloudpickle.dumps(model)
            (tmp / model_file).write_bytes(payload)
            (tmp / (model_file + ".hmac")).write_text(
                hmac.new(signing_key(), payload, hashlib.sha256).hexdigest()
            )
            y_np = np.asarray(model.predict(x.numpy()))
        x_np = x.numpy()
        template = (Path(__file__).with_name("inference_template.py")).read_text()
        code = template.replace("__MODEL_FILE__", model_file).replace("__FORMAT__", fmt)
        (tmp / "code" / "inference.py").write_text(code)
        manifest = {
            "name": name,
            "format": fmt,
            "model_file": model_file,
            "created": time.time(),
            "inputs": [TensorSpec("input", (-1, *x_np.shape[1:]), _v2(x_np.dtype)).to_dict()],
            "outputs": [TensorSpec("output", (-1, *y_np.shape[1:]), _v2(y_np.dtype)).to_dict()],
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        tmp.rename(out) if not out.exists() else _move_into(tmp, out)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _move_into(tmp: Path, out: Path) -> None:
    for child in tmp.iterdir():
        child.rename(out / child.name)
    tmp.rmdir()


def _save_module(model, x, tmp: Path) -> tuple[str, str]:
    import torch

    model = model.eval()
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    example = x if x.shape[0] > 1 else torch.cat([x, x])  # a batch of 1 would be specialised away
    try:
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    except Exception as exc:
        raise SpecError(
            "model",
            f"torch.export could not capture the model: {type(exc).__name__}: {exc}",
            "make forward() traceable, or give an object with predict()",
        ) from None
    torch.export.save(program, tmp / "model.pt2")
    return "torch.export", "model.pt2"


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The artifact's manifest; a bare SageMaker artifact without one needs an explicit signature."""
    path = Path(directory) / MANIFEST
    if not Path(directory).is_dir():
        raise SpecError(
            "model_dir",
            f"{directory} is not a directory",
            "give a directory made by %deploy or nbscale.serving.package",
        )
    if not path.is_file():
        raise SpecError(
            "model_dir",
            f"{directory} has no {MANIFEST} with the model's signature",
            f"add {MANIFEST} with inputs/outputs (name, shape with -1 for batch, datatype)",
        )
    data = json.loads(path.read_text())
    for key in ("inputs", "outputs"):
        if not data.get(key):
            raise SpecError(
                MANIFEST, f"has no '{key}'", "list each tensor with name, shape and datatype"
            )
    return data
