"""The interface every job backend implements.

A backend turns a ``JobSpec`` into running work and answers questions about
it. The store row is created by the engine (``nbscale.jobs.submit``) before
``submit`` is called; the backend fills in ``native_id`` and moves the status.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from ..config import BackendConfig
from ..errors import NbscaleError, SpecError
from ..specs import JobSpec
from ..store import Store
from ..store.jobs import JobRecord


@dataclass
class LogChunk:
    """Part of one rank's log: ``text`` from byte ``offset`` up to ``next_offset``."""

    rank: int
    text: str
    offset: int
    next_offset: int

    @classmethod
    def read(cls, path: Path, rank: int, offset: int, max_bytes: int) -> LogChunk:
        """Up to ``max_bytes`` of a rank's log file from ``offset``, never cutting a line (or a
        UTF-8 sequence) in half; offsets run across rotated segments (``nbscale.logpump``)."""
        from .. import logpump

        data, after = logpump.read(path, offset, max_bytes)
        if len(data) == max_bytes and b"\n" in data:
            data = data[: data.rindex(b"\n") + 1]
            after = offset + len(data)
        return cls(rank, data.decode("utf-8", errors="replace"), offset, after)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "text": self.text,
            "offset": self.offset,
            "next_offset": self.next_offset,
        }


@dataclass(frozen=True)
class DryRun:
    """What ``submit`` would send to a platform, built without sending, uploading or storing
    anything: ``documents`` (Kubernetes objects, an API request...) shown as ``format``, and
    ``notes`` about them (which Secrets would be created or updated, what would be uploaded).

    As ``kubectl --dry-run=client -o yaml`` does, the faces write ``text()`` (exactly what
    would be sent, nothing else: pipe it into ``kubectl apply -f -``, ``jq`` or
    ``yaml.safe_load_all``) to stdout and ``commentary()`` to stderr. Secret objects are
    never among the documents: their data cannot be shown, and a placeholder value would
    make ``kubectl apply`` create a broken Secret; a note names them instead."""

    documents: list[dict[str, Any]]
    format: Literal["yaml", "json"] = "json"
    notes: list[str] = field(default_factory=list)

    def text(self) -> str:
        """The documents alone: YAML (one stream, ``---`` between) or JSON (one document as
        an object, several as a list)."""
        if self.format == "yaml":
            import yaml

            return yaml.safe_dump_all(self.documents, sort_keys=False, default_flow_style=False)
        import json

        shown = self.documents[0] if len(self.documents) == 1 else self.documents
        return json.dumps(shown, indent=2) + "\n"

    def commentary(self) -> str:
        """The notes, one per line, for stderr."""
        return "".join(f"{note}\n" for note in self.notes)

    def with_notes(self, *notes: str) -> DryRun:
        """The same documents with ``notes`` added before this one's."""
        return DryRun(self.documents, self.format, [*notes, *self.notes])

    def __str__(self) -> str:
        return self.text()

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "documents": self.documents, "notes": list(self.notes)}


