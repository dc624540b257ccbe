"""``JobSpec``: what to run and with which resources, the same for every backend.

A spec is validated when it is made; a bad value raises one ``SpecError`` that
names the field and says how to fix it, so nothing half-valid reaches a backend
or the store.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import SpecError

ENTRY_KINDS = ("script", "module", "notebook", "bundle")
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,50}[a-z0-9])?$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RESERVED_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "NBSCALE_JOB_ID")


@dataclass(frozen=True)
class Entry:
    """What a job runs: a script path, a module, a notebook, or a captured cell bundle."""

    kind: str
    target: str
    parameters: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ENTRY_KINDS:
            raise SpecError(
                "entry.kind", f"unknown kind {self.kind!r}", f"use one of {', '.join(ENTRY_KINDS)}"
            )
        if not isinstance(self.target, str) or not self.target:
            raise SpecError(
                "entry.target", "is empty", "give a script path, module name or notebook path"
            )
        if self.parameters and self.kind != "notebook":
            raise SpecError(
                "entry.parameters",
                "parameters go to notebooks only",
                "pass script arguments with args",
            )

    @classmethod
    def from_path(cls, target: str, module: bool = False, parameters: dict | None = None) -> Entry:
        """Guess the kind from a command-line target (``-m`` for modules)."""
        if module:
            return cls("module", target)
        if target.endswith(".ipynb"):
            return cls("notebook", str(Path(target).resolve()), dict(parameters or {}))
        if parameters:
            raise SpecError("parameters", "-p is for notebooks", "pass script arguments after --")
        return cls("script", str(Path(target).resolve()))


def slugify(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:52].strip("-") or "job"


def _positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SpecError(name, f"must be a whole number >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class JobSpec:
    entry: Entry
    name: str = ""
    backend: str | None = None  # None: the configured default backend
    args: tuple[str, ...] = ()
    nodes: int = 1
    procs_per_node: int = 1
    gpus_per_proc: int = 0
    instance_type: str | None = None
    image: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    max_runtime: int | None = None  # seconds
    max_restarts: int = 0
    checkpoint_dir: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.entry, Entry):
            raise SpecError("entry", "must be an Entry", "use Entry.from_path('train.py')")
        if not self.name:
            object.__setattr__(self, "name", slugify(Path(self.entry.target).stem))
        if not _NAME_RE.match(self.name):
            raise SpecError(
                "name",
                f"{self.name!r} is not a valid job name",
                "use lower-case letters, digits and '-', at most 52 characters, e.g. 'digits-ddp'",
            )
        if self.backend is not None and (not isinstance(self.backend, str) or not self.backend):
            raise SpecError(
                "backend", "is empty", "name a backend from 'nbscale config', e.g. local"
            )
        object.__setattr__(self, "args", tuple(str(a) for a in self.args))
        _positive_int("nodes", self.nodes)
        _positive_int("procs_per_node", self.procs_per_node)
        _positive_int("gpus_per_proc", self.gpus_per_proc, minimum=0)
        _positive_int("max_restarts", self.max_restarts, minimum=0)
        if self.max_runtime is not None:
            _positive_int("max_runtime", self.max_runtime)
        for key, value in self.env.items():
            if not _ENV_RE.match(str(key)):
                raise SpecError(
                    "env", f"{key!r} is not a valid variable name", "use letters, digits and '_'"
                )
            if key in _RESERVED_ENV:
                raise SpecError(
                    "env", f"{key} is set by nbscale itself", "choose another variable name"
                )
            if not isinstance(value, str):
                raise SpecError(
                    "env", f"the value of {key} must be a string, got {type(value).__name__}"
                )
        if self.entry.kind == "script" and not Path(self.entry.target).is_file():
            raise SpecError("entry", f"script {self.entry.target} does not exist", "check the path")
        if self.entry.kind == "notebook" and not Path(self.entry.target).is_file():
            raise SpecError(
                "entry", f"notebook {self.entry.target} does not exist", "check the path"
            )

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["args"] = list(self.args)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise SpecError(
                sorted(unknown)[0],
                "is not a JobSpec field",
                f"known fields: {', '.join(sorted(known))}",
            )
        entry = data.pop("entry", None)
        if isinstance(entry, dict):
            entry = Entry(**entry)
        return cls(entry=entry, **data)

    def replace(self, **changes: Any) -> JobSpec:
        return dataclasses.replace(self, **changes)
