"""Run by the kserve venv's python (tests/support/venvs.py), never imported by the suite:
what KServe's own Python SDK reads of one InferenceService, printed as JSON.

    python kserve_sdk.py KUBECONFIG NAMESPACE NAME [--wait SECONDS]

``KServeClient`` (from the kubeconfig, as a user's notebook would make it) lists the
namespace's InferenceServices, gets this one, asks ``is_isvc_ready`` (plain and at the
object's generation) and, with ``--wait``, ``wait_isvc_ready``; the object is deserialized
into kserve's ``V1beta1InferenceService`` by the SDK's ``ApiClient.deserialize``.

kserve's ApiClient looks model names up in ``kserve.models`` only, so the Kubernetes types an
InferenceService holds (``metadata``: ``V1ObjectMeta``, ``volumes``, ``env``...) raise
``AttributeError`` for any InferenceService (kserve/kserve#2329, open PR #6234), and so do
the Knative types of its status (``KnativeAddressable``, ``KnativeCondition``: modules of
``kserve.models`` it does not export), and ``KnativeURL`` (``status.url``, ``address.url``)
and ``KnativeVolatileTime`` (a condition's ``lastTransitionTime``) are Go structs whose fields
may not be None, while the API serves them as strings: no InferenceService with a status
deserializes as shipped. If that happens, the same
``deserialize`` runs with the Kubernetes types resolved by the ``kubernetes`` client's own
ApiClient (what that PR does), kserve's unexported models from their modules and those strings
kept as they are; the output says it happened.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys


class _Response:  # what ApiClient.deserialize reads: the body in .data
    def __init__(self, body: dict) -> None:
        self.data = json.dumps(body)


def unexported() -> dict[str, type]:
    """kserve's model classes by name, from every module of ``kserve.models``."""
    import kserve.models

    found = {}
    for info in pkgutil.iter_modules(kserve.models.__path__):
        module = importlib.import_module(f"kserve.models.{info.name}")
        found.update({k: v for k, v in vars(module).items() if isinstance(v, type)})
    return found


def deserialize(body: dict):
    import kserve
    import kubernetes.client

    try:
        return kserve.ApiClient().deserialize(_Response(body), "V1beta1InferenceService"), None
    except (AttributeError, ValueError) as exc:
        plain_error = str(exc)

    class ApiClient(kserve.ApiClient):
        def __init__(self) -> None:
            super().__init__()
            self.kube = kubernetes.client.ApiClient()

        # the name kserve.ApiClient's private __deserialize is called by, recursively
        def _ApiClient__deserialize(self, data, klass):  # noqa: N802
            if klass in ("KnativeURL", "KnativeVolatileTime") and isinstance(data, str):
                return data  # the API's form (the models want the Go structs' fields)
            if (
                isinstance(klass, str)
                and not klass.startswith(("list[", "dict("))
                and klass not in self.NATIVE_TYPES_MAPPING
                and not hasattr(kserve.models, klass)
            ):
                if hasattr(kubernetes.client.models, klass):
                    return self.kube._ApiClient__deserialize(data, klass)
                # kserve's own models that kserve.models does not export (the Knative ones:
                # KnativeAddressable, KnativeCondition...), from their modules
                klass = unexported()[klass]
            return super()._ApiClient__deserialize(data, klass)

    return ApiClient().deserialize(_Response(body), "V1beta1InferenceService"), plain_error


def main() -> None:
    from importlib.metadata import version

    from kserve import KServeClient, constants

    kubeconfig, namespace, name = sys.argv[1:4]
    wait = float(sys.argv[5]) if sys.argv[4:5] == ["--wait"] else None
    client = KServeClient(config_file=kubeconfig)
    if wait is not None:  # polls is_isvc_ready; raises RuntimeError when the time is up
        client.wait_isvc_ready(name, namespace, timeout_seconds=wait, polling_interval=0.2)
    listed = client.get(namespace=namespace)["items"]
    body = client.get(name, namespace=namespace)
    isvc, plain_error = deserialize(body)
    pred = isvc.spec.predictor
    model = pred.model
    status = isvc.status
    out = {
        "kserve": version("kserve"),
        "group": constants.KSERVE_GROUP,
        "version": constants.KSERVE_V1BETA1_VERSION,
        "listed": [i["metadata"]["name"] for i in listed],
        "ready": client.is_isvc_ready(name, namespace),
        "ready_at_generation": client.is_isvc_ready(
            name, namespace, expected_generation=body["metadata"].get("generation", 1)
        ),
        "plain_deserialize_error": plain_error,
        "type": type(isvc).__name__,
        "predictor_type": type(pred).__name__,
        "model_type": type(model).__name__,
        "metadata_type": type(isvc.metadata).__name__,
        "api_version": isvc.api_version,
        "kind": isvc.kind,
        "name": isvc.metadata.name,
        "namespace": isvc.metadata.namespace,
        "labels": isvc.metadata.labels,
        "annotations": isvc.metadata.annotations,
        "model_format": model.model_format.name,
        "runtime": model.runtime,
        "protocol_version": model.protocol_version,
        "storage_uri": model.storage_uri,
        "env": [
            [e.name, e.value, e.value_from.secret_key_ref.name if e.value_from else None]
            for e in model.env
        ],
        "requests": model.resources.requests,
        "mounts": [[m.name, m.mount_path, m.read_only] for m in model.volume_mounts],
        "service_account_name": pred.service_account_name,
        "min_replicas": pred.min_replicas,
        "max_replicas": pred.max_replicas,
        "scale_metric": pred.scale_metric,
        "volumes": [[v.name, v.secret.secret_name, v.secret.default_mode] for v in pred.volumes],
        "url": status.url if status else None,
        "address_url": status.address.url if status and status.address else None,
        "url_in_dict": body.get("status", {}).get("url"),  # what KServeClient.get returns
        "conditions": {c.type: c.status for c in (status.conditions or [])} if status else {},
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
