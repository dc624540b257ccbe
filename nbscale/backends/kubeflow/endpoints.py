"""KServe endpoints: ``%deploy`` / ``nbscale deploy --backend KF`` as an InferenceService.

deploy: the packaged artifact goes to object storage under the hash of its files
(unchanged: nothing is sent), the signing keys to their Secret, a fresh bearer
token to a Secret of the endpoint (and to ``$NBSCALE_HOME/endpoints/NAME/token``,
0600, for this machine's calls), then the InferenceService (``manifests``): the
predictor runs the nbscale serving runtime (the ``nbscale`` ClusterServingRuntime in
``deploy/kserve/``, or ``serving_image``). A new version of a deployed endpoint with
``canary_traffic_percent`` rolls out beside the old one; ``promote`` sends it all the
traffic, ``rollback`` returns all of it to the previous version.

The storage initializer reads the artifact with ``storage_secret``'s keys: nbscale
creates or updates a ServiceAccount (``service_account``, else ``nbscale-serving``)
carrying KServe's S3 annotations (``serving.kserve.io/s3-endpoint``, ``s3-usehttps``,
``s3-region``) with that Secret attached, and names it in the predictor. The
``deployment_mode`` setting is KServe's ``serving.kserve.io/deploymentMode``:
Knative (``Serverless``: scale to zero, canary rollouts, concurrency autoscaling) or
``Standard`` (``RawDeployment``: a Deployment and an HPA on cpu or memory, at least one
replica, no canary); what a mode cannot do is refused before anything is sent.

status: the InferenceService's conditions and URL; a predictor pod that crash-loops
or cannot pull its image makes the endpoint FAILED with the pod's reason, never
READY. predict/metadata: V2 at the service URL: from inside the cluster (a notebook
pod) the cluster-local ``status.address.url``; from outside ``status.url`` through the
ingress gateway, with the Kubeflow session cookie when one is given
(``NBSCALE_KFP_COOKIE`` or the ``cookie`` of ``kfp_secret``: the same Dex/auth-proxy
session guards KFP and KServe). metrics: every ready predictor pod's
Prometheus ``/metrics`` (the runtime's token-free metrics port, ``manifests.METRICS_PORT``),
read through the API server's pod proxy (``/api/v1/namespaces/NS/pods/POD:PORT/proxy/metrics``:
the way in that a client outside the cluster has, with the kube context's credentials and
RBAC ``get pods/proxy``), summed over the pods under SageMaker's metric names
(``nbscale.scrapes``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import secrets
import time
from pathlib import Path
from typing import Any

from ... import storage
from ...errors import BackendUnavailable, Conflict, NbscaleError, NotFound, SpecError
from ...keys import endpoint_token as token_for
from ...paths import endpoint_dir
from ...store.endpoints import (
    FAILED,
    READY,
    SCALED_TO_ZERO,
    STARTING,
    EndpointRecord,
    delete_endpoint,
    get_endpoint,
    insert_endpoint,
    list_endpoints,
    update_endpoint,
)
from ...words import count
from ..base import DryRun
from ..endpoint_base import DeployRequest, EndpointBackend, V2Client, V2Clients
from . import manifests as mf
from .cluster import Cluster, api_error, connect, is_status
from .jobs import BAD_WAITING, ensure_key_secret, user_key_secret_name
from .settings import KubeflowSettings, settings

PLURAL = "inferenceservices"
SCALE_METRICS = ("concurrency", "rps", "cpu", "memory")
KNATIVE_MODES = ("Serverless", "Knative")
STANDARD_METRICS = ("cpu", "memory")  # the HPA's; concurrency and rps are Knative's
SERVING_ACCOUNT = "nbscale-serving"
S3_ANNOTATIONS = "serving.kserve.io/s3-"
MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
DEPLOY_TIMEOUT = 600.0
ISVC_LABEL = "serving.kserve.io/inferenceservice"


def model_digest(model_dir: Path) -> str:
    """One hash of every file of an artifact (names and contents)."""
    h = hashlib.sha256()
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(model_dir).as_posix()
        h.update(f"{rel}\0{storage.sha256_file(path)}\n".encode())
    return h.hexdigest()


def upload_model(store: storage.ObjectStore, model_dir: Path, upload: bool = True) -> str:
    """The artifact's folder in object storage (its storageUri); files already there stay."""
    base = store.base.child("models", "tree", model_digest(model_dir))
    if upload:
        for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
            uri = base.child(*path.relative_to(model_dir).parts).uri
            if not store.exists(uri):
                store.put_at(path, uri)
    return base.uri


