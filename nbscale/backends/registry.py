"""Finding platforms, and the backend of each role, through the ``nbscale.platforms`` group.

``[backends.NAME] type = "..."`` in the config names an entry point of the group; loading
it gives the package's ``Platform``, whose roles load on first use.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from ..config import BackendConfig, Config, platform_entry_points
from ..config import load as load_config
from ..errors import BackendUnavailable, NotFound
from ..store import Store, get_store
from .platform import ROLE_WORDS, Platform, Role


def installed() -> dict[str, Any]:
    """The installed platforms' entry points, by type."""
    return platform_entry_points()


@cache
def _load(type_name: str, value: str) -> Platform:
    ep = installed()[type_name]
    found = ep.load()
    if not isinstance(found, Platform) or found.type != type_name:
        raise BackendUnavailable(
            f"the entry point {type_name!r} ({value}) of nbscale.platforms is not a Platform "
            f"of type {type_name!r}",
            "reinstall the package that provides it",
        )
    return found


def platform(type_name: str) -> Platform:
    """The installed platform of ``type_name``."""
    eps = installed()
    if type_name not in eps:
        raise NotFound(
            f"no backend of type {type_name!r} is installed",
            f"installed types: {', '.join(sorted(eps)) or '(none: reinstall nbscale)'}",
        )
    return _load(type_name, eps[type_name].value)


def platforms() -> list[Platform]:
    """Every installed platform that loads."""
    found = []
    for type_name in sorted(installed()):
        try:
            found.append(platform(type_name))
        except Exception:  # noqa: BLE001 - a broken plugin is reported where it is used
            continue
    return found


def role_class(role: Role, type_name: str) -> type:
    plat = platform(type_name)
    if not plat.provides(role):
        having = [p.type for p in platforms() if p.provides(role)]
        raise BackendUnavailable(
            f"{ROLE_WORDS[role]} on {type_name} backends are not available",
            f"backend types with {ROLE_WORDS[role]}: {', '.join(having) or '(none)'}",
        )
    try:
        return plat.load(role)
    except ImportError as exc:  # its SDK is missing
        hint = f"pip install 'nbscale[{plat.extra}]'" if plat.extra else "install its SDK"
        raise BackendUnavailable(str(exc), hint) from exc


def check_settings(bconf: BackendConfig) -> Any:
    """The platform's settings model of a ``[backends.NAME]`` table (one ``SpecError``
    naming the setting and the fix when it is wrong)."""
    plat = platform(bconf.type)
    if not plat.provides("settings"):
        return None
    return plat.load("settings")(bconf)


def make(role: Role, bconf: BackendConfig, store: Store | None) -> Any:
    cls = role_class(role, bconf.type)
    check_settings(bconf)
    try:
        return cls(bconf, store or get_store())
    except BackendUnavailable:
        raise
    except ImportError as exc:  # a backend whose optional SDK is missing
        plat = platform(bconf.type)
        hint = f"pip install 'nbscale[{plat.extra}]'" if plat.extra else "install its SDK"
        raise BackendUnavailable(str(exc), hint) from exc


def get(role: Role, name: str | None, config: Config | None, store: Store | None) -> Any:
    """The ``role`` backend configured as ``name`` (default: the configured default)."""
    config = config or load_config()
    return make(role, config.backend(name), store)


def for_record(role: Role, record: Any, config: Config, store: Store) -> Any:
    """The backend of a stored job or endpoint; by its type alone if its config entry was
    removed."""
    if record.backend in config.backends:
        return get(role, record.backend, config, store)
    return make(role, BackendConfig(record.backend, record.backend_type, {}), store)
