"""The plugin contract: one ``Platform`` object per platform package.

A platform (``local``, ``kubeflow``, ``sagemaker``, or one a third-party package adds)
registers exactly one ``Platform`` in the ``nbscale.platforms`` entry-point group::

    [project.entry-points."nbscale.platforms"]
    myplatform = "my_package:PLATFORM"

The entry point's name is the ``type = "..."`` of a ``[backends.NAME]`` table. The
object names its roles as ``"module:attribute"`` strings, so loading the entry point
imports only the platform package's ``__init__``; a role's module (and the platform's
SDK) is imported when something uses it.
"""

from __future__ import annotations

import pkgutil
from dataclasses import dataclass
from typing import Any, Literal

from ..cost import Pricing

Role = Literal["jobs", "endpoints", "pipelines", "sweeps", "settings"]
#: what each role is called in messages
ROLE_WORDS = {
    "jobs": "jobs",
    "endpoints": "endpoints",
    "pipelines": "pipeline runs",
    "sweeps": "sweeps",
}


@dataclass(frozen=True)
class Platform:
    """What a platform package provides.

    ``jobs``, ``endpoints`` and ``pipelines`` name classes implementing
    ``nbscale.backends.base.JobBackend``, ``nbscale.backends.endpoint_base.EndpointBackend``
    and ``nbscale.backends.pipeline_base.PipelineBackend``; ``settings`` names a function
    ``(BackendConfig) -> settings model`` that checks the ``[backends.NAME]`` table. A
    platform may leave out any role it does not have. ``compile_target`` is the name
    ``nbscale pipeline compile --target`` knows its pipeline format by (``kfp``), and
    ``extra`` the pip extra that brings its SDK (``pip install 'nbscale[EXTRA]'``), and
    ``pricing`` how ``nbscale.cost`` prices its node hours where its settings name no price.
    """

    type: str
    title: str
    jobs: str | None = None
    endpoints: str | None = None
    pipelines: str | None = None
    sweeps: str | None = None  # a nbscale.backends.sweep_base.SweepBackend
    settings: str | None = None
    compile_target: str | None = None
    extra: str | None = None
    pricing: Pricing = Pricing()

    def provides(self, role: Role) -> bool:
        return getattr(self, role) is not None

    def load(self, role: Role) -> Any:
        """The class (or function) of ``role``; ``ImportError`` when its module or SDK is missing."""
        target = getattr(self, role)
        if target is None:
            raise LookupError(f"the {self.type} platform has no {role}")
        return pkgutil.resolve_name(target)
