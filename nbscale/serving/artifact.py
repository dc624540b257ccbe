"""Model artifacts in the SageMaker PyTorch inference layout.

    model_dir/
      model.pt2            torch.export program (a torch.nn.Module), or
      model.pkl            a pickle (any object with ``predict``)
      model.lean.py/.pt    model.pt2 as served, readable without torch.export
                           (``exported``: a fresh replica starts 1-2 s sooner)
      code/inference.py    model_fn, input_fn, predict_fn, output_fn
      nbscale.json         name, format, signature (V2 metadata)
      nbscale.sig          sha256 of every file above, HMAC-signed

The layout is SageMaker's, but nbscale's runtime (the nbscale serving image) is what
serves it: ``code/inference.py`` needs nbscale, and no stock container's torch is checked.
Every file of the artifact is signed: ``nbscale.sig`` lists each file with
its sha256 and carries an HMAC of that list with the ``model`` key
(``nbscale.keys``). The runtime checks it before it imports
``code/inference.py`` or loads a weight, so an edited handler or a swapped
pickle is refused; after editing ``code/inference.py`` on purpose, sign the
artifact again with ``python -m nbscale.serving.artifact sign DIR``.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SignatureError, SpecError
from ..keys import sign as keyed_mac
from ..keys import verify as keyed_verify
from ..words import count
from .protocol import NUMPY_TO_V2, TensorSpec

MANIFEST = "nbscale.json"
SIGNATURE = "nbscale.sig"
PURPOSE = "model"
_SKIPPED_DIRS = {"__pycache__"}  # bytecode is never read from the artifact (see verify)


def _files(directory: Path) -> dict[str, str]:
    out = {}
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory)
        if path.is_dir() or rel.as_posix() == SIGNATURE or _SKIPPED_DIRS & set(rel.parts):
            continue
        out[rel.as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def sign(directory: str | Path) -> Path:
    """Sign every file of the artifact with this home's (or the delivered) model key."""
    directory = Path(directory)
    files = _files(directory)
    body = json.dumps(files, sort_keys=True).encode()
    doc = {"files": files, "hmac": keyed_mac(body, PURPOSE)}
    tmp = directory / f".{SIGNATURE}.{secrets.token_hex(4)}"
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
    tmp.replace(directory / SIGNATURE)
    return directory / SIGNATURE


def verify(directory: str | Path) -> dict[str, str]:
    """Refuse an artifact any file of which changed, appeared or went missing since it was
    signed. Call before importing its code or loading its model; afterwards bytecode is
    cached outside the artifact so a planted ``.pyc`` is never read."""
    directory = Path(directory)
    where = directory / SIGNATURE
    try:
        doc = json.loads(where.read_text())
        signed, mac = doc["files"], doc["hmac"]
    except FileNotFoundError:
        raise SignatureError(
            f"{directory} is not signed (no {SIGNATURE}); refusing to load it",
            f"if you trust it, sign it: python -m nbscale.serving.artifact sign {directory}",
        ) from None
    except (ValueError, KeyError, TypeError):
        raise SignatureError(f"{where} is damaged; refusing to load the model") from None
    body = json.dumps(signed, sort_keys=True).encode()
    if not keyed_verify(body, mac, PURPOSE):
        raise SignatureError(
            f"{directory}: the signature does not match the model key; refusing to load it",
            "it was signed by another nbscale home, or its signature was edited",
        )
    found = _files(directory)
    changed = sorted(n for n in signed if found.get(n) != signed[n])
    added = sorted(n for n in found if n not in signed)
    if changed or added:
        what = ", ".join([*(f"{n} changed" for n in changed), *(f"{n} added" for n in added)])
        raise SignatureError(
            f"{directory}: {what} after the artifact was signed; nothing was imported or loaded",
            f"if you made the change, sign it again: python -m nbscale.serving.artifact sign "
            f"{directory}",
        )
    if sys.pycache_prefix is None:
        import tempfile

        sys.pycache_prefix = tempfile.mkdtemp(prefix="nbscale-pycache-")
    return signed


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
        lean_form = None
        if isinstance(model, torch.nn.Module):
            fmt, model_file = _save_module(model, x, tmp)
            lean_form = _lean_form(tmp, x)
            with torch.inference_mode():
                y = model.eval()(x)
            y_np = y.detach().cpu().numpy()
        else:
            import cloudpickle

            fmt, model_file = "pickle", "model.pkl"
            payload = cloudpickle.dumps(model)
            (tmp / model_file).write_bytes(payload)
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
        if lean_form is not None:
            manifest["lean_form"] = lean_form
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        sign(tmp)
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


def _lean_form(tmp: Path, x) -> dict | None:
    """The saved program's lean form (``exported``), from the program as a replica loads it;
    None where it has none. It only makes a replica start sooner: a failure to make it leaves
    the artifact as it would be without it, served through ``torch.export.load``."""
    import torch

    from .exported import LEAN_CODE, LEAN_TENSORS, write_lean_form

    example = x if x.shape[0] > 1 else torch.cat([x, x])
    try:
        return write_lean_form(torch.export.load(str(tmp / "model.pt2")), tmp, example)
    except Exception:  # noqa: BLE001 - see above
        for name in (LEAN_CODE, LEAN_TENSORS):
            (tmp / name).unlink(missing_ok=True)
        return None


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


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m nbscale.serving.artifact")
    parser.add_argument("action", choices=["sign", "verify"])
    parser.add_argument("directory")
    args = parser.parse_args(argv)
    try:
        read_manifest(args.directory)
        if args.action == "sign":
            print(
                f"signed {count(len(_files(Path(args.directory))), 'file')}: {sign(args.directory)}"
            )
        else:
            checked = count(len(verify(args.directory)), "file")
            print(f"ok: {checked} checked against the signature")
    except (SpecError, SignatureError) as exc:
        print(f"nbscale: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
