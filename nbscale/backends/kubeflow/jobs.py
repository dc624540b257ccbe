"""The Kubeflow job backend: ``%%train`` cells and ``nbscale run -m module`` as TrainJobs.

submit: the signing keys go to the user's own Secret (``nbscale-keys-USER``, created or
updated in the job's namespace; only its name is in the TrainJob), the bundle (canonical, ``nbscale.backends.remote.lifecycle``) to object storage
content-addressed, or, under 900 KiB, to a ConfigMap the pods mount; then the TrainJob
(``manifests.trainjob``). status: the
TrainJob's conditions and ``jobsStatus``, and the node pods' own state, so a pod that
cannot be scheduled, cannot pull its image, is OOM-killed or crash-loops is reported
(the job's phase, and an event) while it happens, and so are the TrainJob's own
Warning events and conditions (``TrainJobResourcesCreationFailed``: no pods ever come).
Events are listed per object with a field selector (the TrainJob and its JobSet, its
Job, each pod not running), never every Warning of the namespace. Fail fast: a node
container that exits non-zero (torchrun inside has spent ``--max-restarts``) ends the job
FAILED at once; its logs are copied first (``previous=True`` for a restarted container,
so the first traceback is kept) and the TrainJob is deleted, so the cluster does not
re-run it (the stock runtime restarts a failed container up to 6 times). A pod the
cluster took away (condition ``DisruptionTarget``: spot reclaim) is not a failure.
When the TrainJob ends, the outputs come home from object storage (``nbscale.backends.remote.staging.collect``). logs: every
node pod by label selector, split by rank (``podlogs``), mirrored into the job's folder by
``RemoteJobBackend``. cancel: the TrainJob and the ConfigMap are deleted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ... import storage
from ...errors import BackendUnavailable, NbscaleError, SpecError
from ...runtime.jobdir import JobDir
from ...specs import JobSpec
from ...store.jobs import (
    ACTIVE,
    CANCELLED,
    FAILED,
    RUNNING,
    SUCCEEDED,
    JobRecord,
    add_event,
    get_job,
    update_job,
)
from ..base import DryRun
from ..remote.lifecycle import RemoteJobBackend, Travel, canonical_bundle, log_copy_lock
from . import manifests as mf
from .cluster import Cluster, api_error, connect, is_status
from .podlogs import LogState, PodCursor, RankWriter, copy_pod_log, since_seconds
from .settings import KubeflowSettings, settings

KEY_PURPOSES = ("bundle", "pipeline", "model")  # one Secret serves jobs, pipelines, endpoints
PLURAL = "trainjobs"
# container states that mean the pod will not get anywhere by itself
BAD_WAITING = {
    "ImagePullBackOff": "cannot pull the image",
    "ErrImagePull": "cannot pull the image",
    "InvalidImageName": "the image name is invalid",
    "CrashLoopBackOff": "keeps crashing",
    "CreateContainerConfigError": "cannot be configured (a missing Secret or ConfigMap?)",
}
# the Trainer's Warning event when it cannot make the TrainJob's JobSet
CREATION_FAILED = "TrainJobResourcesCreationFailed"


class KubeflowBackend(RemoteJobBackend):
    type = "kubeflow"
    unsupported = {
        "checkpoint_dir": "a path on this machine means nothing in a pod; "
        "save checkpoints to object storage from the job",
    }
    supports_spot = True  # spot_node_selector / spot_tolerations (settings.require_spot)
    file_mount = mf.BUNDLE_MOUNT  # a script or notebook travels in the bundle ConfigMap
    container_drops = ("secret_env",)

    def __init__(self, config, store):
        super().__init__(config, store)
        self.settings: KubeflowSettings = settings(config)
        self._runtime_cuda: str | None = None  # read once: "" when the runtime pins none
        self._cluster: Cluster | None = None
        self._lock = threading.Lock()
        self._looked: dict[str, float] = {}
        self._travel: dict[str, Travel] = {}  # what the last plan of a job staged

    @classmethod
    def prewarm(cls, bconf) -> None:
        """At ``%load_ext nbscale``, in a background thread: import the kubernetes client,
        read the kube config and make the S3 client once, so the first cell does not."""
        try:
            conf = settings(bconf)
            connect(conf)
            if conf.storage:
                _ = storage.ObjectStore.from_options(conf.storage_options(), progress=None).client
        except Exception:  # noqa: BLE001, S110 - a warm-up only: submit reports any problem
            return

    # -- plumbing ---------------------------------------------------------------------
    def cluster(self) -> Cluster:
        with self._lock:
            if self._cluster is None:
                self._cluster = connect(self.settings)
            return self._cluster

    def object_store(self) -> storage.ObjectStore:
        self.settings.require_storage("a Kubeflow job")
        return storage.ObjectStore.from_options(self.settings.storage_options())

    def _call(self, what: str, fn, *args, **kw):
        return self.cluster().call(what, fn, *args, **kw)

    def check(self) -> dict[str, Any]:
        try:
            cluster = self.cluster()
        except NbscaleError as exc:
            return {"reachable": False, "detail": str(exc)}
        return cluster.probe(mf.TRAINER_GROUP, mf.TRAINER_VERSION, PLURAL, "Kubeflow Trainer")

    # -- submit -----------------------------------------------------------------------
    def validate(self, spec: JobSpec) -> None:
        if spec.spot:
            self.settings.require_spot()
        kind = spec.entry.kind
        if kind in ("script", "notebook"):  # a notebook runs under papermill (step closure)
            path = Path(spec.entry.target)
            if not path.is_file():
                raise SpecError("entry", f"{kind} {path} does not exist")
        if kind == "bundle" and not Path(spec.entry.target).is_file():
            raise SpecError("entry", f"cell bundle {spec.entry.target} does not exist")
        if spec.secret_env:
            raise SpecError(
                "secret_env",
                "the kubeflow backend does not copy secret values into a cluster",
                "put them in a Kubernetes Secret and read it in the job",
            )
        self.settings.require_storage("a Kubeflow job (its outputs come back that way)")
        mf.job_labels("check", spec.to_dict(), self.settings)
        mf.image_of(mf.resolve(spec.to_dict(), self.settings), self.settings)  # before uploads
        for warning in self.check_travel(spec.to_dict()):
            print(f"nbscale: warning: {warning}", file=sys.stderr, flush=True)

    def _wheelhouse_url(
        self, store: storage.ObjectStore, upload: bool, kind: str = "job"
    ) -> str | None:
        """A time-limited GET URL of the runtime wheels (zip), for a stock image to install:
        the ``job`` closure, or ``step`` (papermill, ipykernel) for a notebook job.

        It grants reading that one object (public code) for 7 days, nothing else."""
        if not self.settings.wheelhouse:
            return None
        from ...runtime import wheelhouse

        folder = wheelhouse.build(kind)
        archive = wheelhouse.zipped(folder)
        if upload:
            uri = store.put(archive, "wheels.zip", area="wheelhouse")
        else:
            uri = store.base.child(
                "wheelhouse", "sha256", storage.sha256_file(archive), "wheels.zip"
            ).uri
        loc = storage.parse(uri)
        import boto3
        from botocore.config import Config

        client = boto3.client(
            "s3",
            endpoint_url=self.settings.pod_endpoint_url or self.settings.endpoint_url,
            region_name=self.settings.region,
            config=Config(signature_version="s3v4"),
        )
        return client.generate_presigned_url(
            "get_object", Params={"Bucket": loc.bucket, "Key": loc.key}, ExpiresIn=7 * 24 * 3600
        )

    def plan(
        self, record: JobRecord, upload: bool
    ) -> tuple[mf.Staged, bytes | None, dict[str, Any]]:
        """What the job needs where: (staged inputs, ConfigMap bundle bytes, TrainJob).

        With ``upload`` False nothing is written anywhere (``--dry-run``); the object
        storage locations are computed from the hashes."""
        from ...runtime.launch import encode_spec

        spec = mf.resolve(record.spec, self.settings)  # the node's real processes and GPUs
        store = self.object_store()
        namespace = self.cluster().namespace if upload else self._dry_namespace()
        configmap_data = None
        bundle = configmap = None
        configmap_key = "cell.zip"
        # the job's folder and its requirements: content-addressed in object storage
        travel = self.stage_travel(spec, store, upload)
        if upload:  # submit records what was sent
            self._travel[record.id] = travel
        if spec["entry"]["kind"] in ("script", "notebook") and not travel.code:
            # one file without its folder (a spec made before folders travelled): a ConfigMap
            local = Path(spec["entry"]["target"])
            configmap_data = local.read_bytes()
            configmap_key = local.name
            configmap = f"{mf.object_name(record.id)}-bundle"
        elif spec["entry"]["kind"] == "bundle":
            local = Path(spec["entry"]["target"])
            if not local.is_file():
                raise NbscaleError(f"the cell bundle {local} is gone", "run the cell again")
            local = canonical_bundle(local)
            try:
                if local.stat().st_size < self.settings.configmap_limit:
                    configmap_data = local.read_bytes()
                    configmap = f"{mf.object_name(record.id)}-bundle"
                    bundle = f"{mf.BUNDLE_MOUNT}/cell.zip"
                elif upload:
                    bundle = store.put(local, "cell.zip", area="bundles")
                else:
                    bundle = store.base.child(
                        "bundles", "sha256", storage.sha256_file(local), "cell.zip"
                    ).uri
            finally:
                if local.name.endswith(".canonical.zip"):
                    local.unlink(missing_ok=True)
        staged = mf.Staged(
            key_secret=self.key_secret_name(upload),
            cuda_max=self.runtime_cuda(),
            job_id=record.id,
            spec_b64=encode_spec(self.container_spec(spec, travel)),
            outputs_uri=store.base.child("jobs", record.id, "outputs").uri,
            bundle=bundle,
            configmap=configmap,
            configmap_key=configmap_key,
            wheelhouse_url=self._wheelhouse_url(
                store, upload, "step" if spec["entry"]["kind"] == "notebook" else "job"
            ),
        )
        body = mf.trainjob(record.id, spec, self.settings, staged, namespace)
        return staged, configmap_data, body

    def runtime_cuda(self) -> str | None:
        """The CUDA of the image the cluster's Trainer runtime (``runtime``) pins: a stock
        image newer than it may need a driver the nodes lack (CUDA 13: >= 580). None
        where the runtime cannot be read (a dry run without a cluster, no permission)."""
        from .images import cuda_cap

        if self._runtime_cuda is not None:
            return self._runtime_cuda or None
        s = self.settings
        try:
            cluster = self.cluster()
            api = cluster.custom()
            if s.runtime_kind == "ClusterTrainingRuntime":
                obj = api.get_cluster_custom_object(
                    mf.TRAINER_GROUP, mf.TRAINER_VERSION, "clustertrainingruntimes", s.runtime
                )
            else:
                obj = api.get_namespaced_custom_object(
                    mf.TRAINER_GROUP,
                    mf.TRAINER_VERSION,
                    cluster.namespace,
                    "trainingruntimes",
                    s.runtime,
                )
        except Exception:  # noqa: BLE001 - unreadable: no cap (the webhook names a missing one)
            return None
        self._runtime_cuda = cuda_cap(runtime=obj) or ""
        return self._runtime_cuda or None

    def key_secret_name(self, connected: bool = True) -> str:
        """The name of the Secret holding this user's keys (``mf.key_secret_name``)."""
        return user_key_secret_name(self.settings, self.cluster, connected)

    def _dry_namespace(self) -> str:
        try:
            return self.cluster().namespace
        except NbscaleError:
            return self.settings.namespace or "default"

    def resolve(self, spec: JobSpec) -> JobSpec:
        return JobSpec.from_dict(mf.resolve(spec.to_dict(), self.settings))

    def dry_run(self, record: JobRecord) -> DryRun:
        """The exact objects ``submit`` would send, as YAML; the key Secret it mounts is
        named in a note, never shown."""
        staged, data, body = self.plan(record, upload=False)
        namespace = body["metadata"]["namespace"]
        objects = [body]
        if data is not None:
            objects.append(
                mf.bundle_configmap(record.id, data, namespace, key=staged.configmap_key)
            )
        key_secret = mf.key_secret(staged.key_secret, "{}", namespace)
        notes = [*self.travel_notes(record.spec), mf.secret_note(key_secret, "the signing keys")]
        return DryRun(objects, "yaml", notes)

    def ensure_key_secret(self, per_user: bool = False) -> str:
        """Write the signing keys where the pods read them; ``per_user``: to this user's own
        Secret (``key_secret_name``), else to the settings' ``key_secret``. Its name."""
        cluster = self.cluster()
        return ensure_key_secret(cluster, self.settings, user=cluster.user if per_user else None)

    def submit(self, record: JobRecord, secrets: Mapping[str, str] | None = None) -> JobRecord:
        if secrets:
            raise SpecError("secret_env", "the kubeflow backend cannot pass secret values")
        cluster = self.cluster()
        JobDir(record.info["job_dir"]).make()
        self.ensure_key_secret(per_user=True)
        staged, data, body = self.plan(record, upload=True)
        api = cluster.custom()
        created = self._call(
            f"creating TrainJob {body['metadata']['name']}",
            api.create_namespaced_custom_object,
            mf.TRAINER_GROUP,
            mf.TRAINER_VERSION,
            cluster.namespace,
            PLURAL,
            body,
        )
        if data is not None:
            cm = mf.bundle_configmap(
                record.id,
                data,
                cluster.namespace,
                owner=mf.owner_reference(created),
                key=staged.configmap_key,
            )
            try:
                self._call(
                    f"creating ConfigMap {cm['metadata']['name']}",
                    cluster.core().create_namespaced_config_map,
                    cluster.namespace,
                    cm,
                )
            except NbscaleError:
                self._delete_trainjob(body["metadata"]["name"])
                raise
        update_job(
            self.store,
            record.id,
            native_id=body["metadata"]["name"],
            spec=mf.resolve(record.spec, self.settings),  # the shape the pods run
            info_patch={
                "phase": "queued",
                "namespace": cluster.namespace,
                "context": cluster.context,
                "outputs_uri": staged.outputs_uri,
                "bundle": "configmap" if data is not None else staged.bundle,
                "configmap": staged.configmap,
                "image": body["spec"]["trainer"]["image"],
                "key_secret": staged.key_secret,
                **self._travel_info(record.id),
            },
            event="submitted",
        )
        return get_job(self.store, record.id)

    def _travel_info(self, job_id: str) -> dict[str, Any]:
        travel = self._travel.pop(job_id, None)
        if travel is None:
            return {}
        return {"code_uri": travel.code_uri, "requirements_uri": travel.requirements_uri,
                "uploaded": travel.uploaded}  # fmt: skip

    # -- status -----------------------------------------------------------------------
    def _get(self, record: JobRecord) -> dict[str, Any] | None:
        cluster = self.cluster()
        try:
            return cluster.custom().get_namespaced_custom_object(
                mf.TRAINER_GROUP,
                mf.TRAINER_VERSION,
                record.info.get("namespace") or cluster.namespace,
                PLURAL,
                record.native_id,
            )
        except Exception as exc:  # noqa: BLE001
            err = api_error(exc, f"reading TrainJob {record.native_id}", cluster)
            if is_status(err, 404):
                return None
            raise err from None

    def pods(self, record: JobRecord) -> list[Any]:
        return self.labelled_pods(record, mf.JOB_LABEL, record.id)

    def labelled_pods(self, record: JobRecord, label: str, value: str) -> list[Any]:
        """The pods of ``record``'s namespace whose ``label`` is ``value``, by node rank
        (checked here too: not every API server applies a label selector)."""
        cluster = self.cluster()
        found = self._call(
            f"listing the pods of {record.native_id}",
            cluster.core().list_namespaced_pod,
            record.info.get("namespace") or cluster.namespace,
            label_selector=f"{label}={value}",
        )
        return sorted(
            (p for p in found.items if (p.metadata.labels or {}).get(label) == value),
            key=lambda p: (node_rank(p), p.metadata.name),
        )

    def pod_problems(self, record: JobRecord, pods: list[Any]) -> list[dict[str, Any]]:
        """What keeps the node pods from running now, as ``{pod, node, reason, message}``;
        an OOM kill the container has recovered from (running again) is ``past: True``."""
        problems = []
        for pod in pods:
            node = node_rank(pod)
            status = pod.status
            for cond in status.conditions or []:
                if cond.type == "PodScheduled" and cond.status == "False":
                    problems.append(
                        {
                            "pod": pod.metadata.name,
                            "node": node,
                            "reason": cond.reason or "Unschedulable",
                            "message": cond.message or "",
                        }
                    )
            for cs in status.container_statuses or []:
                waiting = cs.state.waiting if cs.state else None
                if waiting and waiting.reason in BAD_WAITING:
                    problems.append(
                        {
                            "pod": pod.metadata.name,
                            "node": node,
                            "reason": waiting.reason,
                            "message": _key_secret_said(
                                waiting.message or BAD_WAITING[waiting.reason],
                                record,
                                record.info.get("namespace") or "",
                            ),
                        }
                    )
                for term in (
                    cs.state.terminated if cs.state else None,
                    cs.last_state.terminated if cs.last_state else None,
                ):
                    if term and term.reason == "OOMKilled":
                        problems.append(
                            {
                                "pod": pod.metadata.name,
                                "node": node,
                                "reason": "OOMKilled",
                                "message": "the container ran out of memory (raise memory in the "
                                "backend's table)",
                                "past": bool(cs.state and cs.state.running),
                            }
                        )
                        break
        return problems

    def warning_events(self, record: JobRecord, pods: list[Any]) -> list[dict[str, Any]]:
        """Warning events of the job's own objects: the TrainJob and its JobSet (one name),
        the JobSet's Job of the node pods (``FailedCreate``: a quota), and every node pod
        that is not running cleanly (FailedScheduling, FailedMount, BackOff...). One list
        per object, by field selector: never every Warning of the namespace."""
        cluster = self.cluster()
        namespace = record.info.get("namespace") or cluster.namespace
        name = record.native_id
        objects: list[tuple[str, int | None]] = [(name, None), (f"{name}-{mf.NODE}-0", None)]
        objects += [(p.metadata.name, node_rank(p)) for p in pods if _unsettled(p)]
        out = []
        for obj_name, node in objects:
            found = self._call(
                f"listing the events of {obj_name}",
                cluster.core().list_namespaced_event,
                namespace,
                field_selector=f"involvedObject.name={obj_name},type=Warning",
            )
            for ev in found.items:
                obj = ev.involved_object
                if ev.type != "Warning" or obj is None or obj.name != obj_name:
                    continue
                item: dict[str, Any] = {
                    "reason": ev.reason,
                    "message": _key_secret_said(ev.message or "", record, namespace),
                }
                if node is None:
                    item["object"] = f"{obj.kind}/{obj_name}"
                else:
                    item.update(pod=obj_name, node=node)
                out.append(item)
        return out

    def failed_nodes(self, pods: list[Any]) -> list[dict[str, Any]]:
        """The node containers that exited non-zero (now, or before a restart), first
        failure first; a pod the cluster took away (``DisruptionTarget``) or is deleting
        (a deadline, the JobSet ending) is not one: the TrainJob's conditions say why."""
        out = []
        for pod in pods:
            conds = pod.status.conditions or []
            if pod.metadata.deletion_timestamp or any(
                c.type == "DisruptionTarget" and c.status == "True" for c in conds
            ):
                continue
            for cs in pod.status.container_statuses or []:
                if cs.name != mf.NODE:
                    continue
                for term in (
                    cs.state.terminated if cs.state else None,
                    cs.last_state.terminated if cs.last_state else None,
                ):
                    if term is not None and term.exit_code:
                        out.append(
                            {
                                "pod": pod.metadata.name,
                                "node": node_rank(pod),
                                "exit_code": term.exit_code,
                                "reason": term.reason or "Error",
                                "finished": str(term.finished_at or ""),
                                "restarts": cs.restart_count or 0,
                            }
                        )
                        break
        return sorted(out, key=lambda f: (f["finished"], f["node"]))

    def status(self, record: JobRecord) -> JobRecord:
        """The record refreshed from the cluster; when the cluster cannot be reached, the
        stored record with that said in its phase (nothing written: it may come back)."""
        if record.status not in ACTIVE or not record.native_id:
            return record
        try:
            return self._status(record)
        except BackendUnavailable as exc:
            return dataclasses.replace(record, info={**record.info, "phase": f"unreachable: {exc}"})

    def _status(self, record: JobRecord) -> JobRecord:
        now = time.monotonic()
        if now - self._looked.get(record.id, float("-inf")) < min(self.settings.poll_seconds, 1.0):
            return record
        self._looked[record.id] = now
        obj = self._get(record)
        if obj is None:
            update_job(
                self.store,
                record.id,
                status=FAILED,
                ended=time.time(),
                error=f"TrainJob {record.native_id} was deleted outside nbscale",
            )
            return get_job(self.store, record.id)
        st = obj.get("status") or {}
        conds = {c.get("type"): c for c in st.get("conditions") or []}
        done = conds.get("Complete", {}).get("status") == "True"
        failed = conds.get("Failed", {}).get("status") == "True"
        if done or failed:
            return self._finish(record, obj, SUCCEEDED if done else FAILED, conds)
        pods = self.pods(record)
        # an attached TrainJob that nbscale did not create is only watched: its own runtime's
        # restart policy decides what a failed node means, and nbscale never deletes it
        failed = [] if record.info.get("foreign") else self.failed_nodes(pods)
        if failed:
            return self._fail_fast(record, obj, failed[0])
        found = self.pod_problems(record, pods)
        warnings = self.warning_events(record, pods)  # also past ones: reported, not blocking
        # the TrainJob's own conditions that say it cannot go on (Created False: JobsBuildFailed)
        stuck = [
            {"object": f"TrainJob/{record.native_id}", "reason": c.get("reason") or t,
             "message": c.get("message") or ""}
            for t, c in conds.items()
            if t not in ("Complete", "Failed", "Suspended") and c.get("status") == "False"
            and "Fail" in (c.get("reason") or "")
        ]  # fmt: skip
        problems = [p for p in found if not p.get("past")]
        seen = set(record.info.get("reported") or [])
        for p in found + warnings + stuck:
            key = f"{p.get('pod') or p['object']}/{p['reason']}"
            if key not in seen:
                seen.add(key)
                kind = "pod" if "pod" in p else "trainjob"
                add_event(self.store, record.id, kind, {k: v for k, v in p.items() if k != "past"})
        jobs = st.get("jobsStatus") or []
        ready = sum(j.get("ready", 0) for j in jobs)
        running = any(p.status.phase == "Running" for p in pods) or ready > 0
        own = stuck + [w for w in warnings if "object" in w]  # the TrainJob's, JobSet's, Job's
        pod_warnings = [w for w in warnings if "pod" in w]
        if conds.get("Suspended", {}).get("status") == "True":
            phase = "suspended"
        elif problems:
            p = problems[0]
            phase = f"pending: node {p['node']} {p['reason']}: {p['message']}"[:300]
        elif running:
            phase = "running"
        elif pod_warnings:
            w = pod_warnings[-1]
            phase = f"pending: node {w['node']} {w['reason']}: {w['message']}"[:300]
        elif own and not pods:
            w = own[-1]
            phase = f"pending: {w['object']} {w['reason']}: {w['message']}"[:300]
        elif pods:
            phase = "pods starting"
        else:
            phase = "queued"
        fields: dict[str, Any] = {
            "info_patch": {
                "phase": phase,
                "reported": sorted(seen),
                "jobs_status": jobs,
                "pods": {p.metadata.name: p.status.phase for p in pods},
            }
        }
        if running and not problems and record.status != RUNNING:
            fields["status"] = RUNNING
            fields["started"] = time.time()
        update_job(self.store, record.id, **fields)
        return get_job(self.store, record.id)

    def _fail_fast(
        self, record: JobRecord, obj: dict[str, Any], first: dict[str, Any]
    ) -> JobRecord:
        """A node container exited non-zero: the job has failed (torchrun inside it has
        spent ``--max-restarts``). Its logs are copied now (the first run's too, by
        ``previous=True``), then the TrainJob is deleted so the runtime's restart policy and
        backoff limit do not run the cell again and overwrite its outputs."""
        add_event(self.store, record.id, "node-failed", first)
        cause = f"node {first['node']} exited with code {first['exit_code']} ({first['reason']})"
        if first["reason"] == "OOMKilled":
            cause += ": the container ran out of memory (raise memory in the backend's table)"
        with contextlib.suppress(NbscaleError):
            self.mirror_logs(record, final=True)
        conds = {c.get("type"): c for c in (obj.get("status") or {}).get("conditions") or []}
        if conds.get("Failed", {}).get("status") != "True":
            self._delete_trainjob(record.native_id, record.info.get("namespace"))
            cause += "; nbscale deleted the TrainJob so the cluster does not run it again"
        failed = {"Failed": {"reason": "NodeFailed", "message": cause}}
        return self._finish(record, obj, FAILED, failed)

    def _finish(self, record, obj, status, conds) -> JobRecord:
        from ..remote.staging import collect

        cond = conds.get("Failed" if status == FAILED else "Complete", {})
        error = (
            f"{cond.get('reason', 'Failed')}: {cond.get('message', '')}".rstrip(": ")
            if status == FAILED
            else None
        )
        fields: dict[str, Any] = {"ended": time.time(), "info_patch": {"phase": "ended"}}
        if record.started is None:
            fields["started"] = record.created
        # the pods may be gone already; the outputs say what happened
        with contextlib.suppress(NbscaleError):
            self.mirror_logs(record, final=True)
        self.end(
            record,
            status,
            error,
            fields,
            lambda: collect(
                record.id,
                self.object_store(),
                record.info["outputs_uri"],
                int(record.spec.get("nodes") or 1),
            ),
        )
        return get_job(self.store, record.id)

    # -- logs, cancel -------------------------------------------------------------------
    def fetch_logs(self, record: JobRecord, jobdir: JobDir) -> None:
        """New lines of every node pod's log (``podlogs``), from where the last copy ended."""
        cluster = self.cluster()
        jobdir.make()
        with log_copy_lock(jobdir):  # one copier at a time: positions and logs move together
            self._fetch_logs(cluster, record, jobdir)

    def _fetch_logs(self, cluster, record: JobRecord, jobdir: JobDir) -> None:
        state_file = jobdir.path / "kube-logs.json"
        state = LogState.load(state_file)
        nproc = int(record.spec.get("procs_per_node") or 1)
        namespace = record.info.get("namespace") or cluster.namespace
        for pod in self.pods(record):
            name = pod.metadata.name
            cursor = state.pods.setdefault(name, PodCursor())
            if cursor.done or pod.status.phase == "Pending":
                continue
            node = node_rank(pod)
            node_status = next(
                (cs for cs in pod.status.container_statuses or [] if cs.name == mf.NODE), None
            )
            restarts = (node_status.restart_count or 0) if node_status else 0
            waiting = bool(node_status and node_status.state and node_status.state.waiting)
            reads = []
            if restarts > cursor.restarts:  # the container ran again: the last run's end first
                reads.append(True)
            if not waiting:  # a container waiting to restart has no current log
                reads.append(False)
            writer = RankWriter(jobdir, node, node * nproc)
            try:
                for previous in reads:
                    self._copy_log(cluster, name, namespace, cursor, writer, previous)
            finally:
                writer.close()
            cursor.restarts = max(cursor.restarts, restarts)
            if pod.status.phase in ("Succeeded", "Failed"):
                cursor.done = True
        state.save(state_file)

    def _copy_log(self, cluster, name, namespace, cursor, writer, previous: bool) -> None:
        """Copy one container run's new lines; ``previous``: the run before the restart
        (the kubelet keeps one), whose end has the traceback of the first failure."""
        kw: dict[str, Any] = {"previous": True} if previous else {}
        try:
            resp = self._call(
                f"reading the {'previous ' if previous else ''}log of pod {name}",
                cluster.core().read_namespaced_pod_log,
                name,
                namespace,
                container=mf.NODE,
                timestamps=True,
                since_seconds=since_seconds(cursor.last_ts),
                _preload_content=False,
                **kw,
            )
        except NbscaleError as exc:
            if previous and is_status(exc, 400):  # no terminated run kept (yet)
                return
            raise
        try:
            copy_pod_log(resp, cursor, writer)
        finally:
            resp.release_conn()

    def _delete_trainjob(self, name: str, namespace: str | None = None) -> None:
        cluster = self.cluster()
        try:
            cluster.custom().delete_namespaced_custom_object(
                mf.TRAINER_GROUP,
                mf.TRAINER_VERSION,
                namespace or cluster.namespace,
                PLURAL,
                name,
                propagation_policy="Foreground",
            )
        except Exception as exc:  # noqa: BLE001
            err = api_error(exc, f"deleting TrainJob {name}", cluster)
            if not is_status(err, 404):
                raise err from None

    def cancel(self, record: JobRecord) -> JobRecord:
        if record.status not in ACTIVE:
            return record
        add_event(self.store, record.id, "cancel-requested")
        if record.native_id:
            namespace = record.info.get("namespace")
            with contextlib.suppress(NbscaleError):
                self.mirror_logs(record, final=True)
            self._delete_trainjob(record.native_id, namespace)
            if record.info.get("configmap"):
                cluster = self.cluster()
                try:
                    cluster.core().delete_namespaced_config_map(
                        record.info["configmap"], namespace or cluster.namespace
                    )
                except Exception as exc:  # noqa: BLE001
                    err = api_error(exc, f"deleting ConfigMap {record.info['configmap']}", cluster)
                    if not is_status(err, 404):
                        raise err from None
        update_job(
            self.store,
            record.id,
            status=CANCELLED,
            ended=time.time(),
            info_patch={"phase": "ended"},
            event="cancelled",
        )
        return get_job(self.store, record.id)


