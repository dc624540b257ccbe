"""Results of a cell job: what rank 0 writes back, and loading them in the kernel.

Results travel as a signed bundle of kind ``results`` in the job's
``outputs/`` directory; the manifest names the job, so results of one job
cannot be passed off as another's.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import bundle
from .capture import dump_value, load_value
from .errors import NbscaleError, NotFound, SignatureError

if TYPE_CHECKING:  # the store is the kernel's; a job's rank 0 never imports it
    from .store.jobs import JobRecord

KIND = "results"
FILE = "results.zip"


def _unwrap(value: Any) -> Any:
    # a DDP wrapper needs a process group to unpickle; the kernel wants the model inside
    parallel = type(value).__name__ in ("DistributedDataParallel", "DataParallel")
    return value.module if parallel and hasattr(value, "module") else value


def write_results(outputs_dir: str | Path, job_id: str, values: dict[str, Any]) -> Path:
    parts: dict[str, bytes] = {}
    entries = []
    for i, (name, value) in enumerate(values.items()):
        data, how = dump_value(_unwrap(value))
        part = f"outputs/{i:03d}-{name}.{'pt' if how == 'torch.save' else 'pkl'}"
        parts[part] = data
        entries.append(
            {
                "name": name,
                "part": part,
                "how": how,
                "type": type(value).__name__,
                "size": len(data),
            }
        )
    manifest = {"kind": KIND, "job_id": job_id, "outputs": entries}
    return bundle.write(Path(outputs_dir) / FILE, manifest, parts)


def results_path(record: JobRecord) -> Path:
    job_dir = record.info.get("job_dir")
    if not job_dir:
        raise NotFound(f"job {record.id} keeps no results on this machine")
    return Path(job_dir) / "outputs" / FILE


def load_results(record: JobRecord, names: list[str] | None = None) -> dict[str, Any]:
    """The outputs of a finished cell job, checked against the signature before unpickling."""
    from .store.jobs import SUCCEEDED

    if record.status != SUCCEEDED:
        raise NbscaleError(f"job {record.id} is {record.status}; only a succeeded job has results")
    path = results_path(record)
    if not path.exists():
        if record.spec.get("entry", {}).get("kind") != "bundle":
            raise NotFound(f"job {record.id} is not a cell job, so it has no outputs")
        return {}  # a cell job run without --outputs
    return read_results_file(path, record.id, names)


def read_results_file(path: Path, job_id: str, names: list[str] | None = None) -> dict[str, Any]:
    """Verify ``results.zip`` (signature, every part's hash, the job it names), then load."""
    found = bundle.read(path, KIND)
    if found.manifest.get("job_id") != job_id:
        raise SignatureError(
            f"{path} holds the results of job {found.manifest.get('job_id')}, not {job_id}"
        )
    entries = {e["name"]: e for e in found.manifest["outputs"]}
    wanted = list(entries) if names is None else names
    missing = [n for n in wanted if n not in entries]
    if missing:
        raise NotFound(
            f"job {job_id} did not return {', '.join(missing)}",
            f"it returned: {', '.join(entries) or '(nothing)'}",
        )
    return {n: load_value(found.part(entries[n]["part"]), entries[n]["how"]) for n in wanted}
