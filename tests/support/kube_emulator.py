"""A Kubernetes API on 127.0.0.1 for the kubeflow tests: kmock's KubernetesEmulator.

It runs in a thread with its own event loop; the code under test talks to it with
the official ``kubernetes`` client over HTTP, through a kubeconfig file written
here (``kubeconfig``). The test plays the controllers: it reads what nbscale
created and writes status back through the same API (``KubeApi``), and plays the
kubelet for pod logs (``set_log``: served by ``GET .../pods/NAME/log``, honouring
``timestamps``, ``sinceSeconds`` and ``tailLines`` as the kubelet does), and the pod network for the
API server's pod proxy (``expose``: ``GET .../pods/NAME:PORT/proxy/PATH`` is forwarded
to where that pod's port really listens, without the caller's credentials, as the API
server forwards it).

Like the API server, it admits what it stores (``_Admission``): a Kubeflow Trainer or KServe
object is decoded strictly against its CRD (of the emulated Trainer release,
``trainer_release``), unknown fields refused with 400 BadRequest as with
``fieldValidation=Strict`` (the emulator's default, ``field_validation``; ``Warn`` and
``Ignore`` drop them as a real server does by default, ``Warn`` recording
``warnings``); then the Trainer's defaulting webhook stamps ``runtimePatches[].time``;
then the schema and its CEL rules (422 Invalid); then the Trainer v2.2 validating webhook
on TrainJobs (403 Forbidden, ``admission webhook "validator.trainjob..." denied the
request``): the named runtime exists, the patched replicated jobs and containers exist in
it, no env on the runtime's own containers through a patch, no reserved torchrun env
(``PET_*``) in ``spec.trainer.env``, a domain-prefixed ``manager``, runtimePatches
unchanged while the TrainJob runs. The ``torch-distributed`` ClusterTrainingRuntime of the
release is installed at start, as the Trainer's chart does (``runtimes=False``: none).
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import json
import re
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import attrs
import kmock
import yaml

TRAINER = "trainer.kubeflow.org"
KSERVE = "serving.kserve.io"
# the custom resources the emulator serves and admits: (group, plural) -> (version, kind)
CUSTOM = {
    (TRAINER, "trainjobs"): ("v1alpha1", "TrainJob"),
    (TRAINER, "clustertrainingruntimes"): ("v1alpha1", "ClusterTrainingRuntime"),
    (TRAINER, "trainingruntimes"): ("v1alpha1", "TrainingRuntime"),
    (KSERVE, "inferenceservices"): ("v1beta1", "InferenceService"),
    (KSERVE, "clusterservingruntimes"): ("v1alpha1", "ClusterServingRuntime"),
}
CLUSTER_SCOPED = {"clustertrainingruntimes", "clusterservingruntimes"}
TRAINJOB_WEBHOOK = "validator.trainjob.trainer.kubeflow.org"
# torchrun's own variables: the Trainer sets them; a TrainJob may not (constants.go)
TORCH_RESERVED_ENV = ("PET_MASTER_ADDR", "PET_MASTER_PORT", "PET_NNODES", "PET_NODE_RANK",
                      "PET_NPROC_PER_NODE")  # fmt: skip
INITIALIZERS = ("dataset-initializer", "model-initializer")
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_HTTP_PATH = re.compile(r"^[A-Za-z0-9/\-._~%!$&'()*+,;=:]+$")


def _go(value: Any) -> str:
    """A value in an error message (Go prints structs its own way; JSON says the same)."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _invalid(path: str, value: Any, detail: str) -> str:
    return f"{path}: Invalid value: {_go(value)}: {detail}"


