"""The lifecycle every platform shares whose work runs in someone else's containers.

``RemoteJobBackend`` is the base of the Kubeflow and SageMaker job backends. It owns what
their jobs have in common: the canonical bundle (``canonical_bundle``: the same cell and
inputs are the same bytes, so content addressing finds them in object storage), the spec the
container runs (``container_spec``: no local paths), the end of a job (``end``: its outputs
come home through ``nbscale.backends.remote.staging``) and the log mirror: the platform's log
text is copied into the job's local folder (``logs/rank-R.log``), where ``ranks``, ``logs``
and ``metrics`` read it exactly as for a local job. A platform supplies its request or
manifest (``submit``, ``dry_run``), how its states map to nbscale's (``status``) and how to
fetch new log text (``fetch_logs``).

``wait_for`` is the one wait loop: ``Job.wait`` (every backend) and the cloud endpoint
backends' ``wait`` poll through it, with one progress line format (``Progress``) and one
timeout error (``nbscale.errors.WaitTimeout``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import threading
import time
import zipfile
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar, TypeVar

from ... import file_lock, storage
from ...errors import WaitTimeout
from ...metrics import LINES_ENV
from ...runtime.jobdir import JobDir
from ...store.jobs import ACTIVE, FAILED, SUCCEEDED, JobRecord, update_job
from ...words import count
from ..base import DryRun, JobBackend, LogChunk

T = TypeVar("T")

ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_ZIP64_AT = 0x7FFFFFFF  # an entry this large needs zip64 sizes


# -- the canonical bundle ---------------------------------------------------------------------
def _canonical(info: zipfile.ZipInfo) -> bool:
    return (
        info.date_time == ZIP_EPOCH
        and info.compress_type == zipfile.ZIP_STORED
        and info.external_attr == 0o600 << 16
    )


def canonical_bundle(source: Path, dest: Path | None = None) -> Path:
    """The bundle with every entry stored, dated at the zip epoch and mode 0600, so the same
    cell with the same inputs is the same bytes (and the same object in storage) whenever it
    is captured. ``source`` itself when it is canonical already (``nbscale.bundle.write``
    makes it so), else a copy at ``dest`` (default: ``<stem>.canonical.zip`` next to it; the
    caller removes it). The signature covers the manifest, not the archive's metadata: the
    copy still verifies."""
    source = Path(source)
    with zipfile.ZipFile(source) as zf:
        infos = zf.infolist()
        if all(_canonical(i) for i in infos):
            return source
        out = Path(dest) if dest is not None else source.with_name(source.stem + ".canonical.zip")
        tmp = out.with_name(out.name + ".tmp")
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zo:
            for info in infos:
                fresh = zipfile.ZipInfo(info.filename, date_time=ZIP_EPOCH)
                fresh.compress_type = zipfile.ZIP_STORED
                fresh.external_attr = 0o600 << 16
                with (
                    zf.open(info) as src,
                    zo.open(fresh, "w", force_zip64=info.file_size > _ZIP64_AT) as dst,
                ):
                    shutil.copyfileobj(src, dst, 1 << 20)
    os.chmod(tmp, 0o600)
    tmp.replace(out)
    return out


# -- the log lines --------------------------------------------------------------------------
RANK_LINE = re.compile(r"^\[rank (\d+)\] ?(.*)$", re.S)


@contextlib.contextmanager
def log_copy_lock(jobdir: JobDir):
    """One copier of a job's platform logs at a time (a CLI, the panel and a sweep's view
    may all follow one job): its read positions and the rank logs change together."""
    jobdir.path.mkdir(parents=True, exist_ok=True)
    with file_lock.exclusive(jobdir.path / ".logcopy.lock"):
        yield


def route_line(text: str, first_rank: int, source: str) -> tuple[int, str]:
    """The rank a line of a node's output belongs to, and the line to keep: the launcher
    prints each rank's lines as ``[rank N] text``; anything else (the launcher's own, pip's,
    the shell's) goes to the node's first rank, prefixed ``[source]`` (``node K``, ``algo-n``)."""
    m = RANK_LINE.match(text)
    if m:
        return int(m.group(1)), m.group(2)
    return first_rank, f"[{source}] {text}"


# -- the wait loop --------------------------------------------------------------------------
class Progress:
    """One line per change of state, ``<what>: <state>[, <detail>] (<seconds> s)``, written to
    ``stream`` (nothing when it is None)."""

    def __init__(
        self, what: str, stream: IO[str] | None, clock: Callable[[], float] = time.monotonic
    ):
        self.what = what
        self.stream = stream
        self.clock = clock
        self.started = clock()
        self.last: tuple[str, str | None] | None = None

    @staticmethod
    def line(what: str, state: str, detail: str | None, elapsed: float) -> str:
        shown = f"{state}, {detail}" if detail else state
        return f"{what}: {shown} ({elapsed:.0f} s)\n"

    def show(self, state: str, detail: str | None = None) -> None:
        if self.stream is None or (state, detail) == self.last:
            return
        self.last = (state, detail)
        self.stream.write(self.line(self.what, state, detail, self.clock() - self.started))
        self.stream.flush()


def wait_for(
    what: str,
    poll: Callable[[], T],
    state: Callable[[T], str],
    done: Callable[[T], bool],
    *,
    timeout: float | None,
    interval: float,
    hint: str | Callable[[T], str],
    failure: Callable[[T], BaseException | None] | None = None,
    detail: Callable[[T], str | None] | None = None,
    progress: IO[str] | None = None,
    on_update: Callable[[T], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``poll`` every ``interval`` s until ``done`` says so, and return what it gave.

    ``what`` names the thing waited for (``job ID``, ``endpoint NAME``); ``state`` (and
    ``detail``) say where it is, for the progress lines and the timeout error. ``failure``
    gives the platform's error for a value that will never be done (raised at once).
    After ``timeout`` s (None: no limit) a ``WaitTimeout`` says what was waited for, the
    last state and, with ``hint`` (text, or made from the last value), what to do."""
    printer = Progress(what, progress, clock)
    deadline = None if timeout is None else clock() + timeout
    while True:
        value = poll()
        if on_update is not None:
            on_update(value)
        now_state = state(value)
        now_detail = detail(value) if detail is not None else None
        printer.show(now_state, now_detail)
        if done(value):
            return value
        error = failure(value) if failure is not None else None
        if error is not None:
            raise error
        if deadline is not None and clock() > deadline:
            told = hint(value) if callable(hint) else hint
            raise WaitTimeout(what, now_state, timeout or 0.0, told, now_detail)
        sleep(interval)


