"""Signed bundles: a cell with its inputs going out, and the results coming back.

A bundle is one zip file (stored, not compressed: tensors do not shrink and
speed matters) holding ``manifest.json``, ``manifest.sig`` and the parts. The
manifest records what the bundle is (``kind``), the versions it was made with
and the sha256 and size of every part; ``manifest.sig`` is the HMAC-SHA256 of
the manifest bytes with the ``bundle`` key (``nbscale.keys``: this home's,
or the one a platform secret delivers to a container). Readers check the signature, then each part's hash, and only then
hand bytes to anything that unpickles them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import platform
import secrets
import sys
import time
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from . import keys, paths
from .errors import NbscaleError, SignatureError

FORMAT = 1
PURPOSE = "bundle"
_MANIFEST, _SIGNATURE = "manifest.json", "manifest.sig"


def load_key(create: bool = True) -> bytes:
    """This home's bundle key, or the one the platform delivered (``nbscale.keys``)."""
    return keys.load(PURPOSE, create=create)


def sign(data: bytes, key: bytes) -> str:
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def versions() -> dict[str, str]:
    torch = sys.modules.get("torch")
    out = {"python": platform.python_version(), "cloudpickle": metadata.version("cloudpickle")}
    try:
        # metadata, not import: importing torch would cost the kernel seconds
        out["torch"] = torch.__version__ if torch else metadata.version("torch")
    except metadata.PackageNotFoundError:
        out["torch"] = "none"
    return out


@dataclass
class Bundle:
    path: Path
    manifest: dict[str, Any]
    parts: dict[str, bytes]

    def part(self, name: str) -> bytes:
        try:
            return self.parts[name]
        except KeyError:
            raise SignatureError(f"{self.path}: the manifest names no part {name!r}") from None


def _entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o600 << 16
    return info


def write(
    path: str | Path, manifest: dict[str, Any], parts: dict[str, bytes], key: bytes | None = None
) -> Path:
    """Sign and write atomically (a reader never sees half a bundle)."""
    key = key or load_key()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest = {
        **manifest,
        "format": FORMAT,
        "versions": manifest.get("versions") or versions(),
        "parts": {
            name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
            for name, data in parts.items()
        },
    }
    body = json.dumps(manifest, sort_keys=True).encode()
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            # fixed entry dates: the same cell makes the same bytes, so a content-addressed
            # upload of an unchanged bundle is found in the store and not sent again
            zf.writestr(_entry(_MANIFEST), body)
            zf.writestr(_entry(_SIGNATURE), sign(body, key))
            for name, data in parts.items():
                zf.writestr(_entry(name), data)
        os.chmod(tmp, 0o600)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read(path: str | Path, kind: str, key: bytes | None = None) -> Bundle:
    """Open and verify; raises ``SignatureError`` before any part could be unpickled."""
    path = Path(path)
    key = key or load_key(create=False)
    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise NbscaleError(f"{path} does not exist") from None
    except zipfile.BadZipFile:
        raise SignatureError(f"{path} is not an nbscale bundle (damaged or replaced)") from None
    with zf:
        try:
            body, signature = zf.read(_MANIFEST), zf.read(_SIGNATURE).decode()
        except (KeyError, UnicodeDecodeError):
            raise SignatureError(f"{path} has no valid signed manifest") from None
        if not hmac.compare_digest(sign(body, key), signature):
            raise SignatureError(
                f"{path}: signature does not match; refusing to load it",
                "it was changed after it was signed, or signed with another nbscale home's key",
            )
        manifest = json.loads(body)
        if manifest.get("kind") != kind:
            raise SignatureError(f"{path} is a {manifest.get('kind')!r} file, not a {kind!r}")
        parts: dict[str, bytes] = {}
        names = set(zf.namelist())
        for name, meta in manifest["parts"].items():
            if name not in names:
                raise SignatureError(f"{path}: part {name} is missing")
            data = zf.read(name)
            if not hmac.compare_digest(hashlib.sha256(data).hexdigest(), meta["sha256"]):
                raise SignatureError(
                    f"{path}: part {name} does not match its signed hash; refusing to load it"
                )
            parts[name] = data
    return Bundle(path, manifest, parts)


def bundles_dir() -> Path:
    path = paths.home() / "bundles"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def new_bundle_path(name: str) -> Path:
    return bundles_dir() / f"{name}-{int(time.time())}-{secrets.token_hex(3)}.zip"


def tree_digest(entries: list[tuple[str, bool, str]]) -> str:
    """The name of a folder by content: ``(posix path, executable, sha256 of the file)`` of
    every file, in path order. The client names the folder a job ships with it
    (``nbscale.codefolder``); the container checks what it unpacked against it."""
    total = hashlib.sha256()
    for rel, executable, sha in sorted(entries):
        total.update(f"{rel}\0{'x' if executable else '-'}\0{sha}\n".encode())
    return total.hexdigest()


def sign_name(name: str, key: bytes | None = None) -> str:
    """The HMAC of a content name (a folder's digest, a wheelhouse's sha256) with the bundle
    key, so the container trusts what it fetched only when this home named it."""
    return sign(name.encode(), key or load_key())


def check_name(name: str, signature: str, key: bytes | None = None) -> bool:
    return hmac.compare_digest(sign(name.encode(), key or load_key(create=False)), signature)