def user_key_secret_name(
    settings: KubeflowSettings, cluster: Callable[[], Cluster], connected: bool = True
) -> str:
    """The Secret holding this user's keys (``mf.key_secret_name``: jobs, endpoints and
    pipeline steps mount their own user's); ``connected`` False: a dry run without a kube
    config names the user as ``key_user`` finds it."""
    from .cluster import key_user

    try:
        user = cluster().user
    except NbscaleError:
        if connected:
            raise
        user = key_user(None)
    return mf.key_secret_name(settings.key_secret, user)


def ensure_key_secret(
    cluster: Cluster,
    conf: KubeflowSettings,
    namespace: str | None = None,
    user: str | None = None,
) -> str:
    """Create or update the Secret the pods read the signing keys from (only its name
    travels in a manifest), in ``namespace`` (default: the cluster's), which must be the
    namespace of the pods that mount it. ``user``: that user's own Secret
    (``mf.key_secret_name``), else the settings' ``key_secret``. Returns its name."""
    from ... import keys

    core = cluster.core()
    namespace = namespace or cluster.namespace
    name = mf.key_secret_name(conf.key_secret, user) if user else conf.key_secret
    body = mf.key_secret(name, keys.export(*KEY_PURPOSES), namespace, user)
    where = f"Secret {name} in namespace {namespace}"
    hint = (
        f"the pods of this job run in namespace {namespace} and mount the key Secret from "
        "there: the context's user needs get, create and patch on Secrets in it "
        "(docs/security.md, Kubeflow)"
    )
    try:
        current = core.read_namespaced_secret(name, namespace)
    except Exception as exc:  # noqa: BLE001
        err = api_error(exc, f"reading {where}", cluster)
        if not is_status(err, 404):
            raise _with_hint(err, hint) from None
        try:
            core.create_namespaced_secret(namespace, body)
        except Exception as exc2:  # noqa: BLE001
            raise _with_hint(api_error(exc2, f"creating {where}", cluster), hint) from None
        return name
    if (current.data or {}).get("keys.json") != body["data"]["keys.json"] or (
        user and (current.metadata.annotations or {}).get(mf.USER_ANNOTATION) != user
    ):
        patch: dict[str, Any] = {"data": body["data"]}
        if user:
            patch["metadata"] = {"annotations": {mf.USER_ANNOTATION: user}}
        try:
            core.patch_namespaced_secret(name, namespace, patch)
        except Exception as exc:  # noqa: BLE001
            raise _with_hint(api_error(exc, f"updating {where}", cluster), hint) from None
    return name


