"""A connection to the cluster through the official ``kubernetes`` client.

The configuration comes from the standard places, in this order: the backend's
``kubeconfig`` setting, in-cluster (a pod's service account), ``$KUBECONFIG``,
``~/.kube/config``; ``context`` picks a context (default: the current one). The
namespace is the backend's ``namespace``, else the context's, else ``default``
(in a pod: the pod's own). A missing or unreachable cluster is one message that
names the context and what to check.

``Cluster.user`` is whose signing keys the jobs carry (the per-user key Secret is named
after it): ``$NBSCALE_USER`` when set, else the kube context's user entry, else (in a
pod, whose service account many users share) the pod's own name, i.e. the notebook
server whose ``$NBSCALE_HOME`` holds the keys.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import BackendUnavailable, MissingDependency, NbscaleError
from .settings import KubeflowSettings

SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class KubeError(NbscaleError):
    """The API server refused a request (status and Kubernetes' own message)."""

    def __init__(self, message: str, hint: str | None = None, status: int | None = None):
        self.status = status
        super().__init__(message, hint)


def _kubernetes():
    try:
        import kubernetes
    except ImportError:
        raise MissingDependency("kubernetes", "kubeflow") from None
    return kubernetes


@dataclass
class Cluster:
    """An ``ApiClient`` and where it points: context, namespace, server."""

    api: Any
    context: str
    namespace: str
    server: str
    user: str = ""  # whose signing keys (module docstring)

    def core(self):
        return _kubernetes().client.CoreV1Api(self.api)

    def custom(self):
        return _kubernetes().client.CustomObjectsApi(self.api)

    def describe(self) -> str:
        return f"context {self.context!r} ({self.server}, namespace {self.namespace})"

    def call(self, what: str, fn, *args, **kw):
        """A client call whose failure becomes one message naming what was being done."""
        try:
            return fn(*args, **kw)
        except Exception as exc:  # noqa: BLE001 - the client's errors, as one message
            raise api_error(exc, what, self) from None

    def probe(self, group: str, version: str, plural: str, label: str) -> dict[str, Any]:
        """``check()`` of a backend: can this namespace list the resource it makes?"""
        try:
            self.call(
                f"listing {plural} in {self.namespace}",
                self.custom().list_namespaced_custom_object,
                group,
                version,
                self.namespace,
                plural,
                limit=1,
                _request_timeout=10,
            )
        except NbscaleError as exc:
            return {"reachable": False, "detail": str(exc)}
        return {"reachable": True, "detail": f"{label} via {self.describe()}"}


def _kubeconfig_files(settings: KubeflowSettings) -> list[str]:
    if settings.kubeconfig:
        return [os.path.expanduser(settings.kubeconfig)]
    env = os.environ.get("KUBECONFIG")
    if env:
        return [p for p in env.split(os.pathsep) if p]
    return [os.path.expanduser("~/.kube/config")]


_connected: dict[tuple, Cluster] = {}
_lock = threading.Lock()


def connect(settings: KubeflowSettings) -> Cluster:
    """Load the configuration (nothing is sent yet); raise one clear message when there is none.

    One ``Cluster`` per process and configuration (its files unchanged): a notebook that
    submits many cells reuses the client and its connection pool."""
    files = _kubeconfig_files(settings)
    stamp = tuple((f, os.path.getmtime(f)) for f in files if os.path.exists(f))
    key = (
        settings.kubeconfig,
        settings.context,
        settings.namespace,
        stamp,
        os.environ.get("KUBERNETES_SERVICE_HOST"),
        os.environ.get(USER_ENV),
    )
    with _lock:
        found = _connected.get(key)
        if found is None:
            found = _connected[key] = _connect(settings)
        return found


def _connect(settings: KubeflowSettings) -> Cluster:
    k8s = _kubernetes()
    configuration = k8s.client.Configuration()
    files = _kubeconfig_files(settings)
    in_cluster = (
        not settings.kubeconfig
        and not settings.context
        and "KUBERNETES_SERVICE_HOST" in os.environ
        and not os.environ.get("KUBECONFIG")
    )
    if in_cluster:
        try:
            loader = k8s.config.incluster_config.InClusterConfigLoader(
                token_filename=k8s.config.incluster_config.SERVICE_TOKEN_FILENAME,
                cert_filename=k8s.config.incluster_config.SERVICE_CERT_FILENAME,
            )
            loader.load_and_set(configuration)
        except k8s.config.ConfigException as exc:
            raise BackendUnavailable(
                f"[backends.{settings.name}]: in-cluster Kubernetes configuration is unusable: {exc}",
                "check the pod's service account, or set kubeconfig in the backend's table",
            ) from None
        namespace = settings.namespace or (
            SA_NAMESPACE.read_text().strip() if SA_NAMESPACE.exists() else "default"
        )
        return Cluster(
            k8s.client.ApiClient(configuration),
            "in-cluster",
            namespace,
            configuration.host,
            key_user(None),
        )
    existing = [f for f in files if os.path.exists(f)]
    if not existing:
        raise BackendUnavailable(
            f"[backends.{settings.name}]: no Kubernetes configuration: {', '.join(files)} "
            "does not exist and this is not a pod",
            "set KUBECONFIG or the backend's kubeconfig setting, or create ~/.kube/config "
            "(kind get kubeconfig > ~/.kube/config)",
        )
    try:
        contexts, current = k8s.config.list_kube_config_contexts(config_file=existing[0])
        wanted = settings.context or (current or {}).get("name")
        chosen = next((c for c in contexts if c["name"] == wanted), None)
        if chosen is None:
            names = ", ".join(c["name"] for c in contexts) or "(none)"
            raise BackendUnavailable(
                f"[backends.{settings.name}]: kube context {wanted!r} is not in {existing[0]}",
                f'contexts there: {names}; set context = "..." in the backend\'s table',
            )
        k8s.config.load_kube_config(
            config_file=existing[0], context=wanted, client_configuration=configuration
        )
    except k8s.config.ConfigException as exc:
        raise BackendUnavailable(
            f"[backends.{settings.name}]: the Kubernetes configuration in {existing[0]} is unusable: {exc}",
            "check the file with: kubectl config view",
        ) from None
    namespace = settings.namespace or chosen["context"].get("namespace") or "default"
    return Cluster(
        k8s.client.ApiClient(configuration),
        wanted,
        namespace,
        configuration.host,
        key_user(chosen["context"].get("user") or wanted),
    )


USER_ENV = "NBSCALE_USER"


def key_user(context_user: str | None) -> str:
    """Whose keys: ``$NBSCALE_USER``, else the kube context's user, else (in a pod) the pod's
    name (``$HOSTNAME``), else the login name."""
    found = os.environ.get(USER_ENV, "").strip() or (context_user or "").strip()
    if not found:
        found = os.environ.get("HOSTNAME", "").strip()
    if not found:
        import getpass

        found = getpass.getuser()
    return found


def api_error(exc: Exception, what: str, cluster: Cluster) -> NbscaleError:
    """One message for a failed call: unreachable cluster, or what the API server said."""
    k8s = _kubernetes()
    if isinstance(exc, k8s.client.exceptions.ApiException):
        message = exc.reason or ""
        try:
            import json

            message = json.loads(exc.body).get("message") or message
        except (TypeError, ValueError, AttributeError):
            pass
        hint = {
            401: "the credentials of the context are not accepted: refresh them (kubectl get pods)",
            403: f"the context's user may not do this in namespace {cluster.namespace}",
            404: "the resource type or object is not there: is Kubeflow Trainer / KServe installed?",
            409: "an object of that name exists already",
            422: "the cluster refused the manifest: nbscale run --dry-run shows it",
        }.get(exc.status)
        if exc.status in (400, 403) and "admission webhook" in message:
            # a validating webhook's denial (controller-runtime answers 403): the manifest,
            # not the user's permissions, is what the cluster refused
            hint = (
                "the cluster's admission webhook refused the manifest: --dry-run shows it; "
                "check the runtime it names and the fields the message gives"
            )
        return KubeError(f"{what}: {exc.status} {message}", hint, status=exc.status)
    import urllib3

    if not isinstance(exc, urllib3.exceptions.HTTPError | OSError):
        return NbscaleError(f"{what}: {type(exc).__name__}: {exc}")
    return BackendUnavailable(
        f"{what}: the cluster of {cluster.describe()} cannot be reached: {exc}",
        "check that the cluster runs and the context is right: kubectl --context "
        f"{cluster.context} get ns",
    )


def is_status(exc: Exception, status: int) -> bool:
    return isinstance(exc, KubeError) and exc.status == status
