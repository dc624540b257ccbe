"""The kernel's side of a job that runs on another machine: send its inputs, fetch its outputs.

``stage`` puts the cell bundle in object storage (content-addressed: an unchanged
bundle is not sent twice) and returns what a backend writes into its manifest or
request: the container command and arguments of ``nbscale.runtime.launch``.
``collect`` brings ``results.zip`` (and a notebook job's executed notebook) back into
the job's local directory, where
``nbscale.results.load_results`` verifies it with this home's key exactly as for a
local job, and reads each node's record to name the root cause of a failure.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ... import paths, storage
from ...errors import NbscaleError
from ...runtime.launch import encode_spec

# the container command: the nbscale runtime (installed in the image, or from the
# wheelhouse the job carries) starts the node
LAUNCH = ["python", "-m", "nbscale.runtime.launch"]


@dataclass
class RemoteJob:
    job_id: str
    bundle_uri: str | None
    outputs_uri: str
    spec_b64: str
    uploaded: bool = False  # False when the bundle was already in the store
    args: list[str] = field(default_factory=list)

    @property
    def command(self) -> list[str]:
        return list(LAUNCH)

    def argv(self) -> list[str]:
        return [*self.command, *self.args]


# content-addressed objects this process put or found recently: an unchanged re-submit
# sends not even a HEAD. The names never change meaning; the TTL covers a lifecycle rule or
# a person deleting one (the container then fails at once, naming what is missing).
KNOWN_TTL = 600.0
_known: dict[str, float] = {}
_known_lock = threading.Lock()


def put_known(store: storage.ObjectStore, uri: str, local: Callable[[], Path]) -> bool:
    """Make sure the content-addressed object ``uri`` is in ``store``: nothing is sent when
    this process saw it lately or the store has it; else ``local()`` (made only then) is
    uploaded. Returns whether anything was sent."""
    endpoint = (
        getattr(getattr(store.client, "meta", None), "endpoint_url", "")
        if (store.base.scheme != "file")
        else "file"
    )
    where = f"{endpoint} {uri}"
    with _known_lock:
        seen = _known.get(where)
    if seen is not None and time.monotonic() - seen < KNOWN_TTL:
        return False
    sent = False
    if not store.exists(uri):
        store.put_at(local(), uri)
        sent = True
    with _known_lock:
        _known[where] = time.monotonic()
    return sent


def outputs_uri(store: storage.ObjectStore, job_id: str) -> str:
    return store.base.child("jobs", job_id, "outputs").uri


def stage(
    job_id: str,
    spec: dict[str, Any],
    store: storage.ObjectStore,
    bundle_uri: str | None = None,
) -> RemoteJob:
    """Upload the job's bundle (if it has one and ``bundle_uri`` is not given) and build the
    launch arguments. The spec is sent without its local bundle path."""
    spec = json.loads(json.dumps(spec))
    uploaded = False
    if spec.get("entry", {}).get("kind") == "bundle" and bundle_uri is None:
        local = Path(spec["entry"]["target"])
        if not local.is_file():
            raise NbscaleError(f"the cell bundle {local} is gone", "run the cell again")
        bundle_uri, uploaded = store.put_new(local, "cell.zip", area="bundles")
    if spec.get("entry", {}).get("kind") == "bundle":
        spec["entry"]["target"] = "cell.zip"  # the launcher fetches it next to the job
    out = outputs_uri(store, job_id)
    b64 = encode_spec(spec)
    args = ["--job-id", job_id, "--spec", b64, "--outputs", out]
    if bundle_uri:
        args += ["--bundle", bundle_uri]
    return RemoteJob(job_id, bundle_uri, out, b64, uploaded, args)


def node_records(store: storage.ObjectStore, outputs: str, nnodes: int) -> dict[int, dict]:
    """The ``nodes/<rank>.json`` records written so far."""
    found: dict[int, dict] = {}
    base = outputs.rstrip("/")
    with tempfile.TemporaryDirectory() as tmp:
        for node in range(nnodes):
            uri = f"{base}/nodes/{node}.json"
            if not store.exists(uri):
                continue
            path = storage.fetch(uri, Path(tmp) / f"{node}.json", store=store)
            try:
                found[node] = json.loads(path.read_text())
            except ValueError:
                continue
    return found


def collect(
    job_id: str,
    store: storage.ObjectStore,
    outputs: str,
    nnodes: int,
    reported: dict[int, dict] | None = None,
) -> dict[str, Any]:
    """Download the job's results into its local directory and summarise the nodes.

    Returns ``{"job_dir", "nodes", "exit_code", "error"}``; ``error`` is the earliest
    rank error of any node (the root cause), as ``nbscale status`` shows it locally.
    ``reported``: node records that came another way (the platform's logs), for nodes
    whose record is not among the outputs; only ``results.zip`` must be there.
    """
    job_dir = paths.job_dir(job_id)
    (job_dir / "outputs").mkdir(parents=True, exist_ok=True)
    nodes = {
        **{n: r for n, r in (reported or {}).items() if 0 <= n < nnodes},
        **node_records(store, outputs, nnodes),
    }
    results = f"{outputs.rstrip('/')}/results.zip"
    if store.exists(results):
        storage.fetch(results, job_dir / "outputs" / "results.zip", store=store)
    executed = f"{outputs.rstrip('/')}/notebooks/rank-0.ipynb"  # a notebook job's
    if store.exists(executed):
        (job_dir / "notebooks").mkdir(exist_ok=True)
        storage.fetch(executed, job_dir / "notebooks" / "rank-0.ipynb", store=store)
    errors = sorted(
        (e for rec in nodes.values() for e in rec.get("errors") or []),
        key=lambda e: e.get("time", 0),
    )
    codes = [rec.get("exit_code") for rec in nodes.values()]
    first = next((rec.get("error") for rec in nodes.values() if rec.get("error")), None)
    return {
        "job_dir": str(job_dir),
        "nodes": len(nodes),
        "exit_code": next((c for c in codes if c), 0) if codes else None,
        "error": errors[0] if errors else ({"message": first} if first else None),
        "restarts": max((rec.get("restarts") or 0 for rec in nodes.values()), default=0),
    }


def settle(
    status: str,
    error: str | None,
    fields: dict[str, Any],
    collect_outputs: Callable[[], dict[str, Any]],
    succeeded: str,
    failed: str,
) -> tuple[str, str | None]:
    """The outcome of a remote job that the platform says has ended: its outputs are
    collected, a job whose outputs cannot be had fails, and the earliest rank error (the root
    cause) becomes the job's error, with its rank and traceback in ``fields``."""
    try:
        collected = collect_outputs()
    except NbscaleError as exc:
        collected = {}
        if status == succeeded:
            status, error = failed, f"the job's outputs could not be collected: {exc}"
    root = collected.get("error")
    if root:
        fields["failed_rank"] = root.get("rank")
        fields.setdefault("info_patch", {})["traceback"] = root.get("traceback")
        message = root.get("message") or root.get("type")
        error = f"rank {root['rank']}: {message}" if root.get("rank") is not None else message
    if collected.get("exit_code") is not None:
        fields["exit_code"] = collected["exit_code"]
    fields["restarts"] = max(fields.get("restarts", 0), collected.get("restarts", 0))
    return status, error
