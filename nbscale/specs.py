"""``JobSpec``: what to run and with which resources, the same for every backend.

A spec is validated when it is made; a bad value raises one ``SpecError`` that
names the field and says how to fix it, so nothing half-valid reaches a backend
or the store.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import looks_secret, mask_secrets
from .errors import SpecError

ENTRY_KINDS = ("script", "module", "notebook", "bundle")
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,50}[a-z0-9])?$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RESERVED_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "NBSCALE_JOB_ID")
_PARAM_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# The most any backend can honour; a backend may allow less (``JobBackend.limits``).
# SageMaker caps a training job at 28 days; no platform nbscale targets runs more
# nodes in one job than this, and nothing is gained from more restarts.
MAX_RESOURCES = {
    "nodes": 512,
    "procs_per_node": 128,
    "gpus_per_proc": 16,
    "max_restarts": 100,
    "max_runtime": 28 * 24 * 3600,
}


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
        if not isinstance(self.parameters, dict):
            raise SpecError("entry.parameters", "must be a mapping of name to value")
        for name in self.parameters:
            if not isinstance(name, str) or not _PARAM_RE.match(name) or name == "_":
                raise SpecError(
                    "entry.parameters",
                    f"{name!r} is not a Python name, so the notebook cannot receive it",
                    "use letters, digits and '_', not starting with a digit, e.g. -p learning_rate 0.1",
                )

    @classmethod
    def from_path(cls, target: str, module: bool = False, parameters: dict | None = None) -> Entry:
        """Guess the kind from a command-line target (``-m`` for modules)."""
        if module:
            return cls("module", target)
        if target.endswith(".ipynb"):
            path = Path(target).resolve()
            if path.is_file():
                check_notebook_file(path)
            return cls("notebook", str(path), dict(parameters or {}))
        if parameters:
            raise SpecError("parameters", "-p is for notebooks", "pass script arguments after --")
        return cls("script", str(Path(target).resolve()))


def check_notebook_file(path: Path) -> None:
    """Refuse a ``.ipynb`` that is not a notebook (not JSON, or JSON without cells)."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise SpecError(
            "entry",
            f"{path} is not a notebook: it is not valid JSON ({exc})",
            "save it again from Jupyter, or check that it is the right file",
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        raise SpecError(
            "entry",
            f"{path} is not a notebook: it has no list of cells",
            "save it again from Jupyter, or check that it is the right file",
        )


def shown(data: dict[str, Any]) -> dict[str, Any]:
    """A record or spec dict fit to show: secret-looking ``env`` and ``tags`` values masked.

    New specs never hold such values (they move to ``secret_env``); this also
    covers rows written before that, and specs made by other tools.
    """
    out = dict(data)
    if isinstance(out.get("spec"), dict):
        out["spec"] = shown(out["spec"])
    for key in ("env", "tags"):
        if isinstance(out.get(key), dict):
            out[key] = mask_secrets(out[key])
    return out


def slugify(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:52].strip("-") or "job"


def _positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SpecError(name, f"must be a whole number >= {minimum}, got {value!r}")
    top = MAX_RESOURCES.get(name)
    if top is not None and value > top:
        raise SpecError(
            name,
            f"must be at most {top}, got {value}",
            f"ask for {top} or fewer; no backend nbscale runs on can honour more",
        )


