"""How nbscale reaches Kubeflow Pipelines: the API's address, the credentials, the namespace.

Credentials, first found wins:

1. in a Kubeflow notebook pod: the service-account token projected for the audience
   ``pipelines.kubeflow.org`` (at ``$KF_PIPELINES_SA_TOKEN_PATH``, else
   ``/var/run/secrets/kubeflow/pipelines/token``, where Kubeflow's PodDefault mounts
   it); the kfp SDK re-reads the file before each call, as the kubelet refreshes it;
2. a token or a session cookie: ``NBSCALE_KFP_TOKEN`` / ``NBSCALE_KFP_COOKIE`` in the
   environment, else the keys ``token`` / ``cookie`` of the Secret ``kfp_secret``
   (read from the kube context's namespace);
3. none: a standalone KFP (or a port-forward) that takes plain requests.

Without ``kfp_host`` a pod with the projected token talks to the in-cluster service
``ml-pipeline.kubeflow``. The credentials' values are never logged, shown or stored:
only where they came from (``Access.source``).

The namespace of the runs is the one their step pods run in, so it is where the key
Secret must be: ``kfp_namespace``; else, on a multi-user KFP (healthz ``multi_user``),
the profile namespace (the kube namespace: ``namespace``, the context's, or the pod's
own); else, on a standalone KFP, KFP's own namespace, ``kubeflow``.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import BackendUnavailable, NbscaleError, SpecError
from .settings import KubeflowSettings

SA_TOKEN_ENV = "KF_PIPELINES_SA_TOKEN_PATH"  # the kfp SDK's own variable
SA_TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"
AUDIENCE = "pipelines.kubeflow.org"
IN_CLUSTER_HOST = "http://ml-pipeline.kubeflow.svc.cluster.local:8888"
STANDALONE_NAMESPACE = "kubeflow"
TOKEN_ENV = "NBSCALE_KFP_TOKEN"
COOKIE_ENV = "NBSCALE_KFP_COOKIE"


def sa_token_path() -> Path:
    return Path(os.environ.get(SA_TOKEN_ENV) or SA_TOKEN_PATH)


@dataclass(frozen=True)
class Access:
    """Where the API is and how calls authenticate; ``client_args`` hold the secret
    values (never printed: not in ``repr``)."""

    host: str
    source: str
    client_args: dict[str, Any] = field(default_factory=dict, repr=False)


def with_note(err: NbscaleError, note: str) -> NbscaleError:
    """The same error (class, status, hint) with a note on its message."""
    from .cluster import KubeError

    if isinstance(err, KubeError):
        return KubeError(f"{err.message}; {note}", err.hint, err.status)
    return type(err)(f"{err.message}; {note}", err.hint)


def secret_values(conf: KubeflowSettings) -> dict[str, str]:
    from .cluster import api_error, connect

    cluster = connect(conf)
    try:
        secret = cluster.core().read_namespaced_secret(conf.kfp_secret, cluster.namespace)
    except Exception as exc:  # noqa: BLE001
        err = api_error(exc, f"reading Secret {conf.kfp_secret} (kfp_secret)", cluster)
        raise with_note(
            err, f"the KFP credentials are read from namespace {cluster.namespace}"
        ) from None
    data = secret.data or {}
    out = {k: base64.b64decode(data[k]).decode().strip() for k in ("token", "cookie") if k in data}
    if not out:
        raise SpecError(
            f"[backends.{conf.name}] kfp_secret",
            f"Secret {conf.kfp_secret} in namespace {cluster.namespace} has neither a "
            "'token' nor a 'cookie' key",
            f"kubectl -n {cluster.namespace} create secret generic {conf.kfp_secret} "
            "--from-literal=token=...",
        )
    return out


def resolve(conf: KubeflowSettings) -> Access:
    """The API's address and credentials, in the order the module's docstring gives."""
    token_file = sa_token_path()
    if token_file.is_file():
        from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

        return Access(
            conf.kfp_host or IN_CLUSTER_HOST,
            f"the pod's service-account token for {AUDIENCE} ({token_file})",
            {"credentials": ServiceAccountTokenVolumeCredentials(str(token_file))},
        )
    if not conf.kfp_host:
        raise SpecError(
            f"[backends.{conf.name}] kfp_host",
            "is not set, and this is no Kubeflow notebook pod with a pipelines token "
            f"({token_file} does not exist)",
            'add kfp_host = "http://ml-pipeline-ui.kubeflow:80" (or a port-forward)',
        )
    token = os.environ.get(TOKEN_ENV)
    cookie = os.environ.get(COOKIE_ENV)
    if token:
        return Access(conf.kfp_host, f"the token in ${TOKEN_ENV}", {"existing_token": token})
    if cookie:
        return Access(conf.kfp_host, f"the cookie in ${COOKIE_ENV}", {"cookies": cookie})
    if conf.kfp_secret:
        values = secret_values(conf)
        if "token" in values:
            return Access(
                conf.kfp_host,
                f"the token in Secret {conf.kfp_secret}",
                {"existing_token": values["token"]},
            )
        return Access(
            conf.kfp_host, f"the cookie in Secret {conf.kfp_secret}", {"cookies": values["cookie"]}
        )
    return Access(conf.kfp_host, "no credentials (a standalone KFP)")


def healthz(host: str, name: str) -> dict[str, Any]:
    """KFP's ``/apis/v2beta1/healthz`` (it takes no credentials); ``{}`` when the answer is
    not KFP's JSON (e.g. a login page in front of it)."""
    url = urllib.parse.urlsplit(host)
    cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    conn = cls(url.hostname, url.port, timeout=5)
    try:
        conn.request("GET", url.path.rstrip("/") + "/apis/v2beta1/healthz")
        resp = conn.getresponse()
        body = resp.read()
    except OSError as exc:
        raise BackendUnavailable(
            f"the Kubeflow Pipelines API at {host} cannot be reached: {exc}",
            f"check kfp_host in [backends.{name}] (kubectl -n kubeflow "
            "port-forward svc/ml-pipeline-ui 8080:80)",
        ) from None
    finally:
        conn.close()
    if resp.status != 200:
        return {}
    try:
        found = json.loads(body)
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def run_namespace(conf: KubeflowSettings, multi_user: bool, kube_namespace: str) -> tuple[str, str]:
    """The namespace the runs and their step pods are in, and why."""
    if conf.kfp_namespace:
        return conf.kfp_namespace, "kfp_namespace"
    if multi_user:
        return kube_namespace, "the profile namespace of a multi-user KFP (the kube namespace)"
    return STANDALONE_NAMESPACE, "KFP's own namespace (a standalone KFP; set kfp_namespace)"
