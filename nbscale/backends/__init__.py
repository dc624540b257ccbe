"""Backends are found through the ``nbscale.backends`` entry-point group.

``[backends.NAME] type = "local"`` in the config names an entry point; a
backend module is imported only when a job uses it.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points

from ..config import BackendConfig, Config
from ..config import load as load_config
from ..errors import BackendUnavailable, NotFound
from ..store import Store, get_store
from ..store.jobs import JobRecord
from .base import JobBackend, LogChunk

__all__ = ["JobBackend", "LogChunk", "backend_for", "backend_types", "get_backend", "prewarm"]

GROUP = "nbscale.backends"


@cache
def backend_types() -> dict[str, object]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def _backend_class(type_name: str) -> type[JobBackend]:
    types = backend_types()
    if type_name not in types:
        raise NotFound(
            f"no backend of type {type_name!r} is installed",
            f"installed types: {', '.join(sorted(types)) or '(none: reinstall nbscale)'}",
        )
    return types[type_name].load()


def get_backend(
    name: str | None = None, config: Config | None = None, store: Store | None = None
) -> JobBackend:
    """The backend configured as ``name`` (default: the configured default)."""
    config = config or load_config()
    bconf: BackendConfig = config.backend(name)
    cls = _backend_class(bconf.type)
    try:
        return cls(bconf, store or get_store())
    except BackendUnavailable:
        raise
    except ImportError as exc:  # a backend whose optional SDK is missing
        raise BackendUnavailable(str(exc), f"pip install 'nbscale[{bconf.type}]'") from exc


def backend_for(record: JobRecord, config: Config, store: Store) -> JobBackend:
    """The backend that runs ``record``; by its type alone if its config entry was removed."""
    if record.backend in config.backends:
        return get_backend(record.backend, config, store)
    return _backend_class(record.backend_type)(
        BackendConfig(record.backend, record.backend_type, {}), store
    )


def prewarm(config: Config | None = None) -> None:
    """Let configured cloud backends make their API clients in a background thread, so the
    first job a notebook submits does not wait for them (a no-op for local backends)."""
    import threading

    try:
        config = config or load_config()
    except Exception:  # noqa: BLE001 - a bad config is reported by the first real use
        return
    for bconf in config.backends.values():
        if bconf.type == "local" or bconf.type not in backend_types():
            continue
        try:
            cls = backend_types()[bconf.type].load()
        except Exception:  # noqa: BLE001 - a backend that cannot load says so when used
            continue
        warm = getattr(cls, "prewarm", None)
        if warm is not None:
            threading.Thread(
                target=warm, args=(bconf,), daemon=True, name="nbscale-prewarm"
            ).start()