def _with_hint(err: NbscaleError, hint: str) -> NbscaleError:
    """``err`` with ``hint`` where the API server's status had none of its own to say."""
    if getattr(err, "status", None) in (403, 404):  # refused, or no such namespace
        err.hint = f"{err.hint}; {hint}" if err.hint else hint
    return err


def _key_secret_said(message: str, record: JobRecord, namespace: str) -> str:
    """A pod's message about the key Secret (FailedMount: not found) with where it must be."""
    name = record.info.get("key_secret")
    if name and f'"{name}"' in message:
        return (
            f"{message} (the key Secret {name} must be in namespace {namespace}, where the "
            "pods run: nbscale writes it there at submit; was it deleted?)"
        )
    return message


def _unsettled(pod: Any) -> bool:
    """A pod whose events may say what is wrong: not yet running, failed, or restarted."""
    if pod.status.phase not in ("Running", "Succeeded"):
        return True
    return any((cs.restart_count or 0) > 0 for cs in pod.status.container_statuses or [])


def node_rank(pod: Any) -> int:
    """The node rank of a pod: its indexed Job's completion index."""
    meta = pod.metadata
    for source in (meta.labels or {}, meta.annotations or {}):
        value = source.get("batch.kubernetes.io/job-completion-index")
        if value is not None and str(value).isdigit():
            return int(value)
    return 0
