"""One TOML file names the backends and the defaults.

``$NBSCALE_HOME/config.toml`` is read first and an ``nbscale.toml`` in the
working directory overrides it, table by table. ``local`` works with no file.

    default_backend = "local"

    [defaults]
    procs_per_node = 2

    [backends.gpu-box]
    type = "local"

    [backends.prod]
    type = "sagemaker"
    region = "eu-west-1"
    role_arn = "arn:aws:iam::123:role/train"
"""

from __future__ import annotations

import functools
import re
import tomllib
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

from . import paths
from .errors import NotFound, SpecError

#: the entry-point group where platform packages register (``nbscale.backends.platform``);
#: its names are the ``type = "..."`` values a ``[backends.NAME]`` table may have
PLATFORM_GROUP = "nbscale.platforms"
_SECRET_RE = re.compile(
    r"(secret|token|password|passwd|credential|api_?key|access_?key|private)", re.I
)
MASK = "********"


@dataclass(frozen=True)
class BackendConfig:
    name: str
    type: str
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    default_backend: str = "local"
    defaults: dict[str, Any] = field(default_factory=dict)
    backends: dict[str, BackendConfig] = field(default_factory=dict)
    sources: tuple[str, ...] = ()

    def backend(self, name: str | None = None) -> BackendConfig:
        name = name or self.default_backend
        if name in self.backends:
            return self.backends[name]
        known = ", ".join(sorted(self.backends)) or "(none)"
        raise NotFound(
            f"unknown backend {name!r}",
            f"known backends: {known}; add [backends.{name}] to nbscale.toml or ~/.nbscale/config.toml",
        )

    def to_dict(self, masked: bool = True) -> dict[str, Any]:
        backends = {
            b.name: {"type": b.type, **(mask_secrets(b.settings) if masked else b.settings)}
            for b in self.backends.values()
        }
        return {
            "default_backend": self.default_backend,
            "defaults": dict(self.defaults),
            "backends": backends,
            "sources": list(self.sources),
        }


@functools.cache
def platform_entry_points() -> dict[str, EntryPoint]:
    """The installed platforms' entry points by type (nothing of them is imported here)."""
    return {ep.name: ep for ep in entry_points(group=PLATFORM_GROUP)}


def looks_secret(key: str) -> bool:
    """Whether a name (a config key, an environment variable) looks like it holds a secret."""
    return bool(_SECRET_RE.search(str(key)))


def mask_secrets(value: Any, key: str = "") -> Any:
    """Replace every value whose key looks like a secret, at any depth."""
    if isinstance(value, dict):
        return {k: mask_secrets(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_secrets(v, key) for v in value]
    if key and _SECRET_RE.search(key) and value not in (None, ""):
        return MASK
    return value


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read(path: Path) -> dict:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(
            str(path), f"is not valid TOML: {exc}", "fix the file or remove it"
        ) from exc


def config_files(cwd: Path | None = None) -> list[Path]:
    candidates = [paths.home() / "config.toml", (cwd or Path.cwd()) / "nbscale.toml"]
    return [p for p in candidates if p.is_file()]


def load(cwd: Path | None = None) -> Config:
    raw: dict[str, Any] = {}
    files = config_files(cwd)
    for path in files:
        raw = _merge(raw, _read(path))
    unknown = set(raw) - {"default_backend", "defaults", "backends"}
    if unknown:
        raise SpecError(
            f"config key {sorted(unknown)[0]!r}",
            "is not known",
            "use default_backend, [defaults] and [backends.NAME]",
        )
    backends = {"local": BackendConfig("local", "local", {})}
    for name, table in (raw.get("backends") or {}).items():
        if not isinstance(table, dict):
            raise SpecError(
                f"backends.{name}", "must be a table", f"write [backends.{name}] with type = ..."
            )
        settings = dict(table)
        btype = settings.pop("type", None)
        types = sorted(platform_entry_points())
        if btype not in types:
            raise SpecError(
                f"backends.{name}.type",
                f"must be one of {', '.join(types)} (the installed platforms), got {btype!r}",
                f'set type = "local" (or another installed platform) in [backends.{name}], '
                "or install the package that provides it",
            )
        backends[name] = BackendConfig(name, btype, settings)
    default = raw.get("default_backend", "local")
    if default not in backends:
        raise SpecError(
            "default_backend",
            f"names {default!r}, which is not configured",
            f"add [backends.{default}] or set default_backend to one of {', '.join(sorted(backends))}",
        )
    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise SpecError(
            "defaults", "must be a table", "write [defaults] with keys such as procs_per_node"
        )
    return Config(default, defaults, backends, tuple(str(p) for p in files))