def domain_prefixed_path(path: str, value: str) -> list[str]:
    """apimachinery's IsDomainPrefixedPath: ``example.com/name``."""
    if not value:
        return [f"{path}: Required value"]
    host, sep, rest = value.partition("/")
    if not sep or not host or not rest:
        return [_invalid(path, value, 'must be a domain-prefixed path (such as "acme.io/foo")')]
    if len(host) > 253 or not _DNS1123_SUBDOMAIN.match(host):
        return [_invalid(path, host, "a lowercase RFC 1123 subdomain must consist of lower case "
                         "alphanumeric characters, '-' or '.'")]  # fmt: skip
    if not _HTTP_PATH.match(rest):
        return [_invalid(path, rest, "Invalid path")]
    return []


def trainjob_webhook(job: dict[str, Any], old: dict[str, Any] | None, runtime_of: Any) -> list[str]:
    """What the Trainer v2.2 validating webhook says of ``job`` (``old``: on update);
    ``runtime_of(kind, namespace, name)`` reads a runtime (None: there is none).

    The rules of pkg/webhooks/trainjob_webhook.go, pkg/runtime/core (the runtime must
    exist), pkg/runtime/framework/plugins/jobset (runtimePatches) and .../torch (reserved
    env), as released in v2.2."""
    spec = job.get("spec") or {}
    ref = spec.get("runtimeRef") or {}
    group = ref.get("apiGroup", TRAINER)
    kind = ref.get("kind", "ClusterTrainingRuntime")
    if group != TRAINER or kind not in ("ClusterTrainingRuntime", "TrainingRuntime"):
        return [f"unsupported runtime: {kind}.{group}"]
    namespace = (job.get("metadata") or {}).get("namespace")
    runtime = runtime_of(kind, namespace, ref.get("name"))
    if runtime is None:
        plural, what, path = (
            ("clustertrainingruntimes", "clusterTrainingRuntime", "spec.RuntimeRef")
            if kind == "ClusterTrainingRuntime"
            else ("trainingruntimes", "trainingRuntime", "spec.runtimeRef")
        )
        return [_invalid(path, ref, f'{plural}.{TRAINER} "{ref.get("name")}" not found: '
                         f"specified {what} must be created before the TrainJob is created")]  # fmt: skip
    errors: list[str] = []
    rspec = runtime.get("spec") or {}
    # the jobset plugin: runtimePatches may touch only what the runtime has
    containers: dict[str, set[str]] = {}
    for rjob in ((rspec.get("template") or {}).get("spec") or {}).get("replicatedJobs") or []:
        pod = (((rjob.get("template") or {}).get("spec") or {}).get("template") or {}).get(
            "spec"
        ) or {}
        containers[rjob["name"]] = {
            c["name"] for c in [*(pod.get("initContainers") or []), *(pod.get("containers") or [])]
        }
    init = spec.get("initializer") or {}
    for what, key in (("dataset-initializer", "dataset"), ("model-initializer", "model")):
        if init.get(key) is None:
            continue
        if what not in containers:
            errors.append(_invalid("spec.runtimeRef", ref, f"must have {what} job when trainJob "
                                   f"is configured with input {key}Config"))  # fmt: skip
        elif what not in containers[what]:
            errors.append(_invalid("spec.runtimeRef", ref, f"must have container with name - "
                                   f"{what} in the {what} job"))  # fmt: skip
    patches = spec.get("runtimePatches") or []
    if old is not None:
        before = (old.get("spec") or {}).get("runtimePatches") or []
        strip = [{k: v for k, v in p.items() if k != "time"} for p in patches]
        strip_before = [{k: v for k, v in p.items() if k != "time"} for p in before]
        suspended = bool((old.get("spec") or {}).get("suspend")) or bool(spec.get("suspend"))
        if strip != strip_before and not suspended:
            errors.append("spec.runtimePatches: Forbidden: RuntimePatches can only be modified "
                          "when the TrainJob is suspended before or after the update")  # fmt: skip
    for patch in patches:
        errors += domain_prefixed_path("spec.runtimePatches.manager", patch.get("manager", ""))
        template = ((patch.get("trainingRuntimeSpec") or {}).get("template") or {}).get("spec")
        for rjob in (template or {}).get("replicatedJobs") or []:
            have = containers.get(rjob.get("name"))
            if have is None:
                errors.append(_invalid("spec.runtimePatches", patches, "must not have replicated "
                                       "job that doesn't exist in the runtime job template"))  # fmt: skip
                continue
            pod = (((rjob.get("template") or {}).get("spec") or {}).get("template") or {}).get(
                "spec"
            ) or {}
            for c in pod.get("initContainers") or []:
                if c.get("name") not in have:
                    errors.append(_invalid("spec.runtimePatches", patches, "must not have "
                                           "initContainer that doesn't exist in the runtime job "
                                           f"{rjob['name']}"))  # fmt: skip
            for c in pod.get("containers") or []:
                if c.get("name") not in have:
                    errors.append(_invalid("spec.runtimePatches", patches, "must not have "
                                           "container that doesn't exist in the runtime job "
                                           f"{rjob['name']}"))  # fmt: skip
                elif c.get("env") and c["name"] in (*INITIALIZERS, "node"):
                    errors.append(_invalid("spec.runtimePatches", patches, "must not have envs "
                                           "for the dataset-initializer, model-initializer, node "
                                           "containers"))  # fmt: skip
    # the torch plugin: torchrun's variables are the Trainer's to set
    trainer = spec.get("trainer")
    if "torch" in (rspec.get("mlPolicy") or {}) and trainer is not None:
        env = trainer.get("env") or []
        reserved = sorted({e.get("name") for e in env} & set(TORCH_RESERVED_ENV))
        if reserved:
            errors.append(_invalid("spec.trainer.env", env, "must not have reserved envs, "
                                   f"invalid envs configured: [{' '.join(reserved)}]"))  # fmt: skip
    return errors


