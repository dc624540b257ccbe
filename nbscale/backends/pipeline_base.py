"""The interface every pipeline backend implements: compile, run, status and cancel.

A pipeline backend runs a flow (a tagged notebook or a ``pipeline.yaml``, parsed by
``nbscale.pipelines``) on one kind of platform and records the run in the store
(``pipeline_runs`` / ``pipeline_steps``), so ``nbscale pipeline runs/status``,
``%pipeline`` and the panel see every run alike. ``nbscale.pipeline_runs`` (the engine's
API every face uses) finds the backend through the ``nbscale.platforms`` entry-point group.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from ..config import BackendConfig
from ..errors import SpecError
from ..store import Store
from .base import DryRun

#: ``on_step(step_name, fields)`` hears every change of a step's status
OnStep = Callable[[str, dict[str, Any]], None]
#: ``announce(label, remote_id)`` hears the platform's id of a run as soon as there is one
Announce = Callable[[str, str], None]


class PipelineBackend(ABC):
    """Compile, run, status and cancel of pipeline runs on one kind of platform."""

    type: ClassVar[str]
    #: the platform's name in messages ("SageMaker")
    title: ClassVar[str]
    #: what Ctrl-C during a run in the foreground did
    interrupted: ClassVar[str] = "the run was stopped"
    #: the options ``compile`` takes, and the suffix of the file it writes
    compile_options: ClassVar[tuple[str, ...]] = ()
    compile_suffix: ClassVar[str] = ""

    def __init__(self, config: BackendConfig, store: Store):
        self.config = config
        self.store = store

    @classmethod
    def compile(cls, pipeline: Any, output: Path, **options: Any) -> None:
        """Write ``pipeline`` (a ``nbscale.pipelines.model.Pipeline``) to ``output`` in this
        platform's own format (the ``compile_target`` of its ``Platform``)."""
        raise SpecError(
            "--target",
            f"the {cls.type} platform has no pipeline format to compile to",
            "use a target an installed platform names (nbscale pipeline compile --help)",
        )

    @abstractmethod
    def run(
        self,
        path: str,
        parameters: dict[str, Any] | None,
        *,
        detach: bool,
        on_step: OnStep | None,
        announce: Announce | None,
        options: dict[str, Any],
    ) -> str:
        """Check the flow, record a run and start it; return the run's id.

        Every check happens before anything is recorded or started. Without ``detach`` the
        run is followed in this process until it ends (Ctrl-C stops it)."""

    @abstractmethod
    def dry_run(
        self, path: str, parameters: dict[str, Any] | None, options: dict[str, Any]
    ) -> DryRun:
        """What ``run`` would send or run, after the same checks, with nothing recorded,
        uploaded or started (``nbscale pipeline run --dry-run``)."""

    @abstractmethod
    def status(self, record: dict[str, Any]) -> dict[str, Any]:
        """The run's record, brought up to date where nothing keeps it current (its runner
        or follower is gone)."""

    @abstractmethod
    def cancel(self, record: dict[str, Any], timeout: float) -> None:
        """Stop the run; it reads CANCELLED once it has stopped."""

    @classmethod
    def claims(cls, remote_id: str) -> bool:
        """Whether an id that names no recorded run is a run of this platform (an execution
        ARN), so that ``nbscale pipeline cancel ID`` can find its backend."""
        return False

    def cancel_unrecorded(self, remote_id: str) -> str:
        """Stop a run this platform runs that was never recorded here; return what was done."""
        raise SpecError(
            "RUN",
            f"no pipeline run {remote_id!r} is recorded",
            "see nbscale pipeline runs",
        )