class JobBackend(ABC):
    """Submit, status, logs, cancel and list for jobs of one kind of platform."""

    type: ClassVar[str]
    #: spec fields this backend has no use for, each with what to do instead;
    #: a spec that sets one is refused rather than silently run without it
    unsupported: ClassVar[dict[str, str]] = {}
    #: whether ``spec.spot`` (spot/preemptible capacity) means something here
    supports_spot: ClassVar[bool] = False
    #: whether ``submit`` sends objects to a platform (manifests, an API request) that
    #: ``--dry-run`` shows: it checks the spec, then prints ``dry_run(record).text()``; a
    #: backend without (local) has only the spec to show, which ``--dry-run`` prints anyway
    sends_request: ClassVar[bool] = False

    def __init__(self, config: BackendConfig, store: Store):
        self.config = config
        self.store = store

    @classmethod  # noqa: B027 - most backends have no client to make ahead
    def prewarm(cls, bconf: BackendConfig) -> None:
        """Make slow API clients ahead of the first job (``nbscale.backends.prewarm`` calls it
        in a background thread at ``%load_ext nbscale``); it must never raise."""

    def dry_run(self, record: JobRecord) -> DryRun:
        """What ``submit`` would send for ``record`` (``nbscale.jobs.dry_run_record``), built
        without sending, uploading or writing anything; the caller has checked the spec
        (``check_resources``, ``validate``). A backend that sends nothing to a platform
        (``sends_request`` False) shows the spec it runs."""
        return DryRun(
            [record.spec],
            "json",
            [f"the {self.type} backend sends no platform request: it runs this spec"],
        )

    def limits(self) -> dict[str, int]:
        """Upper bounds this backend can honour: ``nodes``, ``procs_per_node``,
        ``gpus_per_proc``, ``max_restarts``, ``max_runtime``, and ``world_size``."""
        return {}

    def check_resources(self, spec: JobSpec) -> None:
        """Refuse fields this backend ignores and amounts it cannot honour (``SpecError``)."""
        for name, instead in self.unsupported.items():
            if getattr(spec, name, None) not in (None, "", (), {}):
                raise SpecError(
                    name,
                    f"the {self.type} backend does not use it ({instead})",
                    f"drop --{name.replace('_', '-')}, or its entry under [defaults] in the config",
                )
        if getattr(spec, "spot", None) and not self.supports_spot:
            raise SpecError(
                "spot",
                f"the {self.config.name} backend ({self.type}) has no spot capacity",
                "drop --spot, or use a backend that has it (sagemaker)",
            )
        for name, top in self.limits().items():
            value = spec.world_size if name == "world_size" else getattr(spec, name, None)
            if value is not None and value > top:
                what = "nodes x procs_per_node" if name == "world_size" else name
                raise SpecError(
                    name,
                    f"{what} is {value}, more than the {self.config.name} backend can run ({top})",
                    f"ask for at most {top}",
                )

    def resolve(self, spec: JobSpec) -> JobSpec:
        """The spec with the shape the platform's nodes will really run (processes per node
        from the node's GPUs, GPUs per process on a GPU node), for ``--dry-run`` and the
        record; refuses a shape the node cannot hold. Most backends run the spec as given."""
        return spec

    def validate(self, spec: JobSpec) -> None:  # noqa: B027 - most backends accept every valid spec
        """Refuse a spec this backend cannot run (raise ``SpecError``) before anything is stored."""

    @abstractmethod
    def submit(self, record: JobRecord, secrets: Mapping[str, str] | None = None) -> JobRecord:
        """Start the job described by ``record.spec``; return the updated record.

        ``secrets`` are the values of ``spec.secret_env``: give them to the job's
        processes as environment variables and never write them anywhere.
        """

    @abstractmethod
    def status(self, record: JobRecord) -> JobRecord:
        """Refresh and return the record (PENDING, RUNNING, or a terminal state)."""

    @abstractmethod
    def ranks(self, record: JobRecord) -> list[int]:
        """The ranks that have logs so far."""

    @abstractmethod
    def logs(
        self, record: JobRecord, rank: int, offset: int = 0, max_bytes: int = 1 << 20
    ) -> LogChunk:
        """Log text of one rank from ``offset``; call again with ``next_offset`` to follow."""

    @abstractmethod
    def metrics(self, record: JobRecord) -> list[dict[str, Any]]:
        """Metrics logged with ``nbscale.log_metric`` so far, every rank."""

    @abstractmethod
    def cancel(self, record: JobRecord) -> JobRecord:
        """Stop every process of the job; the record ends CANCELLED unless it had ended."""

    def check(self) -> dict[str, Any]:
        """Whether the backend can be reached: ``{"reachable": bool, "detail": str}``."""
        return {"reachable": True, "detail": "ok"}

    # -- the platform's own jobs (those nbscale did not start too) ------------------------
    #: whether ``list_native``, ``attach`` and ``runtimes`` mean something here
    lists_native: ClassVar[bool] = False

    def _no_native(self, what: str) -> NbscaleError:
        return NbscaleError(
            f"the {self.config.name} backend ({self.type}) cannot {what}: its jobs are the "
            "ones in nbscale's store",
            "list them with nbscale jobs; a kubeflow backend lists and attaches TrainJobs",
        )

    def list_native(self) -> list[dict[str, Any]]:
        """Every job the platform holds where this backend looks (a namespace...), nbscale's
        and others', newest first: ``name``, ``namespace``, ``status`` (nbscale's words),
        ``phase`` (the platform's), ``nodes``, ``runtime``, ``created`` (epoch seconds),
        ``job_id`` (nbscale's id when nbscale made it, else None), ``foreign``."""
        raise self._no_native("list the platform's jobs")

    def attach(self, name: str) -> JobRecord:
        """A store row for the platform's job ``name`` (an existing row when there is one),
        so status, logs and wait work on it; a job nbscale did not start is marked
        ``foreign`` (no outputs are expected from it)."""
        raise self._no_native(f"attach to {name!r}")

    def runtimes(self) -> list[dict[str, Any]]:
        """The runtimes (templates) jobs of this platform can name."""
        raise self._no_native("list runtimes")

    def platform_logs(
        self,
        record: JobRecord,
        nodes: list[int] | None = None,
        tail: int | None = None,
        since: float | None = None,
        follow: bool = False,
    ) -> Iterator[tuple[int, str]]:
        """``(node, line)`` of the platform's own log of each node (``nodes``: those only),
        read where the platform keeps it, with its timestamps: the last ``tail`` lines,
        those of the last ``since`` seconds, and with ``follow`` until the nodes end.
        Memory stays bounded (a chunk and a few lines per node)."""
        raise NbscaleError(
            f"the {self.config.name} backend ({self.type}) keeps no time for its log lines, "
            "so it cannot pick those since a time",
            "drop --since (--tail N shows the last N lines of each rank)",
        )