def serving_options(request: DeployRequest) -> mf.ServingOptions:
    o = request.options
    return mf.ServingOptions(
        min_replicas=request.min_replicas,
        max_replicas=request.max_replicas,
        scale_metric=o.get("scale_metric"),
        scale_target=o.get("scale_target"),
        container_concurrency=o.get("container_concurrency"),
        timeout_s=o.get("timeout_s"),
        cpu=o.get("cpu"),
        memory=o.get("memory"),
        gpus=int(o.get("gpus") or 0),
        canary_traffic_percent=o.get("canary_traffic_percent"),
    )


class KServeEndpoints(EndpointBackend):
    type = "kubeflow"
    options = frozenset(
        {
            "canary_traffic_percent",
            "scale_metric",
            "scale_target",
            "container_concurrency",
            "timeout_s",
            "cpu",
            "memory",
            "gpus",
        }
    )

    def __init__(self, config, store):
        super().__init__(config, store)
        self.settings: KubeflowSettings = settings(config)
        self._cluster: Cluster | None = None
        self._clients = V2Clients(self._client)

    # -- plumbing ---------------------------------------------------------------------
    def cluster(self) -> Cluster:
        if self._cluster is None:
            self._cluster = connect(self.settings)
        return self._cluster

    def _call(self, what: str, fn, *args, **kw):
        return self.cluster().call(what, fn, *args, **kw)

    def _client(self, rec: EndpointRecord) -> V2Client:
        if not rec.url:
            raise BackendUnavailable(
                f"endpoint {rec.name!r} has no URL yet ({rec.status})",
                f"wait until it is ready: nbscale endpoints; kubectl get isvc {rec.name}",
            )
        bearer, cookie = (None, None) if in_cluster() else self._gateway_credentials()

        def headers() -> dict[str, str]:
            ours = token_for(rec.name)
            if bearer:  # the gateway takes Authorization; the endpoint's token goes beside it
                out = {"Authorization": f"Bearer {bearer}", "X-Nbscale-Token": ours}
            else:
                out = {"Authorization": f"Bearer {ours}"}
            if cookie:  # the ingress gateway's session (never logged)
                out["Cookie"] = cookie
            return out

        return V2Client(
            rec.name,
            rec.url,
            headers=headers,
            unreachable=f"check it with: kubectl -n {rec.config.get('namespace')} get isvc {rec.name}",
        )

    def _gateway_credentials(self) -> tuple[str | None, str | None]:
        """(bearer token, session cookie) for the ingress gateway (Dex / an auth proxy), as
        for KFP behind it: ``NBSCALE_KFP_TOKEN`` / ``NBSCALE_KFP_COOKIE``, else the
        ``token`` / ``cookie`` of ``kfp_secret``; (None, None) where none is given."""
        from .kfp_access import COOKIE_ENV, TOKEN_ENV, secret_values

        token, cookie = os.environ.get(TOKEN_ENV), os.environ.get(COOKIE_ENV)
        if not (token or cookie) and self.settings.kfp_secret:
            found = secret_values(self.settings)
            token, cookie = found.get("token"), found.get("cookie")
        return token or None, cookie or None

    @staticmethod
    def url_of(status: dict[str, Any]) -> str:
        """Inside the cluster the cluster-local address (no gateway, no Dex); outside the
        external URL."""
        external = status.get("url") or ""
        local = (status.get("address") or {}).get("url") or ""
        if in_cluster():
            return local or external
        return external or local

    def _get(self, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        cluster = self.cluster()
        try:
            return cluster.custom().get_namespaced_custom_object(
                mf.KSERVE_GROUP, mf.KSERVE_VERSION, namespace or cluster.namespace, PLURAL, name
            )
        except Exception as exc:  # noqa: BLE001
            err = api_error(exc, f"reading InferenceService {name}", cluster)
            if is_status(err, 404):
                return None
            raise err from None

    def check(self) -> dict[str, Any]:
        try:
            cluster = self.cluster()
        except NbscaleError as exc:
            return {"reachable": False, "detail": str(exc)}
        return cluster.probe(mf.KSERVE_GROUP, mf.KSERVE_VERSION, PLURAL, "KServe")

    # -- deploy -----------------------------------------------------------------------
    def validate(self, request: DeployRequest) -> None:
        super().validate(request)
        o = request.options
        for key in ("capture_rate", "idle_ttl_s"):
            if request.config.get(key) is not None:
                raise SpecError(
                    key.replace("_s", "").replace("_", "-"),
                    "KServe endpoints do not capture requests or idle out this way yet",
                    "drop it, or deploy locally",
                )
        if request.port is not None:
            raise SpecError(
                "port", "a KServe endpoint gets its URL from the cluster", "drop --port"
            )
        if request.min_replicas > request.max_replicas:
            raise SpecError(
                "replicas",
                f"min {request.min_replicas} > max {request.max_replicas}: KServe refuses it",
                "e.g. --replicas 0:2",
            )
        metric = o.get("scale_metric")
        if metric is not None and metric not in SCALE_METRICS:
            raise SpecError("scale-metric", f"{metric!r} is not one of {', '.join(SCALE_METRICS)}")
        for key in ("scale_target", "timeout_s"):
            value = o.get(key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise SpecError(
                    key.replace("_", "-"), f"must be a whole number >= 1, got {value!r}"
                )
        if o.get("scale_target") is not None and metric is None:
            raise SpecError("scale-target", "needs --scale-metric (concurrency or rps)")
        cc = o.get("container_concurrency")
        if cc is not None and (not isinstance(cc, int) or cc < 0):
            raise SpecError("container-concurrency", f"must be >= 0 (0: unlimited), got {cc!r}")
        gpus = o.get("gpus")
        if gpus is not None and (not isinstance(gpus, int) or gpus < 0):
            raise SpecError("gpus", f"must be a whole number >= 0, got {gpus!r}")
        canary = o.get("canary_traffic_percent")
        self._check_mode(request.min_replicas, o)
        if canary is not None:
            if not isinstance(canary, int) or not 1 <= canary <= 99:
                raise SpecError("canary", f"must be a percentage from 1 to 99, got {canary!r}")
            if not self._exists(request.name):
                raise SpecError(
                    "canary",
                    f"endpoint {request.name!r} has no previous version to keep beside the canary",
                    "deploy it once without --canary",
                )

    @property
    def knative(self) -> bool:
        return self.settings.deployment_mode in KNATIVE_MODES

    def _check_mode(self, min_replicas: int, options: dict[str, Any]) -> None:
        """What KServe's Standard (raw Deployment) mode cannot do, refused in one message."""
        if self.knative:
            return
        mode = self.settings.deployment_mode
        where = f'deployment_mode = "{mode}" in [backends.{self.settings.name}]'
        knative = 'or deployment_mode = "Serverless" (Knative)'
        if min_replicas == 0:
            raise SpecError(
                "replicas",
                f"scale to zero needs KServe's Knative mode; {where} runs a Deployment of at "
                "least one replica",
                f"e.g. --replicas 1:N, {knative}",
            )
        if options.get("canary_traffic_percent") is not None:
            raise SpecError(
                "canary",
                f"canary rollouts need KServe's Knative mode (revisions); {where} has none",
                f"deploy the new version without --canary, {knative}",
            )
        metric = options.get("scale_metric")
        if metric is not None and metric not in STANDARD_METRICS:
            raise SpecError(
                "scale-metric",
                f"{metric!r} scaling is Knative's; {where} scales with an HPA on "
                f"{' or '.join(STANDARD_METRICS)}",
                f"--scale-metric cpu, {knative}",
            )
        for key, flag in (
            ("container_concurrency", "container-concurrency"),
            ("timeout_s", "timeout"),
        ):
            if options.get(key) is not None:
                raise SpecError(
                    flag,
                    f"is a Knative revision setting; {where} has no revisions",
                    f"drop --{flag}, {knative}",
                )

    def _exists(self, name: str) -> bool:
        try:
            rec = get_endpoint(self.store, name)
        except NotFound:
            return False
        return rec.backend == self.backend

    def manifest(self, request: DeployRequest, upload: bool) -> dict[str, Any]:
        self.settings.require_storage("a KServe endpoint (its storageUri)")
        store = storage.ObjectStore.from_options(self.settings.storage_options())
        uri = upload_model(store, Path(request.model_dir), upload=upload)
        try:
            namespace = self.cluster().namespace
        except NbscaleError:
            if upload:
                raise
            namespace = self.settings.namespace or "default"
        body = mf.inference_service(
            request.name,
            uri,
            self.settings,
            serving_options(request),
            namespace,
            request.config,
            key_secret=user_key_secret_name(self.settings, self.cluster, connected=upload),
        )
        body["metadata"]["annotations"][MODE_ANNOTATION] = self.settings.deployment_mode
        account = self.storage_account(namespace)
        if account is not None:
            body["spec"]["predictor"]["serviceAccountName"] = account["metadata"]["name"]
        return body

    def storage_account(self, namespace: str) -> dict[str, Any] | None:
        """The ServiceAccount the storage initializer reads ``storage_secret`` through, with
        KServe's S3 annotations (endpoint as the pods see it); None without a
        ``storage_secret``."""
        import urllib.parse

        s = self.settings
        if not s.storage_secret:
            return None
        annotations: dict[str, str] = {}
        endpoint = s.pod_endpoint_url or s.endpoint_url
        if endpoint:
            url = urllib.parse.urlsplit(endpoint)
            annotations[S3_ANNOTATIONS + "endpoint"] = url.netloc
            annotations[S3_ANNOTATIONS + "usehttps"] = "1" if url.scheme == "https" else "0"
        if s.region:
            annotations[S3_ANNOTATIONS + "region"] = s.region
        return {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {
                "name": s.service_account or SERVING_ACCOUNT,
                "namespace": namespace,
                "labels": dict(mf.MANAGED),
                "annotations": annotations,
            },
            "secrets": [{"name": s.storage_secret}],
        }

    def ensure_storage_account(self, body: dict[str, Any]) -> None:
        """Create the ServiceAccount, or update its S3 annotations and attach the Secret
        (its other annotations and Secrets stay)."""
        cluster = self.cluster()
        name, ns = body["metadata"]["name"], body["metadata"]["namespace"]
        core = cluster.core()
        try:
            current = core.read_namespaced_service_account(name, ns)
        except Exception as exc:  # noqa: BLE001
            err = api_error(exc, f"reading ServiceAccount {name}", cluster)
            if not is_status(err, 404):
                raise err from None
            self._call(
                f"creating ServiceAccount {name}", core.create_namespaced_service_account, ns, body
            )
            return
        have = [{"name": ref.name} for ref in current.secrets or []]
        wanted = body["secrets"][0]
        old = {
            k: v
            for k, v in (current.metadata.annotations or {}).items()
            if k.startswith(S3_ANNOTATIONS)
        }
        stale = {k: None for k in old if k not in body["metadata"]["annotations"]}
        patch = {
            "metadata": {"annotations": {**stale, **body["metadata"]["annotations"]}},
            "secrets": have if wanted in have else [*have, wanted],
        }
        self._call(
            f"updating ServiceAccount {name}",
            core.patch_namespaced_service_account,
            name,
            ns,
            patch,
        )

    def render(self, request: DeployRequest) -> DryRun:
        self.validate(request)
        body = self.manifest(request, upload=False)
        ns = body["metadata"]["namespace"]
        notes = [
            mf.secret_note(
                mf.key_secret(user_key_secret_name(self.settings, self.cluster, False), "{}", ns),
                "the signing keys",
            ),
            mf.secret_note(mf.token_secret(request.name, "", ns), "the endpoint's bearer token"),
        ]
        account = self.storage_account(ns)
        if account is not None:
            notes.append(
                f"ServiceAccount {account['metadata']['name']} would be created or updated "
                f"(S3 annotations, Secret {self.settings.storage_secret} attached)"
            )
            return DryRun([account, body], "yaml", notes)
        return DryRun([body], "yaml", notes)

    def _token(self, name: str) -> str:
        edir = endpoint_dir(name)
        edir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = edir / "token"
        path.unlink(missing_ok=True)
        token = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token)
        return token

    def deploy(self, request: DeployRequest) -> EndpointRecord:
        self.validate(request)
        if request.options.get("canary_traffic_percent") is not None:
            return self._deploy_canary(request)
        cluster = self.cluster()
        body = self.manifest(request, upload=True)
        now = time.time()
        rec = EndpointRecord(
            name=request.name,
            backend=self.backend,
            backend_type=self.type,
            status=STARTING,
            url="",
            port=0,
            model_dir=str(request.model_dir),
            min_replicas=request.min_replicas,
            max_replicas=request.max_replicas,
            config={
                **request.config,
                "options": request.options,
                "namespace": cluster.namespace,
                "versions": [body["spec"]["predictor"]["model"]["storageUri"]],
            },
            created=now,
            updated=now,
        )
        insert_endpoint(self.store, rec)
        try:
            ensure_key_secret(cluster, self.settings, user=cluster.user)  # the user's own
            account = self.storage_account(cluster.namespace)
            if account is not None:
                self.ensure_storage_account(account)
            token = self._token(request.name)
            core = cluster.core()
            tsec = mf.token_secret(request.name, token, cluster.namespace)
            self._delete_secret(tsec["metadata"]["name"])
            self._call(
                "creating the token Secret", core.create_namespaced_secret, cluster.namespace, tsec
            )
            self._call(
                f"creating InferenceService {request.name}",
                cluster.custom().create_namespaced_custom_object,
                mf.KSERVE_GROUP,
                mf.KSERVE_VERSION,
                cluster.namespace,
                PLURAL,
                body,
            )
            return self.wait(request.name)
        except BaseException:
            # remove what was made; if the cluster is gone too, at least the record goes
            try:
                self.undeploy(request.name)
            except NbscaleError:
                with contextlib.suppress(NotFound):
                    delete_endpoint(self.store, request.name)
                (endpoint_dir(request.name) / "token").unlink(missing_ok=True)
            raise

    def _deploy_canary(self, request: DeployRequest) -> EndpointRecord:
        rec = get_endpoint(self.store, request.name)
        body = self.manifest(request, upload=True)
        model = body["spec"]["predictor"]["model"]
        patch = {
            "spec": {
                "predictor": {
                    "canaryTrafficPercent": request.options["canary_traffic_percent"],
                    "model": {"storageUri": model["storageUri"]},
                }
            }
        }
        self._patch(rec, patch, "rolling out a canary")
        versions = [*rec.config.get("versions", []), model["storageUri"]]
        update_endpoint(
            self.store,
            rec.name,
            "canary",
            status=STARTING,
            model_dir=str(request.model_dir),
            config={
                **rec.config,
                "versions": versions,
                "canary": request.options["canary_traffic_percent"],
            },
        )
        return self.wait(rec.name)

    def _patch(self, rec: EndpointRecord, patch: dict[str, Any], what: str) -> None:
        cluster = self.cluster()
        self._call(
            f"{what} of InferenceService {rec.name}",
            cluster.custom().patch_namespaced_custom_object,
            mf.KSERVE_GROUP,
            mf.KSERVE_VERSION,
            rec.config.get("namespace") or cluster.namespace,
            PLURAL,
            rec.name,
            patch,
        )

    def promote(self, record: EndpointRecord) -> EndpointRecord:
        """The canary takes all the traffic."""
        if record.config.get("canary") is None:
            raise Conflict(f"endpoint {record.name!r} has no canary to promote")
        # KServe: without canaryTrafficPercent the latest revision takes all the traffic; a
        # value left behind would split every later revision's rollout
        self._patch(
            record, {"spec": {"predictor": {"canaryTrafficPercent": None}}}, "promoting the canary"
        )
        update_endpoint(
            self.store, record.name, "promoted", config={**record.config, "canary": None}
        )
        return get_endpoint(self.store, record.name)

    def rollback(self, record: EndpointRecord) -> EndpointRecord:
        """All the traffic back to the previous version; the canary's artifact is dropped."""
        versions = record.config.get("versions", [])
        if record.config.get("canary") is None or len(versions) < 2:
            raise Conflict(f"endpoint {record.name!r} has no canary to roll back")
        self._patch(
            record,
            {
                # the previous artifact rolled out in full: the field removed, never left at 0
                # (which would give every later update's revision no traffic)
                "spec": {
                    "predictor": {
                        "canaryTrafficPercent": None,
                        "model": {"storageUri": versions[-2]},
                    }
                }
            },
            "rolling back the canary",
        )
        update_endpoint(
            self.store,
            record.name,
            "rolled_back",
            config={**record.config, "canary": None, "versions": versions[:-1]},
        )
        return get_endpoint(self.store, record.name)

    def wait(self, name: str, timeout: float | None = None) -> EndpointRecord:
        """Poll the InferenceService until it serves (READY or SCALED_TO_ZERO) or fails."""
        from ..remote.lifecycle import wait_for

        def describe(rec: EndpointRecord) -> str:
            return f"kubectl -n {rec.config.get('namespace')} describe isvc {name}"

        return wait_for(
            f"endpoint {name!r}",
            lambda: self.status(get_endpoint(self.store, name)),
            lambda rec: rec.status,
            lambda rec: rec.status in (READY, SCALED_TO_ZERO),
            timeout=DEPLOY_TIMEOUT if timeout is None else timeout,
            interval=min(self.settings.poll_seconds, 1.0) or 0.2,
            hint=describe,
            failure=lambda rec: (
                BackendUnavailable(f"endpoint {name!r} failed: {rec.error}", describe(rec))
                if rec.status == FAILED
                else None
            ),
            detail=lambda rec: rec.error or "no reason given",
            progress=self.progress,
        )

    # -- status -----------------------------------------------------------------------
    def predictor_problems(self, rec: EndpointRecord) -> list[str]:
        cluster = self.cluster()
        pods = self._call(
            f"listing the predictor pods of {rec.name}",
            cluster.core().list_namespaced_pod,
            rec.config.get("namespace") or cluster.namespace,
            label_selector=f"{ISVC_LABEL}={rec.name}",
        )
        out = []
        for pod in pods.items:
            if (pod.metadata.labels or {}).get(ISVC_LABEL) != rec.name:
                continue
            for cs in pod.status.container_statuses or []:
                waiting = cs.state.waiting if cs.state else None
                if waiting and waiting.reason in BAD_WAITING:
                    last = cs.last_state.terminated if cs.last_state else None
                    why = f" (last exit: {last.reason}, code {last.exit_code})" if last else ""
                    out.append(
                        f"pod {pod.metadata.name}: {waiting.reason}: "
                        f"{waiting.message or BAD_WAITING[waiting.reason]}{why}"
                    )
        return out

    def status(self, record: EndpointRecord) -> EndpointRecord:
        """The record refreshed from the cluster; UNREACHABLE (not stored) when it cannot be
        reached, so listing every endpoint still works."""
        try:
            return self._status(record)
        except BackendUnavailable as exc:
            return dataclasses.replace(record, status="UNREACHABLE", error=str(exc))

    def _status(self, record: EndpointRecord) -> EndpointRecord:
        obj = self._get(record.name, record.config.get("namespace"))
        if obj is None:
            update_endpoint(
                self.store,
                record.name,
                "failed",
                status=FAILED,
                error="the InferenceService was deleted outside nbscale",
            )
            return get_endpoint(self.store, record.name)
        st = obj.get("status") or {}
        conds = {c.get("type"): c for c in st.get("conditions") or []}
        ready = conds.get("Ready", {})
        problems = self.predictor_problems(record)
        url = self.url_of(st)
        fields: dict[str, Any] = {"url": url}
        generation = (obj.get("metadata") or {}).get("generation")
        stale = bool(generation) and (st.get("observedGeneration") or 0) < generation
        if problems:
            fields.update(status=FAILED, error="; ".join(problems))
        elif stale:  # the controller has not looked at the latest spec yet
            fields.update(status=STARTING, error="the new version is rolling out")
        elif ready.get("status") == "True":
            replicas = sum(
                int((c or {}).get("replicas") or 0)
                for c in (st.get("components") or {}).values()
                if isinstance(c, dict)
            )
            scaled_to_zero = record.min_replicas == 0 and not replicas and "components" in st
            fields.update(status=SCALED_TO_ZERO if scaled_to_zero else READY, error=None)
            if replicas:
                fields["replicas"] = replicas
        elif ready.get("status") == "False" and ready.get("reason") in (
            "RevisionFailed",
            "ContainerMissing",
        ):
            fields.update(status=FAILED, error=f"{ready.get('reason')}: {ready.get('message', '')}")
        else:
            reason = ready.get("message") or ready.get("reason") or "waiting for the predictor"
            fields.update(status=STARTING, error=reason)
        changed = any(getattr(record, k) != v for k, v in fields.items())
        if changed:
            update_endpoint(
                self.store,
                record.name,
                "status" if fields.get("status") != record.status else None,
                **fields,
            )
            return get_endpoint(self.store, record.name)
        return record

    # -- calls --------------------------------------------------------------------------
    def metadata(self, record: EndpointRecord) -> dict[str, Any]:
        return self._clients.get(record).metadata()

    def predict(self, record: EndpointRecord, x: Any):
        return self._clients.get(record).predict(x)

    def metrics(self, record: EndpointRecord) -> dict[str, Any]:
        """SageMaker-named metrics summed over the ready predictor pods, since the last look
        (``sagemaker_series``: one row per look), plus totals since the pods started."""
        from ... import scrapes as mon

        cluster = self.cluster()
        namespace = record.config.get("namespace") or cluster.namespace
        pods = self._call(
            f"listing the predictor pods of {record.name}",
            cluster.core().list_namespaced_pod,
            namespace,
            label_selector=f"{ISVC_LABEL}={record.name}",
        )
        ready = sorted(
            (p.metadata.name, p.metadata.uid or p.metadata.name)
            for p in pods.items
            if (p.metadata.labels or {}).get(ISVC_LABEL) == record.name and pod_ready(p)
        )
        scrapes: dict[str, mon.Scrape] = {}  # by pod uid: a pod's counters are its own
        for pod, uid in ready:
            resp = self._call(
                f"reading /metrics of pod {pod} (port {mf.METRICS_PORT}) through the API server",
                cluster.core().connect_get_namespaced_pod_proxy_with_path,
                f"{pod}:{mf.METRICS_PORT}",
                namespace,
                "metrics",
                _preload_content=False,
                _request_timeout=10,
            )
            scrapes[uid] = mon.parse(resp.data.decode())
        now = time.time()
        rows = mon.TRACKER.add_sources(record.name, scrapes, len(ready), at=now)
        total = mon.row(mon.combine(list(scrapes.values()), now, float(len(ready))))
        invocations = total["Invocations"]
        errors = total["Invocation4XXErrors"] + total["Invocation5XXErrors"]
        return {
            **rows[-1],
            "source": f"/metrics of {count(len(ready), 'ready predictor pod')} via the API server",
            "pods": [pod for pod, _ in ready],
            "latency_unit": "microseconds",
            "requests": invocations,
            "errors": errors,
            "error_rate": errors / invocations if invocations else 0.0,
            **{
                f"p{q}_ms": (
                    total[f"ModelLatency_p{q}"] / 1000.0
                    if total[f"ModelLatency_p{q}"] is not None
                    else None
                )
                for q in mon.QUANTILES
            },
            "replicas": len(ready),
            "min_replicas": record.min_replicas,
            "max_replicas": record.max_replicas,
            "sagemaker_names": list(mon.NAMES),
            "sagemaker_series": rows,
        }

    def scale(self, record: EndpointRecord, min_replicas: int, max_replicas: int) -> EndpointRecord:
        if min_replicas > max_replicas:
            raise SpecError("replicas", f"min {min_replicas} > max {max_replicas}")
        self._check_mode(min_replicas, {})
        self._patch(
            record,
            {"spec": {"predictor": {"minReplicas": min_replicas, "maxReplicas": max_replicas}}},
            "scaling",
        )
        update_endpoint(
            self.store, record.name, "scaled", min_replicas=min_replicas, max_replicas=max_replicas
        )
        return get_endpoint(self.store, record.name)

    def _delete_secret(self, name: str) -> None:
        cluster = self.cluster()
        try:
            cluster.core().delete_namespaced_secret(name, cluster.namespace)
        except Exception as exc:  # noqa: BLE001
            err = api_error(exc, f"deleting Secret {name}", cluster)
            if not is_status(err, 404):
                raise err from None

    def undeploy(self, name: str) -> None:
        from ...scrapes import TRACKER

        self._clients.close(name)
        TRACKER.forget(name)
        cluster = self.cluster()
        try:
            rec = get_endpoint(self.store, name)
            namespace = rec.config.get("namespace") or cluster.namespace
        except NotFound:
            namespace = cluster.namespace
        try:
            cluster.custom().delete_namespaced_custom_object(
                mf.KSERVE_GROUP, mf.KSERVE_VERSION, namespace, PLURAL, name
            )
        except Exception as exc:  # noqa: BLE001
            err = api_error(exc, f"deleting InferenceService {name}", cluster)
            if not is_status(err, 404):
                raise err from None
        self._delete_secret(mf.token_secret_name(name))
        delete_endpoint(self.store, name)
        (endpoint_dir(name) / "token").unlink(missing_ok=True)

    def list(self) -> list[EndpointRecord]:
        return [r for r in list_endpoints(self.store) if r.backend == self.backend]

    def close(self, name: str) -> None:
        self._clients.close(name)


def in_cluster() -> bool:
    """Whether this process runs in a pod of the cluster (a Kubeflow notebook)."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def pod_ready(pod: Any) -> bool:
    """Running and its Ready condition true (what a Service would send traffic to)."""
    st = pod.status
    if st is None or st.phase != "Running" or pod.metadata.deletion_timestamp:
        return False
    return any(c.type == "Ready" and c.status == "True" for c in st.conditions or [])
