"""Platforms, and the job, endpoint and pipeline backends they provide.

Each platform package registers one ``Platform`` (``nbscale.backends.platform``) in the
``nbscale.platforms`` entry-point group; ``[backends.NAME] type = "..."`` in the config
names one. A role's module is imported only when something uses it.
"""

from __future__ import annotations

from typing import Any

from ..config import Config
from ..config import load as load_config
from ..store import Store
from ..store.jobs import JobRecord
from . import registry
from .base import DryRun, JobBackend, LogChunk
from .platform import Platform

__all__ = [
    "DryRun",
    "JobBackend",
    "LogChunk",
    "Platform",
    "backend_for",
    "backend_types",
    "endpoint_backend_for",
    "get_backend",
    "get_endpoint_backend",
    "get_pipeline_backend",
    "pipeline_backend_for",
    "platforms",
    "prewarm",
]

platforms = registry.platforms


def backend_types() -> dict[str, Any]:
    """The installed platforms' entry points, by the ``type`` a config table names."""
    return registry.installed()


def get_backend(
    name: str | None = None, config: Config | None = None, store: Store | None = None
) -> JobBackend:
    """The job backend configured as ``name`` (default: the configured default)."""
    return registry.get("jobs", name, config, store)


def backend_for(record: JobRecord, config: Config, store: Store) -> JobBackend:
    """The job backend that runs ``record``; by its type alone if its config entry was removed."""
    return registry.for_record("jobs", record, config, store)


def get_endpoint_backend(
    name: str | None = None, config: Config | None = None, store: Store | None = None
):
    """The endpoint backend configured as ``name`` (default: the configured default)."""
    return registry.get("endpoints", name, config, store)


def endpoint_backend_for(record: Any, config: Config, store: Store):
    """The backend that serves ``record``; by its type alone if its config entry was removed."""
    return registry.for_record("endpoints", record, config, store)


def get_pipeline_backend(
    name: str | None = None, config: Config | None = None, store: Store | None = None
):
    """The pipeline backend configured as ``name`` (default: ``local``)."""
    return registry.get("pipelines", name or "local", config, store)


def pipeline_backend_for(record: dict[str, Any], config: Config | None = None, store=None):
    """The pipeline backend a recorded run belongs to."""
    from ..config import BackendConfig

    config = config or load_config()
    if record["backend"] in config.backends:
        return registry.get("pipelines", record["backend"], config, store)
    remote = (record.get("options") or {}).get("remote") or {}
    bconf = BackendConfig(record["backend"], remote.get("type", "local"), {})
    return registry.make("pipelines", bconf, store)


def prewarm(config: Config | None = None) -> None:
    """Let configured backends make their API clients in a background thread, so the first
    job a notebook submits does not wait for them (``JobBackend.prewarm``)."""
    import threading

    try:
        config = config or load_config()
    except Exception:  # noqa: BLE001 - a bad config is reported by the first real use
        return

    def warm() -> None:
        for bconf in config.backends.values():
            try:
                registry.role_class("jobs", bconf.type).prewarm(bconf)
                # the local backend starts its warm zygote for the first deploy
                warm_start = getattr(
                    registry.role_class("endpoints", bconf.type), "warm_start", None
                )
                if warm_start is not None:
                    warm_start()
            except Exception:  # noqa: BLE001 - a backend that cannot load says so when used
                continue

    threading.Thread(target=warm, daemon=True, name="nbscale-prewarm").start()