# -- what travels ---------------------------------------------------------------------------
@dataclass
class Travel:
    """The job's folder and requirements as the container finds them (``code``,
    ``requirements``: what its spec says), where they are in object storage, and what this
    submit sent (``uploaded``; empty when everything was there already)."""

    code: dict[str, Any] | None = None
    requirements: dict[str, Any] | None = None
    code_uri: str | None = None
    requirements_uri: str | None = None
    uploaded: list[str] = field(default_factory=list)
    built: bool = False  # whether the wheelhouse was built by this submit


# -- the base of the remote job backends ------------------------------------------------------
def _signed_name(name: str, upload: bool) -> str:
    """The HMAC that lets the container trust a content name. A dry run signs with this
    home's key when there is one (so it shows what submit sends) and never creates it."""
    from ... import bundle

    if upload:
        return bundle.sign_name(name)
    from ...errors import SignatureError

    try:
        return bundle.sign_name(name, bundle.load_key(create=False))
    except SignatureError:
        return "(signed at submit)"


class RemoteJobBackend(JobBackend):
    """A job backend whose work runs in someone else's containers (Kubeflow, SageMaker).

    A subclass supplies ``submit``, ``dry_run``, ``status`` (the platform's states mapped to
    nbscale's, ending with ``end``), ``cancel`` and ``fetch_logs``; where a script or
    notebook entry's file is in the container (``file_mount``); and, when they differ from
    the defaults, when logs are fetched (``log_interval``, ``logs_settled``)."""

    sends_request = True
    #: the folder of the container a script or notebook entry's file is put in
    file_mount: ClassVar[str]
    #: spec fields the container's spec goes without
    container_drops: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config, store):
        super().__init__(config, store)
        self._log_times: dict[str, float] = {}
        self._log_metrics = LogMetrics()

    # -- what travels ---------------------------------------------------------------------
    def container_spec(self, spec: dict[str, Any], travel: Travel | None = None) -> dict[str, Any]:
        """The spec the container runs: no local paths (a bundle is ``cell.zip`` next to the
        job, a script or notebook is in ``file_mount``, or in its folder when that travels:
        ``travel``), no checkpoint folder of this machine, none of ``container_drops``."""
        spec = json.loads(json.dumps(spec))
        entry = spec.get("entry", {})
        if entry.get("kind") == "bundle":
            entry["target"] = "cell.zip"
        elif entry.get("kind") in ("script", "notebook"):
            if travel is not None and travel.code and travel.code.get("target"):
                entry["target"] = travel.code["target"]  # in the unpacked folder
            else:
                entry["target"] = f"{self.file_mount}/{Path(entry['target']).name}"
        spec.pop("workdir", None)
        spec.pop("requirements", None)
        if travel is not None:
            if travel.code:
                spec["code"] = {k: v for k, v in travel.code.items() if k != "target"}
            if travel.requirements:
                spec["requirements_wheels"] = travel.requirements
        spec["checkpoint_dir"] = None
        # log_metric prints its values for the platform's readers and the log mirror
        spec["env"] = {**(spec.get("env") or {}), LINES_ENV: "1"}
        for name in self.container_drops:
            spec.pop(name, None)
        return spec

    # -- the folder and the packages that travel ------------------------------------------
    def travel_settings(self):
        """The backend's ``RemoteSettings`` (requirements, pip_index, code_limit_mb)."""
        return self.settings  # type: ignore[attr-defined]

    def job_sources(self, spec: dict[str, Any]) -> list[str]:
        """The job's own code as text: a cell's (its captured imports and its own import
        statements), a script's, a module's file, a notebook's code cells'."""
        entry = spec.get("entry", {})
        kind, target = entry.get("kind"), entry.get("target")
        sources: list[str] = []
        try:
            if kind == "bundle":
                from ... import bundle
                from ...runtime.cell import KIND

                found = bundle.read(target, KIND)
                sources = [*found.manifest.get("imports", []), found.part("cell.py").decode()]
            elif kind == "script":
                sources = [Path(target).read_text(errors="replace")]
            elif kind == "module":  # the module's own file, where this machine finds it
                import importlib.util

                found_spec = importlib.util.find_spec(target)
                origin = found_spec.origin if found_spec is not None else None
                if origin and origin.endswith(".py"):
                    sources = [Path(origin).read_text(errors="replace")]
            elif kind == "notebook":
                cells = json.loads(Path(target).read_text()).get("cells", [])
                sources = [
                    "".join(c.get("source", "")) if isinstance(c.get("source"), list)
                    else str(c.get("source", ""))
                    for c in cells
                    if c.get("cell_type") == "code"
                ]  # fmt: skip
        except (OSError, ValueError, ImportError):
            return []
        return [
            "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith(("%", "!")))
            for text in sources
        ]

    def travel_modules(self, spec: dict[str, Any]) -> list[str]:
        """The top-level modules the job imports (``job_sources``)."""
        from ...requirements import imported_modules

        names: list[str] = []
        for text in self.job_sources(spec):
            names += imported_modules(text)
        return list(dict.fromkeys(names))

    def logged_metrics(self, spec: dict[str, Any]) -> list[str]:
        """The names the job's code, and the modules of its folder it imports, pass to
        ``log_metric`` as literals (a name made at run time is not known before it runs)."""
        from ...requirements import imported_modules
        from ...sweeps.logged import log_metric_names

        texts = self.job_sources(spec)
        workdir = spec.get("workdir")
        if workdir:
            for name in dict.fromkeys(n for t in texts for n in imported_modules(t)):
                base = Path(workdir) / name
                for candidate in (base.with_suffix(".py"), base / "__init__.py"):
                    with contextlib.suppress(OSError):
                        texts.append(candidate.read_text(errors="replace"))
        names: set[str] = set()
        for text in texts:
            names |= log_metric_names(text)[0]
        return sorted(names)

    def check_travel(self, spec: dict[str, Any]) -> list[str]:
        """What ``submit`` would refuse about what travels, said before anything is stored or
        sent (the size of the folder, the requirements file), and the warnings: modules the
        job imports from local files outside its folder, which will not be in the container."""
        from ...codefolder import outside_modules, scan
        from ...requirements import AUTO

        conf = self.travel_settings()
        workdir = spec.get("workdir")
        if workdir:
            scan(workdir, conf.code_limit_mb << 20, f"code_limit_mb in [backends.{conf.name}]")
        value = spec.get("requirements") or conf.requirements
        if value and value != AUTO:
            path = Path(value).expanduser()
            path = path if path.is_absolute() else Path(workdir or Path.cwd()) / path
            if not path.is_file():
                from ...errors import SpecError

                raise SpecError(
                    f"[backends.{conf.name}] requirements",
                    f"{path} is not a file",
                    "give a pip requirements file (relative paths are read in the job's "
                    "folder), or auto",
                )
        outside = outside_modules(self.travel_modules(spec), workdir) if workdir else []
        if not outside:
            return []
        listed = ", ".join(f"{name} ({file})" for name, file in outside)
        return [
            f"the job imports {listed} from outside its folder {workdir}, which is all that "
            "travels: move it into the folder, or install it as a package and name it in "
            "--requirements"
        ]

    def travel_notes(self, spec: dict[str, Any]) -> list[str]:
        """What ``--dry-run`` says would travel with the job: its folder (files, size) and
        its requirements; the upload is content-addressed, so what is there is not sent."""
        from ...codefolder import human_size, scan

        conf = self.travel_settings()
        notes = []
        workdir = spec.get("workdir")
        if workdir:
            folder = scan(
                workdir, conf.code_limit_mb << 20, f"code_limit_mb in [backends.{conf.name}]"
            )
            notes.append(
                f"the folder {folder.root} would travel: {count(len(folder.files), 'file')}, "
                f"{human_size(folder.size)} (not sent again when unchanged)"
            )
        value = spec.get("requirements") or conf.requirements
        if value:
            how = "from the index" if conf.pip_index else "offline, from wheels built here"
            notes.append(f"requirements {value} would be installed in the container {how}")
        return notes

    def stage_travel(
        self, spec: dict[str, Any], store: storage.ObjectStore, upload: bool
    ) -> Travel:
        """Put the job's folder (``code.zip``) and its requirements' wheelhouse in object
        storage under names made of their content: what is there already is not sent again.
        With ``upload`` False nothing is built, written or sent (``--dry-run``)."""
        from ...requirements import ARCHIVE, build, cache_key, resolve, target_python
        from .staging import put_known

        conf = self.travel_settings()
        travel = Travel()
        workdir = spec.get("workdir")
        if workdir:
            self._stage_folder(spec, store, upload, Path(workdir), travel)
        value = spec.get("requirements") or conf.requirements
        modules = self.travel_modules(spec) if value == "auto" else None
        req = resolve(value, Path(workdir) if workdir else None, modules)
        if req is None:
            if value == "auto":
                print(
                    "nbscale: --requirements auto: nothing to pin (the job imports only the "
                    "standard library, local modules and what the image has)",
                    file=sys.stderr,
                    flush=True,
                )
            return travel
        key = cache_key(req, conf.pip_index, target_python())
        req_uri = store.base.child("requirements", key, ARCHIVE).uri
        sha = None
        if upload:
            house = build(req, conf.pip_index)
            sha = house.digest
            if put_known(store, req_uri, lambda: house.archive):
                travel.uploaded.append(req_uri)
            travel.built = house.built
        travel.requirements = {
            "uri": self.in_container("requirements", req_uri),
            "sha256": sha,
            "sig": _signed_name(sha, upload) if sha else "(signed at submit)",
            "index": conf.pip_index,
            "origin": req.origin,
        }
        travel.requirements_uri = req_uri
        return travel

    def _stage_folder(
        self,
        spec: dict[str, Any],
        store: storage.ObjectStore,
        upload: bool,
        workdir: Path,
        travel: Travel,
    ) -> None:
        from ...codefolder import scan
        from .staging import put_known

        conf = self.travel_settings()
        folder = scan(workdir, conf.code_limit_mb << 20, f"code_limit_mb in [backends.{conf.name}]")
        digest = folder.digest
        # "tree": named by the files' digest (bundle.tree_digest), not the zip's own sha256
        uri = store.base.child("code", "tree", digest, "code.zip").uri
        if upload and put_known(store, uri, folder.pack):
            travel.uploaded.append(uri)
        entry = spec.get("entry", {})
        target = None
        if entry.get("kind") in ("script", "notebook"):
            target = Path(entry["target"]).resolve().relative_to(folder.root).as_posix()
        travel.code = {
            "uri": self.in_container("code", uri),
            "sha256": digest,
            "sig": _signed_name(digest, upload),
            "files": len(folder.files),
            "size": folder.size,
            "target": target,
        }
        travel.code_uri = uri

    def in_container(self, what: str, uri: str) -> str:
        """Where the container finds ``what`` (``code``, ``requirements``) that was put at
        ``uri``: the URI itself (the launcher fetches it), or where the platform copies it."""
        return uri

    @abstractmethod
    def dry_run(self, record: JobRecord) -> DryRun:
        """The exact objects ``submit`` would send (secrets redacted), nothing sent."""

    # -- the end --------------------------------------------------------------------------
    def end(
        self,
        record: JobRecord,
        status: str,
        error: str | None,
        fields: dict[str, Any],
        collect_outputs: Callable[[], dict[str, Any]],
    ) -> bool:
        """Store that the platform says the job ended as ``status``: a job that ran
        (SUCCEEDED or FAILED) has its outputs collected (``staging.settle``: one whose outputs
        cannot be had fails, and the earliest rank error becomes the error). Returns whether
        this call ended the job (another may have first)."""
        from .staging import settle

        if status in (SUCCEEDED, FAILED):
            status, error = settle(status, error, fields, collect_outputs, SUCCEEDED, FAILED)
        fields.setdefault("info_patch", {})["phase"] = "ended"
        return update_job(self.store, record.id, status=status, error=error, **fields)

    # -- the log mirror -------------------------------------------------------------------
    @abstractmethod
    def fetch_logs(self, record: JobRecord, jobdir: JobDir) -> None:
        """Append the platform's log text of ``record`` that is new since the last fetch to
        the rank files of ``jobdir``; raise ``NbscaleError`` when it cannot."""

    def log_interval(self, record: JobRecord) -> float | None:
        """Seconds between two fetches of ``record``'s logs; None: no fetch (the default:
        while the job is active; its last text is fetched by ``mirror_logs(final=True)``)."""
        return 1.0 if record.status in ACTIVE else None

    def logs_settled(self, record: JobRecord) -> bool:
        """Whether no more text can come after this fetch (the mirror is then complete)."""
        return False

    def mirror_logs(self, record: JobRecord, final: bool = False) -> None:
        """Bring ``record``'s new log text into its local folder, at most every
        ``log_interval`` s; ``final``: now, and no more after (the job has ended)."""
        if not record.native_id or record.info.get("logs_complete"):
            return
        wait = 0.0 if final else self.log_interval(record)
        if wait is None:
            return
        if time.monotonic() - self._log_times.get(record.id, float("-inf")) < wait:
            return
        self._log_times[record.id] = time.monotonic()
        self.fetch_logs(record, JobDir(record.info["job_dir"]))
        if final or self.logs_settled(record):
            update_job(
                self.store, record.id, only_if_active=False, info_patch={"logs_complete": True}
            )
            record.info["logs_complete"] = True

    def ranks(self, record: JobRecord) -> list[int]:
        self.mirror_logs(record)
        return JobDir(record.info["job_dir"]).log_ranks()

    def logs(
        self, record: JobRecord, rank: int, offset: int = 0, max_bytes: int = 1 << 20
    ) -> LogChunk:
        self.mirror_logs(record)
        return LogChunk.read(JobDir(record.info["job_dir"]).log(rank), rank, offset, max_bytes)

    def metrics(self, record: JobRecord) -> list[dict[str, Any]]:
        """What ``log_metric`` logged: read from the metric lines of the mirrored logs while
        the job runs and after (rank 0 prints them in the container), with any record that
        reached the job's local folder. A log that cannot be fetched now leaves what was
        read before (the logs themselves say why)."""
        from ...errors import NbscaleError

        with contextlib.suppress(NbscaleError):
            self.mirror_logs(record)
        jobdir = JobDir(record.info["job_dir"])
        home = jobdir.metrics()
        known = {_key(m) for m in home}
        found = home + [
            m for m in self._log_metrics.read(record.id, jobdir) if _key(m) not in known
        ]
        return sorted(found, key=lambda m: (m.get("time") or 0, m.get("rank", 0)))


