"""The stock images a platform may run a job in, chosen by the kernel's versions.

A pickled cell, result or export made with one torch or Python version may not load in
another, so a job without an ``image`` of its own runs in a stock image whose torch
``major.minor`` and Python ``major.minor`` are the kernel's, with a GPU build when the node
has GPUs. Each platform ships its table as a data file beside its code
(``nbscale/backends/<platform>/images.json``); a user adds entries of the same shape in
``$NBSCALE_HOME/images/<platform>.json`` (read after the shipped one: a user's entry with
the same name replaces the shipped one). When nothing fits, the submit is refused before
anything is uploaded, naming the nearest images and the ``image =`` setting.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from .. import paths
from ..errors import NbscaleError, SpecError
from ..words import count

USER_FOLDER = "images"


@dataclass(frozen=True)
class Versions:
    """``torch`` and ``python`` as ``major.minor`` (what decides whether a pickle loads)."""

    torch: str
    python: str

    def __str__(self) -> str:
        return f"torch {self.torch} and Python {self.python}"


def major_minor(text: str) -> str:
    """``"2.5.1+cu124"`` -> ``"2.5"``; ``"3.11"`` -> ``"3.11"``."""
    try:
        release = Version(str(text)).release
    except InvalidVersion:
        raise NbscaleError(f"{text!r} is not a version number") from None
    return ".".join(str(p) for p in (release + (0,))[:2])


def kernel_versions() -> Versions:
    """This process's torch (imported, else installed) and Python versions."""
    torch = sys.modules.get("torch")
    try:
        found = torch.__version__ if torch is not None else metadata.version("torch")
    except metadata.PackageNotFoundError:
        raise NbscaleError(
            "torch is not installed here, so no stock image can be matched to it",
            "install torch, or set image = ... to an image of your own",
        ) from None
    return Versions(major_minor(str(found)), f"{sys.version_info[0]}.{sys.version_info[1]}")


def _distance(a: str, b: str) -> int:
    (a1, a2), (b1, b2) = (int(x) for x in a.split(".")), (int(x) for x in b.split("."))
    return abs((a1 * 100 + a2) - (b1 * 100 + b2))


def user_table(platform: str) -> tuple[Path, dict[str, Any]]:
    """``$NBSCALE_HOME/images/<platform>.json``, or an empty table when there is none."""
    path = paths.home() / USER_FOLDER / f"{platform}.json"
    if not path.exists():
        return path, {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise NbscaleError(
            f"{path} is not a JSON image table: {exc}",
            f"fix it (same shape as nbscale/backends/{platform}/images.json) or remove it",
        ) from None
    if not isinstance(data, dict):
        raise NbscaleError(f"{path} must hold a JSON object", "see docs/platforms")
    return path, data


@lru_cache(maxsize=8)
def shipped_table(path: str) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def merged(platform: str, shipped: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    """The shipped table with the user's entries over it: for each list in ``keys`` the
    user's entries come first (so they win a tie) and replace shipped ones of the same
    ``name``; every other key (a mapping) is updated key by key."""
    base = shipped_table(str(shipped))
    where, extra = user_table(platform)
    out: dict[str, Any] = {}
    for key, value in base.items():
        if key.startswith("_"):
            continue
        if key in keys:
            mine = extra.get(key) or []
            if not isinstance(mine, list) or not all(
                isinstance(e, dict) and e.get("name") for e in mine
            ):
                raise NbscaleError(
                    f"{where}: {key!r} must be a list of objects, each with a name",
                    f"see nbscale/backends/{platform}/images.json for the shape",
                )
            names = {e["name"] for e in mine}
            out[key] = [*mine, *(e for e in value if e["name"] not in names)]
        elif isinstance(value, dict):
            out[key] = {**value, **(extra.get(key) or {})}
        else:
            out[key] = value
    return out


@dataclass(frozen=True)
class Candidate:
    """One image of a table, as it would be used here."""

    uri: str
    torch: str  # major.minor
    python: str  # major.minor
    processor: str  # "cpu" or "gpu"

    def describe(self) -> str:
        return f"{self.uri} (torch {self.torch}, Python {self.python}, {self.processor})"


def choose(
    candidates: list[Candidate],
    want: Versions,
    processor: str,
    what: str,
    setting: str,
    platform: str,
    where: str = "",
) -> str:
    """The first candidate with ``want``'s versions and ``processor``; else one
    ``SpecError`` naming the nearest candidates and the ``image`` setting."""
    for c in candidates:
        if (c.torch, c.python, c.processor) == (want.torch, want.python, processor):
            return c.uri
    same_kind = [c for c in candidates if c.processor == processor] or candidates
    by_torch = sorted(
        same_kind,
        key=lambda c: (_distance(c.torch, want.torch), _distance(c.python, want.python)),
    )
    nearest = by_torch[:2]
    same_python = [c for c in by_torch if c.python == want.python]  # the closest torch on it
    if same_python and same_python[0] not in nearest:
        nearest.append(same_python[0])
    names = "; ".join(c.describe() for c in nearest) or "(the table is empty)"
    raise SpecError(
        "image",
        f"no {what} image{where} has the kernel's {want} ({processor}), so pickled cells and "
        f"results could not be trusted to load there; nearest: {names}",
        f"set {setting} to an image with nbscale and your versions, add an entry for them to "
        f"{paths.home() / USER_FOLDER / (platform + '.json')} (docs/platforms/{platform}.md), "
        "or run the kernel on the versions of one of those images",
    )


def node_shape(spec: dict[str, Any], instance: str, gpus: int, kind: str) -> dict[str, Any]:
    """``spec`` with the shape a node of ``gpus`` GPUs (``instance``, a ``kind`` such as
    "instance type" or "node type", for messages) really runs: on a GPU node every process
    gets GPUs (1 unless ``gpus_per_proc`` says more) and ``procs_per_node`` left at 1
    becomes one process per ``gpus_per_proc`` GPUs of the node, so an 8-GPU node runs 8
    processes; more GPUs than the node has are refused. On a node without GPUs, GPUs per
    process are refused and the spec is kept."""
    procs = int(spec.get("procs_per_node") or 1)
    per_proc = int(spec.get("gpus_per_proc") or 0)
    if not gpus:
        if per_proc:
            raise SpecError(
                "gpus_per_proc",
                f"{instance} has no GPU",
                f"pick a GPU {kind} with --instance-type or drop --gpus-per-proc",
            )
        return spec
    per_proc = per_proc or 1
    if per_proc > gpus:
        raise SpecError(
            "gpus_per_proc",
            f"{count(per_proc, 'GPU')} per process, but {instance} has {gpus}",
            f"ask for at most --gpus-per-proc {gpus}, or a larger {kind}",
        )
    if procs == 1:
        procs = gpus // per_proc
    elif procs * per_proc > gpus:
        raise SpecError(
            "procs_per_node",
            f"{count(procs, 'process')} x {count(per_proc, 'GPU')} need "
            f"{count(procs * per_proc, 'GPU')}, but {instance} has {gpus}",
            f"ask for at most {gpus // per_proc} processes per node, or a larger {kind}",
        )
    if (procs, per_proc) == (spec.get("procs_per_node"), spec.get("gpus_per_proc")):
        return spec
    return {**spec, "procs_per_node": procs, "gpus_per_proc": per_proc}
