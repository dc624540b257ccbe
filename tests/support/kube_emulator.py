"""A Kubernetes API on 127.0.0.1 for the kubeflow tests: kmock's KubernetesEmulator.

It runs in a thread with its own event loop; the code under test talks to it with
the official ``kubernetes`` client over HTTP, through a kubeconfig file written
here (``kubeconfig``). The test plays the controllers: it reads what nbscale
created and writes status back through the same API (``KubeApi``), and plays the
kubelet for pod logs (``set_log``: served by ``GET .../pods/NAME/log``, honouring
``timestamps`` and ``sinceSeconds`` as the kubelet does), and the pod network for the
API server's pod proxy (``expose``: ``GET .../pods/NAME:PORT/proxy/PATH`` is forwarded
to where that pod's port really listens, without the caller's credentials, as the API
server forwards it).
"""

from __future__ import annotations

import asyncio
import datetime
import re
import threading
import uuid
from pathlib import Path
from typing import Any

import attrs
import kmock
import yaml


@attrs.define(kw_only=True)
class _Emulator(kmock.KubernetesEmulator):
    """The API server's own fields: uid, creationTimestamp, generation (bumped by spec changes)."""

    history: list = attrs.field(factory=list, init=False)

    async def _handle(self, request):
        from kmock._internal import enums

        if request.resource is not None and request.action == enums.action.CREATE:
            meta = request.data.setdefault("metadata", {})
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault(
                "creationTimestamp",
                datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            )
            meta.setdefault("generation", 1)
        elif (
            request.resource is not None
            and request.action == enums.action.UPDATE
            and request.subresource is None
            and isinstance(request.data, dict)
            and "spec" in request.data
        ):  # a change of spec is a new generation, as the API server counts them
            key = (request.resource, request.namespace, request.name)
            if key in self._objects and not self._objects[key].deleted:
                gen = (self._objects[key].get("metadata") or {}).get("generation") or 1
                request.data.setdefault("metadata", {})["generation"] = gen + 1
        try:
            return await super()._handle(request)
        finally:
            # kmock filters its whole request history on every request (quadratic);
            # the history moves to a list of ours that the tests read
            self.history.extend(self._requests)
            self._requests.clear()