def _key(m: dict[str, Any]) -> tuple:
    """A record as its metric line says it (the line's time has milliseconds)."""
    value = m.get("value")
    return (
        m.get("name"),
        m.get("rank"),
        m.get("step"),
        float(value) if isinstance(value, int | float) else value,
        round(float(m.get("time") or 0), 3),
    )


class LogMetrics:
    """The metric lines of a job's mirrored rank logs as ``log_metric`` records (``name``,
    ``value``, ``step``, ``rank``, ``time``), read on from where the last read stopped. What
    was read is kept for the process (a server makes a backend per request), by log file."""

    _seen: ClassVar[dict[tuple[str, int], tuple[int, list[dict[str, Any]]]]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def read(self, job_id: str, jobdir: JobDir) -> list[dict[str, Any]]:
        from ...sweeps.lines import parse_line

        out: list[dict[str, Any]] = []
        for rank in jobdir.log_ranks():
            path = jobdir.log(rank)
            key = (str(path), rank)
            with self._lock:
                before = self._seen.get(key)
            offset, records = before or (0, [])
            try:
                if path.stat().st_size < offset:  # the mirror started over
                    offset, records = 0, []
                with open(path, "rb") as fh:
                    fh.seek(offset)
                    data = fh.read()
            except OSError:
                continue
            end = data.rfind(b"\n") + 1  # whole lines only: the last may be being written
            new = [
                {**parsed, "rank": rank}
                for raw in data[:end].decode(errors="replace").splitlines()
                if (parsed := parse_line(raw)) is not None
            ]
            with self._lock:
                now = self._seen.get(key)
                if now is before:  # nobody read on meanwhile
                    records = [*records, *new]
                    self._seen[key] = (offset + end, records)
                else:
                    records = now[1] if now is not None else [*records, *new]
            out += records
        return out
