"""Finding a backend class through an entry-point group, for jobs and for endpoints alike.

``[backends.NAME] type = "..."`` in the config names an entry point of the group; its
module is imported only when something uses it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from importlib.metadata import entry_points
from typing import Any

from ..config import BackendConfig, Config
from ..config import load as load_config
from ..errors import BackendUnavailable, NbscaleError
from ..store import Store, get_store


class Registry:
    def __init__(self, group: str, missing: Callable[[str, list[str]], NbscaleError]):
        self.group = group
        self.missing = missing  # (type, installed types) -> the error to raise

    @cached_property
    def types(self) -> dict[str, Any]:
        return {ep.name: ep for ep in entry_points(group=self.group)}

    def cls(self, type_name: str) -> type:
        if type_name not in self.types:
            raise self.missing(type_name, sorted(self.types))
        return self.types[type_name].load()

    def get(self, name: str | None, config: Config | None, store: Store | None) -> Any:
        """The backend configured as ``name`` (default: the configured default)."""
        config = config or load_config()
        bconf: BackendConfig = config.backend(name)
        cls = self.cls(bconf.type)
        try:
            return cls(bconf, store or get_store())
        except BackendUnavailable:
            raise
        except ImportError as exc:  # a backend whose optional SDK is missing
            raise BackendUnavailable(str(exc), f"pip install 'nbscale[{bconf.type}]'") from exc

    def for_record(self, record: Any, config: Config, store: Store) -> Any:
        """The backend of a stored job or endpoint; by its type alone if its config entry
        was removed."""
        if record.backend in config.backends:
            return self.get(record.backend, config, store)
        return self.cls(record.backend_type)(
            BackendConfig(record.backend, record.backend_type, {}), store
        )