MAX_COST_USD = 1_000_000  # a budget above this is a typo (inf and nan fail the range too)


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
    max_cost: float | None = None  # USD: refused when the estimate is over, stopped when reached
    # cloud spot/preemptible capacity (SageMaker managed spot); None: the backend's default
    spot: bool | None = None
    # the folder that travels with a remote job and is its working directory there (a
    # script's or notebook's folder by default; a %%train cell's: the kernel's working folder)
    workdir: str | None = None
    # Python packages a remote job installs before it starts: a pip requirements file, or
    # "auto" (the kernel's versions of what the job imports); None: requirements.txt in workdir
    requirements: str | None = None
    # names of variables whose values come from the submitting environment and
    # are handed to the job without ever being stored or shown
    secret_env: tuple[str, ...] = ()
    # their values: in memory only, never in ``to_dict`` (the store, spec.json, answers)
    secret_values: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

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
        if self.max_cost is not None and (
            isinstance(self.max_cost, bool)
            or not isinstance(self.max_cost, int | float)
            or not 0 < self.max_cost <= MAX_COST_USD
        ):
            raise SpecError(
                "max_cost",
                f"must be a number of USD above 0 and at most {MAX_COST_USD:,}, "
                f"got {self.max_cost!r}",
                "e.g. 25",
            )
        if self.spot is not None and not isinstance(self.spot, bool):
            raise SpecError("spot", f"must be true or false, got {self.spot!r}")
        self._check_travel()
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
        self._split_secrets()
        if self.entry.kind == "script" and not Path(self.entry.target).is_file():
            raise SpecError("entry", f"script {self.entry.target} does not exist", "check the path")
        if self.entry.kind == "notebook" and not Path(self.entry.target).is_file():
            raise SpecError(
                "entry", f"notebook {self.entry.target} does not exist", "check the path"
            )

    def _check_travel(self) -> None:
        if self.workdir is None and self.entry.kind in ("script", "notebook"):
            object.__setattr__(self, "workdir", str(Path(self.entry.target).resolve().parent))
        elif self.workdir is None and self.entry.kind == "bundle":
            # a %%train cell's spec is made in the kernel: its working folder travels
            object.__setattr__(self, "workdir", os.getcwd())
        if self.workdir is not None:
            if not isinstance(self.workdir, str) or not self.workdir:
                raise SpecError("workdir", "must be a folder path")
            object.__setattr__(self, "workdir", str(Path(self.workdir).expanduser().resolve()))
        req = self.requirements
        if req is None or req == "auto":
            return
        if not isinstance(req, str) or not req:
            raise SpecError(
                "requirements", f"must be a file or auto, got {req!r}", "e.g. requirements.txt"
            )
        path = Path(req).expanduser().resolve()
        if not path.is_file():
            raise SpecError(
                "requirements",
                f"{path} is not a file",
                "give a pip requirements file, or auto to pin the kernel's versions of what "
                "the job imports",
            )
        object.__setattr__(self, "requirements", str(path))

    def _split_secrets(self) -> None:
        """Move secret-looking ``env`` entries out of the spec and read ``secret_env`` values.

        A key such as ``MY_API_TOKEN`` keeps its value in ``secret_values`` only
        (memory); the spec that is stored and shown lists its name in ``secret_env``.
        """
        if isinstance(self.secret_env, str):
            object.__setattr__(self, "secret_env", (self.secret_env,))
        names = list(dict.fromkeys(str(n) for n in self.secret_env))
        values = dict(self.secret_values or {})
        env = {}
        for key, value in self.env.items():
            if looks_secret(key):
                values[key] = value
                if key not in names:
                    names.append(key)
            else:
                env[key] = value
        for name in names:
            if not _ENV_RE.match(name):
                raise SpecError(
                    "secret_env",
                    f"{name!r} is not a valid variable name",
                    "use letters, digits and '_'",
                )
            if name in _RESERVED_ENV:
                raise SpecError(
                    "secret_env", f"{name} is set by nbscale itself", "choose another name"
                )
            if name in env:
                raise SpecError("secret_env", f"{name} is also given with --env", "give it once")
            if name not in values:
                if name not in os.environ:
                    raise SpecError(
                        "secret_env",
                        f"{name} is not set in this environment",
                        f"export {name}=... before submitting (its value is passed to the job, never stored)",
                    )
                values[name] = os.environ[name]
        object.__setattr__(self, "env", env)
        object.__setattr__(self, "secret_env", tuple(names))
        object.__setattr__(self, "secret_values", values)

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("secret_values")
        data["args"] = list(self.args)
        data["secret_env"] = list(self.secret_env)
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
