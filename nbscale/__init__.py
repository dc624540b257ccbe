"""nbscale: notebooks to distributed jobs, pipelines and endpoints, on any backend.

Importing ``nbscale`` imports nothing else: the names below load on first use,
so code running in a job, a pipeline step or a serving container pulls in
only what it touches (no store, no backend, no Jupyter).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

# name -> (module, attribute or None for the module itself)
_LAZY = {
    "__version__": ("nbscale.version", "__version__"),
    "Entry": ("nbscale.specs", "Entry"),
    "JobSpec": ("nbscale.specs", "JobSpec"),
    "Job": ("nbscale.jobs", "Job"),
    "job": ("nbscale.jobs", "job"),
    "jobs": ("nbscale.jobs", "jobs"),
    "submit": ("nbscale.jobs", "submit"),
    "NbscaleError": ("nbscale.errors", "NbscaleError"),
    "log_metric": ("nbscale.metrics", "log_metric"),
    "sweep": ("nbscale.sweep_runs", "sweep"),
    "param": ("nbscale.sweeps.params", "param"),
    "distributed": ("nbscale.distributed", None),
    "checkpoint": ("nbscale.checkpoint", None),
}

__all__ = [
    "Entry",
    "Job",
    "JobSpec",
    "NbscaleError",
    "__version__",
    "checkpoint",
    "distributed",
    "job",
    "jobs",
    "log_metric",
    "param",
    "submit",
    "sweep",
]

if TYPE_CHECKING:  # pragma: no cover - for editors and type checkers only
    from . import checkpoint, distributed
    from .errors import NbscaleError
    from .jobs import Job, job, jobs, submit
    from .metrics import log_metric
    from .specs import Entry, JobSpec
    from .sweep_runs import sweep
    from .sweeps.params import param


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'nbscale' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


class _Package(types.ModuleType):
    """Importing the submodule ``nbscale.jobs`` must not replace the function ``nbscale.jobs``
    (the import system sets the submodule as an attribute of its package)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _LAZY.get(name, ("", None))[1] is not None:
            return  # the submodule stays reachable through sys.modules and ``from`` imports
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


def load_ipython_extension(ipython):  # ``%load_ext nbscale``
    from .magics import load_ipython_extension as load

    load(ipython)
