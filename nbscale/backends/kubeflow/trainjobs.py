"""The TrainJobs and training runtimes of a namespace, nbscale's and others', as the
Kubeflow SDK's ``TrainerClient`` sees them: list them, list the runtimes they can name,
and attach to one by name.

- ``list_trainjobs``: every TrainJob of the namespace (paged by the API server), each
  with nbscale's job id when nbscale made it (its ``nbscale.io/job-id`` label), else
  marked ``foreign``; its state in nbscale's words from the TrainJob's conditions.
- ``list_runtimes``: the ClusterTrainingRuntimes and the namespace's TrainingRuntimes,
  with their framework, node count and image; a kind the user may not list is a note,
  not a failure (a profile user often cannot list cluster-scoped objects).
- ``adopt``: a store row for a TrainJob (the row there is, when there is one), so
  ``nbscale status``, ``logs`` and ``wait`` work on it. A TrainJob nbscale made elsewhere
  keeps its job id and its outputs come home; a foreign one is ``foreign``: its pods are
  found by the JobSet's label and no outputs are expected.

``TrainJobBackend`` is the Kubeflow ``JobBackend`` with these: it is the platform's
registered job backend.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import queue
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

from ... import paths
from ...errors import NbscaleError, NotFound
from ...specs import Entry, JobSpec
from ...store import Store
from ...store.jobs import FAILED, PENDING, RUNNING, SUCCEEDED, JobRecord, get_job, insert_job
from ...store.jobs import update_job as _update_job
from . import manifests as mf
from .cluster import Cluster, api_error, is_status
from .jobs import PLURAL, KubeflowBackend
from .podlogs import CHUNK, MAX_LINE

RUNTIME_PLURALS = (
    ("ClusterTrainingRuntime", "clustertrainingruntimes"),
    ("TrainingRuntime", "trainingruntimes"),
)
JOBSET_LABEL = "jobset.sigs.k8s.io/jobset-name"  # JobSet puts it on every pod of a TrainJob
FRAMEWORK_LABEL = "trainer.kubeflow.org/framework"
PAGE = 500


def _epoch(stamp: str | None) -> float | None:
    if not stamp:
        return None
    try:
        return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def trainjob_state(obj: dict[str, Any]) -> tuple[str, str]:
    """(nbscale status, the TrainJob's own words) from its conditions and ``jobsStatus``."""
    st = obj.get("status") or {}
    conds = {c.get("type"): c for c in st.get("conditions") or []}

    def true(kind: str) -> bool:
        return (conds.get(kind) or {}).get("status") == "True"

    if true("Complete"):
        return SUCCEEDED, "Complete"
    if true("Failed"):
        reason = (conds["Failed"].get("reason") or "").strip()
        return FAILED, f"Failed{': ' + reason if reason else ''}"
    if true("Suspended") or (obj.get("spec") or {}).get("suspend"):
        return PENDING, "Suspended"
    jobs = st.get("jobsStatus") or []
    if any((j.get("active") or 0) + (j.get("ready") or 0) > 0 for j in jobs):
        return RUNNING, "Running"
    return PENDING, "Created"


def _list_all(cluster: Cluster, what: str, fn, *args) -> list[dict[str, Any]]:
    """Every item of a list call, page by page (``limit``/``continue``)."""
    items: list[dict[str, Any]] = []
    token = None
    while True:
        kw: dict[str, Any] = {"limit": PAGE}
        if token:
            kw["_continue"] = token
        page = cluster.call(what, fn, *args, **kw)
        items.extend(page.get("items") or [])
        token = (page.get("metadata") or {}).get("continue")
        if not token:
            return items


def summary(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    labels = meta.get("labels") or {}
    trainer = spec.get("trainer") or {}
    ref = spec.get("runtimeRef") or {}
    status, phase = trainjob_state(obj)
    job_id = labels.get(mf.JOB_LABEL)
    return {
        "name": meta.get("name"),
        "namespace": meta.get("namespace"),
        "status": status,
        "phase": phase,
        "nodes": trainer.get("numNodes"),
        "runtime": f"{ref.get('kind', 'ClusterTrainingRuntime')}/{ref.get('name', '')}",
        "image": trainer.get("image"),
        "created": _epoch(meta.get("creationTimestamp")),
        "job_id": job_id,
        "foreign": not job_id,
    }


def list_trainjobs(cluster: Cluster, namespace: str | None = None) -> list[dict[str, Any]]:
    """Every TrainJob of ``namespace`` (default: the cluster's), newest first."""
    ns = namespace or cluster.namespace
    items = _list_all(
        cluster,
        f"listing the TrainJobs of namespace {ns}",
        cluster.custom().list_namespaced_custom_object,
        mf.TRAINER_GROUP,
        mf.TRAINER_VERSION,
        ns,
        PLURAL,
    )
    found = [summary(obj) for obj in items]
    return sorted(found, key=lambda t: (-(t["created"] or 0), t["name"] or ""))


def _runtime_row(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    policy = spec.get("mlPolicy") or {}
    frameworks = [k for k in policy if k not in ("numNodes",)]
    images = []
    for rjob in ((spec.get("template") or {}).get("spec") or {}).get("replicatedJobs") or []:
        pod = (((rjob.get("template") or {}).get("spec") or {}).get("template") or {}).get(
            "spec"
        ) or {}
        images += [f"{rjob.get('name')}: {c.get('image')}" for c in pod.get("containers") or []]
    return {
        "kind": kind,
        "name": meta.get("name"),
        "namespace": meta.get("namespace"),
        "framework": (meta.get("labels") or {}).get(FRAMEWORK_LABEL)
        or ",".join(frameworks)
        or None,
        "nodes": policy.get("numNodes"),
        "images": images,
    }


def list_runtimes(cluster: Cluster) -> tuple[list[dict[str, Any]], list[str]]:
    """(runtimes, notes): the ClusterTrainingRuntimes and the namespace's TrainingRuntimes;
    a kind that cannot be listed (forbidden, or the Trainer is not installed) is a note."""
    api = cluster.custom()
    out: list[dict[str, Any]] = []
    notes: list[str] = []
    for kind, plural in RUNTIME_PLURALS:
        if kind == "ClusterTrainingRuntime":
            what = "listing the ClusterTrainingRuntimes"
            args: tuple = (
                api.list_cluster_custom_object,
                mf.TRAINER_GROUP,
                mf.TRAINER_VERSION,
                plural,
            )
        else:
            what = f"listing the TrainingRuntimes of namespace {cluster.namespace}"
            args = (
                api.list_namespaced_custom_object,
                mf.TRAINER_GROUP,
                mf.TRAINER_VERSION,
                cluster.namespace,
                plural,
            )
        try:
            items = _list_all(cluster, what, *args)
        except NbscaleError as exc:
            if is_status(exc, 403) or is_status(exc, 404):
                notes.append(str(exc))
                continue
            raise
        out += sorted((_runtime_row(kind, o) for o in items), key=lambda r: r["name"] or "")
    return out, notes


def _merged(sources: list[tuple[int, Iterator[str]]]) -> Iterator[tuple[int, str]]:
    """Lines of several streams as they come, through a bounded queue (a reader waits
    while the queue is full); the first reader's error is raised here."""
    out: queue.Queue = queue.Queue(maxsize=256)
    done = object()
    stop = threading.Event()

    def put(item: tuple) -> bool:
        """Wait while the queue is full; False once the reader has gone."""
        while not stop.is_set():
            try:
                out.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def read(node: int, source: Iterator[str]) -> None:
        try:
            for line in source:
                if not put((node, line)):
                    return
            put((node, done))
        except BaseException as exc:  # noqa: BLE001 - handed to the reading thread
            put((node, exc))

    threads = [
        threading.Thread(target=read, args=src, daemon=True, name=f"pod-log-{src[0]}")
        for src in sources
    ]
    for t in threads:
        t.start()
    left = len(threads)
    try:
        while left:
            node, item = out.get()
            if item is done:
                left -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield node, item
    finally:
        stop.set()


def _find_row(store: Store, backend: str, namespace: str, name: str) -> JobRecord | None:
    rows = store.query(
        "SELECT id FROM jobs WHERE backend = ? AND native_id = ? ORDER BY created DESC",
        (backend, name),
    )
    for row in rows:
        record = get_job(store, row[0])
        if (record.info.get("namespace") or namespace) == namespace:
            return record
    return None


def adopt(backend: TrainJobBackend, name: str) -> JobRecord:
    """The store row of TrainJob ``name`` in the backend's namespace, made when there is
    none; refreshed from the cluster."""
    cluster = backend.cluster()
    ns = cluster.namespace
    try:
        obj = cluster.custom().get_namespaced_custom_object(
            mf.TRAINER_GROUP, mf.TRAINER_VERSION, ns, PLURAL, name
        )
    except Exception as exc:  # noqa: BLE001
        err = api_error(exc, f"reading TrainJob {name}", cluster)
        if is_status(err, 404):
            raise NotFound(
                f"there is no TrainJob {name!r} in namespace {ns} ({cluster.describe()})",
                f"list them with: nbscale jobs --backend {backend.config.name}",
            ) from None
        raise err from None
    store = backend.store
    found = _find_row(store, backend.config.name, ns, name)
    info = summary(obj)
    if found is None and info["job_id"]:
        with contextlib.suppress(NotFound):
            mine = get_job(store, info["job_id"])
            if mine.native_id == name:
                found = mine
    if found is not None:
        return backend.status(found)
    trainer = (obj.get("spec") or {}).get("trainer") or {}
    procs = trainer.get("numProcPerNode")
    labels = (obj.get("metadata") or {}).get("labels") or {}
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    foreign = info["foreign"]
    job_id = info["job_id"] or f"{name[:40].rstrip('-')}-{secrets.token_hex(3)}"
    outputs_uri = None
    if not foreign and backend.settings.storage:
        outputs_uri = backend.object_store().base.child("jobs", job_id, "outputs").uri
    shown_name = annotations.get("nbscale.io/job-name") or name
    try:
        spec = JobSpec(
            entry=Entry("module", f"trainjob/{name}"),
            name=shown_name,
            backend=backend.config.name,
            nodes=max(1, int(trainer.get("numNodes") or 1)),
            procs_per_node=procs if isinstance(procs, int) and procs > 0 else 1,
            tags={k: v for k, v in labels.items() if "/" not in k},
        )
    except NbscaleError:  # a name nbscale would not choose: the spec says where it came from
        spec = JobSpec(
            entry=Entry("module", f"trainjob/{name}"),
            name="trainjob",
            backend=backend.config.name,
            nodes=max(1, int(trainer.get("numNodes") or 1)),
        )
    record = JobRecord(
        id=job_id,
        name=shown_name,
        backend=backend.config.name,
        backend_type=backend.type,
        status=PENDING,
        spec=spec.to_dict(),
        created=info["created"] or time.time(),
        native_id=name,
        info={
            "job_dir": str(paths.job_dir(job_id)),
            "cwd": os.getcwd(),
            "phase": "attached",
            "namespace": ns,
            "context": cluster.context,
            "image": trainer.get("image"),
            "attached": True,
            "foreign": foreign,
            "expect_outputs": outputs_uri is not None,
            **({"outputs_uri": outputs_uri} if outputs_uri else {}),
        },
    )
    insert_job(store, record)
    return backend.status(get_job(store, job_id))


class TrainJobBackend(KubeflowBackend):
    """The Kubeflow job backend, with the namespace's TrainJobs and runtimes."""

    lists_native = True

    def list_native(self) -> list[dict[str, Any]]:
        return list_trainjobs(self.cluster())

    def attach(self, name: str) -> JobRecord:
        return adopt(self, name)

    def runtimes(self) -> list[dict[str, Any]]:
        found, notes = list_runtimes(self.cluster())
        if not found and notes:
            raise NbscaleError(
                "no training runtime could be listed: " + "; ".join(notes),
                "ask the cluster's admin for get/list on clustertrainingruntimes and "
                "trainingruntimes (trainer.kubeflow.org)",
            )
        for note in notes:
            found.append({"kind": "note", "name": None, "note": note})
        return found

    def pods(self, record: JobRecord) -> list[Any]:
        """A foreign TrainJob's pods carry no nbscale label: JobSet's, named after it."""
        if not record.info.get("foreign"):
            return super().pods(record)
        return self.labelled_pods(record, JOBSET_LABEL, record.native_id)

    def platform_logs(
        self,
        record: JobRecord,
        nodes: list[int] | None = None,
        tail: int | None = None,
        since: float | None = None,
        follow: bool = False,
    ) -> Iterator[tuple[int, str]]:
        """The node pods' logs from the API server (``tailLines``, ``sinceSeconds``,
        ``follow``), each streamed in chunks; several pods are read by one thread each into
        a bounded queue, so memory holds a few lines per pod, however long the logs."""
        from .jobs import node_rank

        pods = [p for p in self.pods(record) if nodes is None or node_rank(p) in nodes]
        if not pods:
            which = "" if nodes is None else f" of node {', '.join(map(str, nodes))}"
            raise NbscaleError(
                f"job {record.id} has no pod{which} to read a log from (not scheduled yet, "
                "or gone)",
                f"nbscale logs {record.id} shows what was copied while it ran",
            )
        cluster = self.cluster()
        namespace = record.info.get("namespace") or cluster.namespace
        params: dict[str, Any] = {"follow": follow, "_preload_content": False}
        if tail is not None:
            params["tail_lines"] = tail
        if since is not None:
            params["since_seconds"] = max(1, math.ceil(since))

        def lines(pod: Any) -> Iterator[str]:
            names = [c.name for c in pod.spec.containers or []] if pod.spec else []
            container = mf.NODE if mf.NODE in names or not names else names[0]
            resp = self._call(
                f"reading the log of pod {pod.metadata.name}",
                cluster.core().read_namespaced_pod_log,
                pod.metadata.name,
                namespace,
                container=container,
                **params,
            )
            try:
                partial = b""
                for chunk in resp.stream(CHUNK, decode_content=True):
                    partial += chunk
                    *done, partial = partial.split(b"\n")
                    for raw in done:
                        yield raw[:MAX_LINE].decode("utf-8", errors="replace")
                    if len(partial) > MAX_LINE:  # a line longer than that is cut
                        yield partial[:MAX_LINE].decode("utf-8", errors="replace")
                        partial = b""
                if partial:
                    yield partial.decode("utf-8", errors="replace")
            finally:
                resp.release_conn()

        if len(pods) == 1:
            node = node_rank(pods[0])
            for line in lines(pods[0]):
                yield node, line
            return
        yield from _merged([(node_rank(p), lines(p)) for p in pods])

    def _finish(self, record, obj, status, conds) -> JobRecord:
        """A TrainJob whose outputs nbscale cannot expect ends with what the cluster says."""
        if record.info.get("expect_outputs", True):
            return super()._finish(record, obj, status, conds)
        error = None
        if status == FAILED:
            cond = conds.get("Failed") if isinstance(conds, dict) else None
            if isinstance(cond, dict) and (cond.get("reason") or cond.get("message")):
                error = f"{cond.get('reason', 'Failed')}: {cond.get('message', '')}".rstrip(": ")
            else:
                error = "the TrainJob failed"
        with contextlib.suppress(NbscaleError):
            self.mirror_logs(record, final=True)
        _update_job(
            self.store,
            record.id,
            status=status,
            error=error,
            ended=time.time(),
            started=record.started or record.created,
            info_patch={"phase": "ended"},
        )
        return get_job(self.store, record.id)
