"""Import papermill without compiling an IRI grammar that a pipeline runner never uses.

papermill imports nbformat, nbformat imports jsonschema, and jsonschema's format checkers
import the optional ``rfc3987_syntax`` package when it is installed (jupyter_server's
dependencies install it). That package compiles an Earley grammar with Lark as it is
imported: 1.5-2.3 s of CPU on a 2-core machine, more than the rest of papermill's import,
paid by every pipeline run before its first step, on the cores its first kernel boots on.
Only a check of the ``iri`` or ``iri-reference`` format ever uses the grammar.

``defer()`` registers a stand-in for the package before jsonschema is first imported; the
real package is imported, grammar and all, the first time anything is used from it (a call
of ``is_valid_syntax``, as jsonschema makes, or any other name). So every check still gives
the same answer; a process that makes none never pays for the grammar.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types
from typing import Any

NAME = "rfc3987_syntax"
_lock = threading.Lock()


class _StandIn(types.ModuleType):
    """``rfc3987_syntax`` until first use: any name read from it imports the real package."""

    def __getattr__(self, name: str) -> Any:
        return getattr(real(), name)


def real() -> types.ModuleType:
    """The real package (imported now if only the stand-in is registered)."""
    with _lock:
        if isinstance(sys.modules.get(NAME), _StandIn):
            del sys.modules[NAME]
        return importlib.import_module(NAME)


def is_valid_syntax(term: str, value: str) -> bool:
    return real().is_valid_syntax(term, value)


def defer() -> bool:
    """Register the stand-in, unless jsonschema or the package is already imported (then it
    is too late to matter) or the package is not installed. True if it was registered."""
    with _lock:
        if NAME in sys.modules or "jsonschema" in sys.modules:
            return False
        try:
            spec = importlib.util.find_spec(NAME)
        except (ImportError, ValueError):
            return False
        if spec is None:
            return False
        stand_in = _StandIn(NAME, __doc__)
        # what the import system reads from a package without using it: ``from rfc3987_syntax
        # import x`` probes ``__path__``, ``importlib.util.find_spec`` reads ``__spec__``
        stand_in.__spec__ = spec
        stand_in.__file__ = spec.origin
        if spec.submodule_search_locations is not None:
            stand_in.__path__ = list(spec.submodule_search_locations)
        stand_in.is_valid_syntax = is_valid_syntax  # type: ignore[attr-defined]
        sys.modules[NAME] = stand_in
        return True