def _split_selector(text: str) -> list[str]:
    """The requirements of a selector: commas outside parentheses separate them."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts


def label_selector_matches(selector: str | None, labels: dict[str, str]) -> bool:
    """Kubernetes' label selector: ``k=v``, ``k==v``, ``k!=v``, ``k in (a, b)``,
    ``k notin (a)``, ``k``, ``!k``."""
    for req in _split_selector(selector or ""):
        m = re.fullmatch(r"(\S+)\s+(in|notin)\s+\((.*)\)", req)
        if m:
            values = {v.strip() for v in m.group(3).split(",")}
            inside = labels.get(m.group(1)) in values
            if inside != (m.group(2) == "in"):
                return False
            continue
        m = re.fullmatch(r"(\S+?)\s*(==|!=|=)\s*(\S*)", req)
        if m:
            equal = labels.get(m.group(1)) == m.group(3)
            if equal != (m.group(2) != "!="):
                return False
        elif req.startswith("!"):
            if req[1:].strip() in labels:
                return False
        elif req not in labels:
            return False
    return True


def field_selector_matches(selector: str | None, obj: dict[str, Any]) -> bool:
    """Kubernetes' field selector: ``path=value``, ``path==value``, ``path!=value``."""
    for req in _split_selector(selector or ""):
        m = re.fullmatch(r"(\S+?)\s*(==|!=|=)\s*(.*)", req)
        if not m:
            return False
        node: Any = obj
        for part in m.group(1).split("."):
            node = node.get(part) if isinstance(node, dict) else None
        equal = ("" if node is None else str(node)) == m.group(3)
        if equal != (m.group(2) != "!="):
            return False
    return True


def _status_error(code: int, reason: str, message: str, details: dict | None = None):
    """A refusal as the API server sends it: a ``Status`` object with the HTTP code."""
    from kmock._internal import k8s

    return k8s.KubernetesError(status=code, reason=reason, message=message, details=details or {})


