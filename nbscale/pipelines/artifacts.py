"""Values passed between steps, saved in the format that suits them.

torch tensors and modules go through ``torch.save``, numpy arrays through
``numpy.save``, pandas frames through parquet when pyarrow is there (pickle
otherwise), everything else through cloudpickle. A ``manifest.json`` names
each file, its format and its sha256, which the cache uses as the input hash.
This module runs inside the step's kernel, so it imports heavy libraries only
for values that need them.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


class ArtifactError(Exception):
    pass


def _kind(value: Any) -> str:
    module = type(value).__module__.split(".")[0]
    if module == "torch":
        import torch

        if isinstance(value, torch.Tensor | torch.nn.Module):
            return "torch"
    if module == "numpy" and type(value).__name__ == "ndarray" and value.dtype != object:
        return "numpy"
    if module == "pandas" and type(value).__name__ in ("DataFrame", "Series"):
        return "pandas"
    return "pickle"


def signing_key(create: bool = True) -> bytes:
    """The ``pipeline`` key (``nbscale.keys``): this home's, or the one the platform
    delivered to the step's container; a step unpickles only what a step holding it wrote."""
    from ..keys import load

    return load("pipeline", create=create)


def _signature(entries: dict[str, Any], create: bool = True) -> str:
    payload = json.dumps(entries, sort_keys=True).encode()
    return hmac.new(signing_key(create), payload, hashlib.sha256).hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write(value: Any, base: Path) -> tuple[str, str]:
    kind = _kind(value)
    if kind == "torch":
        import torch

        path = base.with_suffix(".pt")
        torch.save(value, path)
    elif kind == "numpy":
        import numpy

        path = base.with_suffix(".npy")
        numpy.save(path, value, allow_pickle=False)
    elif kind == "pandas":
        frame = value.to_frame() if type(value).__name__ == "Series" else value
        try:
            import pyarrow  # noqa: F401

            path = base.with_suffix(".parquet")
            frame.to_parquet(path)
            kind = "parquet" if frame is value else "parquet-series"
        except (ImportError, ValueError):
            path = base.with_suffix(".pkl")
            value.to_pickle(path)
            kind = "pandas-pickle"
    else:
        import cloudpickle

        path = base.with_suffix(".pkl")
        with path.open("wb") as fh:
            cloudpickle.dump(value, fh)
    return kind, path.name


def save(
    namespace: dict[str, Any], names: list[str], directory: str | os.PathLike
) -> dict[str, Any]:
    """Write ``names`` from ``namespace``; a missing or unsaveable name raises with the name in it."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {}
    for name in names:
        if name not in namespace:
            raise ArtifactError(
                f"the step did not define {name!r}, which a later step reads "
                "(was the cell that defines it skipped by an if?)"
            )
        try:
            kind, filename = _write(namespace[name], out / name)
        except Exception as exc:
            raise ArtifactError(
                f"cannot save {name!r} ({type(namespace[name]).__name__}) for the next step: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        manifest[name] = {
            "file": filename,
            "format": kind,
            "sha256": _sha256(out / filename),
            "type": f"{type(namespace[name]).__module__}.{type(namespace[name]).__qualname__}",
        }
    # the manifest is written last, by rename, so a half-saved step never looks complete
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"values": manifest, "hmac": _signature(manifest)}, indent=1))
    tmp.replace(out / MANIFEST)
    return manifest


def read_manifest(directory: str | os.PathLike, verify: bool = False) -> dict[str, Any] | None:
    path = Path(directory) / MANIFEST
    try:
        data = json.loads(path.read_text())
        values = data["values"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if verify and not hmac.compare_digest(
        str(data.get("hmac", "")), _signature(values, create=False)
    ):
        raise ArtifactError(
            f"the manifest in {directory} is not signed with this pipeline's key; nothing was "
            "loaded (a step in a container needs the key its platform delivers: "
            "NBSCALE_KEY_FILE or NBSCALE_KEY_SECRET_ARN)"
        )
    return values


def _read(entry: dict[str, Any], directory: Path) -> Any:
    """Hash the bytes, then load from those same bytes: the file cannot be swapped between
    the check and the load."""
    path = directory / entry["file"]
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise ArtifactError(f"{path} changed after it was written; nothing was loaded")
    kind = entry["format"]
    buf = io.BytesIO(data)
    if kind == "torch":
        import torch

        return torch.load(buf, weights_only=False)
    if kind == "numpy":
        import numpy

        return numpy.load(buf, allow_pickle=False)
    if kind in ("parquet", "parquet-series"):
        import pandas

        frame = pandas.read_parquet(buf)
        return frame.iloc[:, 0] if kind == "parquet-series" else frame
    if kind == "pandas-pickle":
        import pandas

        return pandas.read_pickle(buf)
    import cloudpickle

    return cloudpickle.loads(data)


def load(namespace: dict[str, Any], sources: dict[str, str]) -> None:
    """Put each ``name -> directory`` value into ``namespace``; these files are this run's own."""
    for name, directory in sources.items():
        manifest = read_manifest(directory, verify=True)
        if manifest is None or name not in manifest:
            raise ArtifactError(
                f"input {name!r} is missing from {directory}; run the step that makes it"
            )
        namespace[name] = _read(manifest[name], Path(directory))


def digest(sources: dict[str, str]) -> dict[str, str]:
    """sha256 of each input, from the producers' manifests (no file is read again)."""
    out = {}
    for name, directory in sources.items():
        manifest = read_manifest(directory) or {}
        out[name] = manifest.get(name, {}).get("sha256", "missing")
    return out


if __name__ == "__main__":  # pragma: no cover - debugging aid: list a step's outputs
    print(json.dumps(read_manifest(sys.argv[1]), indent=1))