class KubeEmulator:
    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._logs: dict[tuple[str, str], list[tuple[str, str]]] = {}
        self._pod_net: dict[tuple[str, str, int], tuple[str, int]] = {}
        self.proxy_requests: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self.log_requests: list[dict[str, str]] = []
        self.url = ""
        self.emulator: kmock.KubernetesEmulator | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="kube-emulator")
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the Kubernetes emulator did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with _Emulator() as emu, kmock.Server(emu, host="127.0.0.1") as srv:
            self.emulator = emu
            for resource in (
                "v1/pods",
                "v1/events",
                "v1/secrets",
                "v1/configmaps",
                "trainer.kubeflow.org/v1alpha1/trainjobs",
                "serving.kserve.io/v1beta1/inferenceservices",
            ):
                emu.resources[resource] = {}
            emu[kmock.subresource("log")] << self._serve_log
            emu[kmock.subresource(re.compile(r"proxy(/.*)?"))] << self._serve_proxy
            self.url = f"http://127.0.0.1:{srv.port}"
            self._ready.set()
            await self._stop.wait()

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    # -- the kubelet's part: pod logs ------------------------------------------------
    def set_log(self, namespace: str, pod: str, lines: list[str]) -> None:
        """Append lines to a pod's log (each stamped now, as the container runtime does)."""
        now = datetime.datetime.now(datetime.UTC)
        with self._lock:
            entries = self._logs.setdefault((namespace, pod), [])
            for i, line in enumerate(lines):
                ts = (now + datetime.timedelta(microseconds=i)).strftime("%Y-%m-%dT%H:%M:%S.%f")
                entries.append((ts + "000Z", line))

    def _serve_log(self, request: Any) -> bytes:
        params = dict(request.params)
        self.log_requests.append({"pod": request.name, **params})
        since = None
        if params.get("sinceSeconds"):
            back = datetime.timedelta(seconds=int(params["sinceSeconds"]))
            since = (datetime.datetime.now(datetime.UTC) - back).strftime("%Y-%m-%dT%H:%M:%S.%f")
        with self._lock:
            entries = list(self._logs.get((request.namespace, request.name), []))
        out = []
        for ts, line in entries:
            if since and ts[:26] < since:
                continue
            out.append(f"{ts} {line}" if str(params.get("timestamps")).lower() == "true" else line)
        return ("\n".join(out) + ("\n" if out else "")).encode()

    # -- the pod network, for the API server's pod proxy --------------------------------
    def expose(self, namespace: str, pod: str, port: int, address: tuple[str, int]) -> None:
        """Port ``port`` of ``pod`` listens at ``address`` (a process of the test)."""
        with self._lock:
            self._pod_net[(namespace, pod, port)] = address

    def unexpose(self, namespace: str, pod: str) -> None:
        with self._lock:
            for key in [k for k in self._pod_net if k[:2] == (namespace, pod)]:
                del self._pod_net[key]

    async def _serve_proxy(self, request: Any) -> kmock.Response:
        import aiohttp

        pod, _, port = request.name.partition(":")
        path = request.subresource[len("proxy") :] or "/"
        self.proxy_requests.append({"pod": pod, "port": port, "path": path})
        with self._lock:
            address = self._pod_net.get((request.namespace, pod, int(port or 80)))
        if address is None:  # what the API server says when nothing listens there
            return kmock.Response(
                status=503,
                payload=f"error trying to reach service: dial tcp {pod}:{port}: "
                "connect: connection refused".encode(),
            )
        # the API server keeps the caller's credentials (and hop-by-hop headers) to itself
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in ("authorization", "host", "connection", "content-length")
        }
        url = f"http://{address[0]}:{address[1]}{path}"
        async with (
            aiohttp.ClientSession() as session,
            session.get(url, params=dict(request.params), headers=headers) as resp,
        ):
            body = await resp.read()
            ctype = resp.headers.get("content-type", "text/plain")
            return kmock.Response(status=resp.status, payload=body, headers={"content-type": ctype})

    # -- clients ---------------------------------------------------------------------
    def kubeconfig(self, path: Path, namespace: str = "team-a", context: str = "emu") -> Path:
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emu", "cluster": {"server": self.url}}],
            "users": [{"name": "emu", "user": {"token": "emulator-token"}}],
            "contexts": [
                {
                    "name": context,
                    "context": {"cluster": "emu", "user": "emu", "namespace": namespace},
                }
            ],
            "current-context": context,
        }
        path.write_text(yaml.safe_dump(doc))
        return path

    def requests(self) -> list[Any]:
        assert self.emulator is not None
        return list(self.emulator.history)  # every request served, in order

    def writes(self) -> list[Any]:
        """The requests that create, change or delete something."""
        return [
            r
            for r in self.requests()
            if str(r.method).upper().endswith(("POST", "PUT", "PATCH", "DELETE"))
        ]


class KubeApi:
    """The test's own client (the controller's view), on the same emulator."""

    def __init__(self, url: str):
        import kubernetes

        conf = kubernetes.client.Configuration()
        conf.host = url
        self.api = kubernetes.client.ApiClient(conf)
        self.core = kubernetes.client.CoreV1Api(self.api)
        self.custom = kubernetes.client.CustomObjectsApi(self.api)

    def trainjobs(self, namespace: str) -> list[dict[str, Any]]:
        return self.custom.list_namespaced_custom_object(
            "trainer.kubeflow.org", "v1alpha1", namespace, "trainjobs"
        )["items"]

    def patch_trainjob_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            "trainer.kubeflow.org", "v1alpha1", namespace, "trainjobs", name, {"status": status}
        )

    def create_pod(
        self,
        namespace: str,
        name: str,
        labels: dict[str, str],
        status: dict[str, Any],
        spec: dict[str, Any] | None = None,
    ) -> None:
        self.core.create_namespaced_pod(
            namespace,
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": namespace, "labels": labels},
                "spec": spec or {"containers": [{"name": "node", "image": "x"}]},
                "status": status,
            },
        )

    def patch_pod_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.core.patch_namespaced_pod(name, namespace, {"status": status})


def condition(type_: str, status: str = "True", reason: str = "", message: str = "") -> dict:
    return {
        "type": type_,
        "status": status,
        "reason": reason or type_,
        "message": message,
        "lastTransitionTime": "2026-12-01T00:00:00Z",
    }
