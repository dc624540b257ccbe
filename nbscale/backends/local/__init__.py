"""This machine: jobs as torchrun processes under a supervisor, endpoints behind a router,
pipelines run by papermill in local kernels.

Importing the package loads only ``PLATFORM`` (its entry point in ``nbscale.platforms``);
each role's module is imported when used.
"""

from __future__ import annotations

from typing import Any

from ...cost import Pricing
from ..platform import Platform

PLATFORM = Platform(
    type="local",
    title="this machine",
    jobs="nbscale.backends.local.jobs:LocalBackend",
    endpoints="nbscale.backends.local.endpoints:LocalEndpoints",
    pipelines="nbscale.backends.local.pipelines:LocalPipelineBackend",
    sweeps="nbscale.backends.local.sweeps:LocalSweeps",
    settings="nbscale.backends.local.settings:settings",
    pricing=Pricing(own_machine=True),
)

__all__ = ["PLATFORM", "LocalBackend"]


def __getattr__(name: str) -> Any:
    if name == "LocalBackend":
        from .jobs import LocalBackend

        return LocalBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
