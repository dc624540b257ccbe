"""Tampering with signed files the way an attacker with write access would (R7), and traps that
show whether tampered code or pickles were ever run."""

from __future__ import annotations

import hashlib
import json
import pickle
import sys
import zipfile
from pathlib import Path


class Trap:
    """Unpickling this creates a file: proof that something was unpickled."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def rewrite_part(path: Path, part: str, data: bytes, fix_hash: bool) -> None:
    """Replace one part, as an attacker would: with or without updating the manifest's hash."""
    with zipfile.ZipFile(path) as zf:
        entries = {n: zf.read(n) for n in zf.namelist()}
    entries[part] = data
    if fix_hash:
        manifest = json.loads(entries["manifest.json"])
        manifest["parts"][part]["sha256"] = hashlib.sha256(data).hexdigest()
        entries["manifest.json"] = json.dumps(manifest, sort_keys=True).encode()
    path.unlink()
    with zipfile.ZipFile(path, "w") as zf:
        for name, value in entries.items():
            zf.writestr(name, value)


IMPORT_TRAP = "\nopen({marker!r}, 'w').close()  # planted: runs when the module is imported\n"


def tamper_model(art: Path, how: str, marker: Path) -> str:
    """Change the artifact as an attacker would; return what the refusal must name."""
    code = art / "code" / "inference.py"
    if how == "swapped pickle":
        (art / "model.pkl").write_bytes(pickle.dumps(Trap(marker)))
        return "model.pkl changed"
    if how == "edited inference.py":
        code.write_text(code.read_text() + IMPORT_TRAP.format(marker=str(marker)))
        return "code/inference.py changed"
    if how == "added helper module":
        (art / "code" / "helper.py").write_text(IMPORT_TRAP.format(marker=str(marker)))
        return "code/helper.py added"
    if how == "signature rewritten":
        code.write_text(code.read_text() + IMPORT_TRAP.format(marker=str(marker)))
        sig = json.loads((art / "nbscale.sig").read_text())
        sig["files"]["code/inference.py"] = hashlib.sha256(code.read_bytes()).hexdigest()
        (art / "nbscale.sig").write_text(json.dumps(sig))
        return "signature does not match the model key"
    if how == "planted bytecode":
        # a .pyc beside the code: never read, bytecode is cached outside the artifact
        cache = art / "code" / "__pycache__"
        cache.mkdir()
        tag = sys.implementation.cache_tag
        (cache / f"inference.{tag}.pyc").write_bytes(b"not bytecode")
        return ""
    raise AssertionError(how)