@attrs.define(kw_only=True)
class _Emulator(kmock.KubernetesEmulator):
    """The API server's own fields: uid, creationTimestamp, generation (bumped by spec
    changes); and its admission of custom resources (module docstring)."""

    history: list = attrs.field(factory=list, init=False)
    trainer_release: str = "v2.2.1"
    field_validation: str = "Strict"
    warnings: list = attrs.field(factory=list, init=False)
    refusals: list = attrs.field(factory=list, init=False)  # (method, path, the error)

    async def _serve_list(self, request):
        """The list, filtered by ``labelSelector`` and ``fieldSelector`` as the API server
        filters it."""
        payload = await super()._serve_list(request)
        labels = request.params.get("labelSelector")
        fields = request.params.get("fieldSelector")
        if labels or fields:
            payload["items"] = [
                o
                for o in payload["items"]
                if label_selector_matches(labels, (o.get("metadata") or {}).get("labels") or {})
                and field_selector_matches(fields, o)
            ]
        return payload

    def _current(self, request) -> dict[str, Any] | None:
        key = (request.resource, request.namespace, request.name)
        if key in self._objects and not self._objects[key].deleted:
            return copy.deepcopy(self._objects[key].raw)
        return None

    def _runtime_of(self, kind: str, namespace: str | None, name: str | None):
        plural = (
            "clustertrainingruntimes" if kind == "ClusterTrainingRuntime" else "trainingruntimes"
        )
        for (resource, ns, n), obj in self._objects.items():
            if (
                resource.group == TRAINER
                and resource.plural == plural
                and n == name
                and (plural in CLUSTER_SCOPED or ns == namespace)
                and not obj.deleted
            ):
                return obj.raw
        return None

    def _admit(self, request) -> None:
        """Refuse (raise) what the API server and its webhooks would refuse; adjust
        ``request.data`` as they would (unknown fields dropped, defaults set)."""
        from kmock._internal import dicts, enums

        from tests.support import kube_schemas as ks

        res = request.resource
        known = CUSTOM.get((res.group, res.plural))
        if known is None or request.subresource is not None:
            return
        if not isinstance(request.data, dict):
            return
        version, kind = known
        old = None
        if request.action == enums.action.CREATE:
            obj = copy.deepcopy(request.data)
        else:
            old = self._current(request)
            if old is None:
                return  # kmock answers 404
            obj = dict(dicts.patch_dict(copy.deepcopy(old), request.data))
        obj.setdefault("apiVersion", f"{res.group}/{version}")
        obj.setdefault("kind", kind)
        if request.namespace and res.plural not in CLUSTER_SCOPED:
            obj.setdefault("metadata", {}).setdefault("namespace", request.namespace)
        release = self.trainer_release if res.group == TRAINER else None
        name = (obj.get("metadata") or {}).get("name", "")
        # 1. decoding: fields the CRD does not declare
        unknown = ks.unknown_paths(obj, release)
        if unknown:
            mode = str(request.params.get("fieldValidation") or self.field_validation)
            shown = [ks.field_path(p) for p in unknown]
            if mode == "Strict":
                listed = ", ".join(f'unknown field "{f}"' for f in shown)
                raise _status_error(
                    400,
                    "BadRequest",
                    f'{kind} in version "{version}" cannot be handled as a {kind}: '
                    f"strict decoding error: {listed}",
                )
            if mode == "Warn":
                self.warnings.append((kind, name, [f'unknown field "{f}"' for f in shown]))
            ks.prune(obj, unknown)
            if request.action == enums.action.CREATE:
                ks.prune(request.data, unknown)
            else:  # what is stored is the pruned object
                request.data.clear()
                request.data.update(obj)
        # 2. mutating admission: the Trainer's defaulter stamps each runtime patch
        if kind == "TrainJob":
            now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            before = {
                p.get("manager"): p
                for p in ((old or {}).get("spec") or {}).get("runtimePatches") or []
            }
            patches = (obj.get("spec") or {}).get("runtimePatches") or []
            for p in patches:
                if not p.get("time"):
                    p["time"] = (before.get(p.get("manager")) or {}).get("time") or now
            if patches and request.action == enums.action.CREATE:
                request.data["spec"]["runtimePatches"] = copy.deepcopy(patches)
        # 3. the schema and its CEL rules
        causes = []
        for e in ks.schema_errors(obj, release):
            where = ks.field_path(e.absolute_path) or "<root>"
            causes.append((where, f"{where}: Invalid value: {_go(e.instance)[:200]}: {e.message}"))
        if not causes:
            schema = ks.crd_schema(res.group, kind, version, release)
            causes = [
                (p, f'{p}: Invalid value: "object": {m}') for p, m in ks.cel_failures(schema, obj)
            ]
        if causes:
            raise _status_error(
                422,
                "Invalid",
                f'{kind}.{res.group} "{name}" is invalid: ' + ", ".join(m for _, m in causes),
                {
                    "name": name,
                    "group": res.group,
                    "kind": kind,
                    "causes": [
                        {"reason": "FieldValueInvalid", "message": m, "field": p} for p, m in causes
                    ],
                },
            )
        # 4. validating admission: the Trainer's webhook, on a new TrainJob or a new spec
        if kind == "TrainJob" and (old is None or obj.get("spec") != old.get("spec")):
            errors = trainjob_webhook(obj, old, self._runtime_of)
            if errors:
                text = errors[0] if len(errors) == 1 else "[" + ", ".join(errors) + "]"
                raise _status_error(
                    403,
                    "Forbidden",
                    f'admission webhook "{TRAINJOB_WEBHOOK}" denied the request: {text}',
                )

    async def _handle(self, request):
        from kmock._internal import enums

        if request.resource is not None and request.action in (
            enums.action.CREATE,
            enums.action.UPDATE,
        ):
            try:
                self._admit(request)
            except Exception as exc:  # noqa: BLE001 - answered as the API server would
                self.history.append(request)
                self.refusals.append((str(request.method), str(request.url.path), exc))
                # said where a failing test shows it: a fake controller's refused write
                # may otherwise be one ApiException in a thread
                print(f"kube-emulator: refused {request.method} {request.url.path}: {exc}",
                      file=sys.stderr)  # fmt: skip
                return await self._render_error(exc)
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
    """``trainer_release``: the Kubeflow Trainer whose CRDs and webhook are emulated;
    ``runtimes``: install its ``torch-distributed`` ClusterTrainingRuntime;
    ``field_validation``: what a request that names none gets (``Strict``, ``Warn``,
    ``Ignore``)."""

    def __init__(
        self,
        *,
        trainer_release: str = "v2.2.1",
        runtimes: bool = True,
        field_validation: str = "Strict",
    ) -> None:
        self.trainer_release = trainer_release
        self.install_runtimes = runtimes
        self.field_validation = field_validation
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
        emulator = _Emulator(
            trainer_release=self.trainer_release, field_validation=self.field_validation
        )
        async with emulator as emu, kmock.Server(emu, host="127.0.0.1") as srv:
            self.emulator = emu
            for resource in ("v1/pods", "v1/events", "v1/secrets", "v1/configmaps"):
                emu.resources[resource] = {}
            for (group, plural), (version, _) in CUSTOM.items():
                emu.resources[f"{group}/{version}/{plural}"] = {}
            if self.install_runtimes:  # as the Trainer's chart installs it
                from tests.support.kube_schemas import torch_runtime

                runtime = torch_runtime(self.trainer_release)
                key = (
                    kmock.resource(TRAINER, "v1alpha1", "clustertrainingruntimes"),
                    None,
                    runtime["metadata"]["name"],
                )
                emu.objects[key] = runtime
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
        if params.get("tailLines") is not None:  # the kubelet's last N lines (of those since)
            tail = int(params["tailLines"])
            out = out[len(out) - tail :] if tail else []
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
