"""Backends are found through the ``nbscale.backends`` entry-point group.

``[backends.NAME] type = "local"`` in the config names an entry point; a
backend module is imported only when a job uses it.
"""

from __future__ import annotations

from ..config import Config
from ..config import load as load_config
from ..errors import NotFound
from ..store import Store
from ..store.jobs import JobRecord
from .base import JobBackend, LogChunk
from .registry import Registry

__all__ = ["JobBackend", "LogChunk", "backend_for", "backend_types", "get_backend", "prewarm"]

GROUP = "nbscale.backends"
_registry = Registry(
    GROUP,
    lambda type_name, installed: NotFound(
        f"no backend of type {type_name!r} is installed",
        f"installed types: {', '.join(installed) or '(none: reinstall nbscale)'}",
    ),
)


def backend_types() -> dict[str, object]:
    return _registry.types


def _backend_class(type_name: str) -> type[JobBackend]:
    return _registry.cls(type_name)


def get_backend(
    name: str | None = None, config: Config | None = None, store: Store | None = None
) -> JobBackend:
    """The backend configured as ``name`` (default: the configured default)."""
    return _registry.get(name, config, store)


def backend_for(record: JobRecord, config: Config, store: Store) -> JobBackend:
    """The backend that runs ``record``; by its type alone if its config entry was removed."""
    return _registry.for_record(record, config, store)


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
