"""Kubeflow Pipelines' REST API (``/apis/v2beta1``) on 127.0.0.1: the parts the kfp SDK
``Client`` uses, in either of KFP's two modes.

- standalone (``multi_user=False``): no identities, no namespaces; a namespace sent with
  an experiment is refused, as a single-user API server does.
- multi-user (``multi_user=True``), as a Kubeflow install runs it: healthz takes no
  credentials; every other call needs an identity, else 401 (gRPC code 16,
  UNAUTHENTICATED). The identity is a bearer token the API server reviews (a projected
  service-account token must carry the audience ``pipelines.kubeflow.org``, as KFP's
  TokenReview asks) or the session cookie of the auth proxy in front of it. Experiments
  live in a namespace, which must be given (400, code 3) and which the identity must be
  allowed in (403, code 7); a run is in its experiment's namespace and is read and
  terminated under the same check.

Errors have grpc-gateway's JSON shape: ``{"error", "code", "message", "details"}``.

``play_run`` plays what runs a KFP v2 run (Argo, the driver, the launcher, the kubelet):
each task of the run's IR in the DAG's order, an importer as an artifact with its URI,
a container task as a local process with exactly the executor's command and args, its
placeholders filled the way KFP's launcher fills them: input artifacts downloaded from
object storage (moto's S3 stands in for MinIO; ``s3://B/K`` lands at ``/s3/B/K``, under
the pod's own folder here), outputs uploaded to the pipeline root when the command ends.
The process gets only what the pod would: the executor's env, the Secret volumes the
platform spec mounts, its own home, and the image's python first on PATH.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import threading
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.support.emulators import kubernetes_secret_volume

AUDIENCE = "pipelines.kubeflow.org"
COOKIE = "authservice_session"
_HTTP = {3: 400, 5: 404, 7: 403, 16: 401}


def service_account_token(user: str, audience: str = AUDIENCE) -> str:
    """A JWT shaped like a projected service-account token (the fake reads its claims)."""

    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    claims = {"aud": [audience], "sub": f"system:serviceaccount:{user}", "iss": "kubernetes"}
    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2lnbmF0dXJl"


def _claims(token: str) -> dict:
    try:
        payload = token.split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}


class KFPError(Exception):
    def __init__(self, code: int, message: str):
        self.code = code
        self.message = message


class FakeKFP:
    """KFP's API server. ``tokens``/``cookies``: credential -> user; ``access``: user ->
    the namespaces the user may work in (multi-user mode)."""

    def __init__(self, multi_user: bool = False) -> None:
        self.multi_user = multi_user
        self.tokens: dict[str, str] = {}
        self.cookies: dict[str, str] = {}
        self.access: dict[str, set[str]] = {}
        self.requests: list[tuple[str, str, dict]] = []
        self.refused: list[tuple[str, int, str]] = []
        self.runs: dict[str, dict] = {}
        self.experiments: dict[str, dict] = {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> dict:
                n = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(n) or b"{}")

            def _handle(self, method: str) -> None:
                body = self._body() if method == "POST" else {}
                fake.requests.append((method, self.path, body))
                url = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                try:
                    if url.path == "/apis/v2beta1/healthz":
                        return self._send(200, {"multi_user": fake.multi_user})
                    user = fake.identify(self.headers)
                    code, out = fake.route(method, url.path, query, body, user)
                except KFPError as err:
                    fake.refused.append((self.path, err.code, err.message))
                    return self._send(
                        _HTTP.get(err.code, 500),
                        {"error": err.message, "code": err.code, "message": err.message,
                         "details": []},
                    )  # fmt: skip
                return self._send(code, out)

            def do_GET(self):  # noqa: N802
                self._handle("GET")

            def do_POST(self):  # noqa: N802
                self._handle("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    # -- identity and namespaces (multi-user mode) -------------------------------------
    def identify(self, headers) -> str | None:
        if not self.multi_user:
            return None
        auth = headers.get("Authorization") or ""
        if auth.lower().startswith("bearer "):
            token = auth[7:].strip()
            user = self.tokens.get(token)
            claims = _claims(token)
            if user and claims and AUDIENCE not in (claims.get("aud") or []):
                raise KFPError(16, f"Unauthenticated: token audience is not {AUDIENCE}")
            if user:
                return user
            raise KFPError(16, "Unauthenticated: the token review did not authenticate it")
        for part in (headers.get("Cookie") or "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE and value in self.cookies:
                return self.cookies[value]
        raise KFPError(
            16, "Unauthenticated: Request header error: there is no user identity header"
        )

    def authorize(self, user: str | None, namespace: str | None, verb: str) -> None:
        if not self.multi_user:
            return
        if not namespace:
            raise KFPError(3, f"Invalid input error: in multi-user mode {verb} needs a namespace")
        if namespace not in self.access.get(user or "", set()):
            raise KFPError(
                7, f"PermissionDenied: user '{user}' may not {verb} in namespace '{namespace}'"
            )

    # -- the API ----------------------------------------------------------------------
    def route(self, method: str, path: str, query: dict, body: dict, user: str | None):
        if method == "GET" and path == "/apis/v2beta1/experiments":
            namespace = query.get("namespace")
            self.authorize(user, namespace, "list experiments")
            wanted = None
            for pred in json.loads(query.get("filter") or "{}").get("predicates", []):
                if pred.get("key") == "display_name":
                    wanted = pred.get("stringValue") or pred.get("string_value")
            found = [
                e
                for e in self.experiments.values()
                if (wanted is None or e["display_name"] == wanted)
                and (not self.multi_user or e.get("namespace") == namespace)
            ]
            return 200, ({"experiments": found, "total_size": len(found)} if found else {})
        if method == "POST" and path == "/apis/v2beta1/experiments":
            if self.multi_user:
                self.authorize(user, body.get("namespace"), "create experiments")
            elif body.get("namespace"):
                raise KFPError(3, "Invalid input error: a standalone KFP takes no namespace")
            exp = {**body, "experiment_id": str(uuid.uuid4())}
            self.experiments[exp["experiment_id"]] = exp
            return 200, exp
        if method == "POST" and path == "/apis/v2beta1/runs":
            exp = self.experiments.get(body.get("experiment_id") or "")
            if exp is None:
                raise KFPError(5, "NotFound: the run's experiment does not exist")
            self.authorize(user, exp.get("namespace"), "create runs")
            run = {**body, "run_id": str(uuid.uuid4()), "state": "PENDING"}
            run["namespace"] = exp.get("namespace") or ""  # kept by the fake, not sent back
            self.runs[run["run_id"]] = run
            return 200, {k: v for k, v in run.items() if k != "namespace"}
        if path.startswith("/apis/v2beta1/runs/"):
            run_id = path.rsplit("/", 1)[1].split(":")[0]
            run = self.runs.get(run_id)
            if run is None:
                raise KFPError(5, f"NotFound: run {run_id}")
            if method == "POST" and path.endswith(":terminate"):
                self.authorize(user, run["namespace"], "terminate runs")
                run["state"] = "CANCELING"
                return 200, {}
            if method == "GET":
                self.authorize(user, run["namespace"], "get runs")
                return 200, {k: v for k, v in run.items() if k != "namespace"}
        raise KFPError(5, f"NotFound: {method} {path}")

    def set_tasks(self, run_id: str, state: str, tasks: dict[str, tuple[str, str | None]]) -> None:
        run = self.runs[run_id]
        run["state"] = state
        run["run_details"] = {
            "task_details": [
                {"display_name": "root-driver", "task_id": "t0", "state": "SUCCEEDED"},
                *(
                    {
                        "display_name": name,
                        "task_id": f"t-{name}",
                        "state": st,
                        **({"error": {"message": err}} if err else {}),
                    }
                    for name, (st, err) in tasks.items()
                ),
            ]
        }

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- running a run: the launcher's part ------------------------------------------------
_PLACEHOLDER = re.compile(
    r"\{\{\$\.(inputs|outputs)\.(parameters|artifacts)\['([^']+)'\](\.path)?\}\}"
)


def _param_text(value, kind: str) -> str:
    """A parameter value as KFP's launcher puts it into a command line (the IR keeps every
    number as a double: an integer parameter is written as one)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if kind == "NUMBER_INTEGER":
        return str(int(value))
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _order(tasks: dict) -> list[str]:
    done: list[str] = []
    while len(done) < len(tasks):
        ready = [n for n, t in sorted(tasks.items()) if n not in done
                 and set(t.get("dependentTasks") or []) <= set(done)]  # fmt: skip
        if not ready:
            raise ValueError(f"the DAG has a cycle among {sorted(set(tasks) - set(done))}")
        done.append(ready[0])
    return done


@dataclass
class TaskRun:
    name: str
    argv: list[str]
    env: dict[str, str]
    returncode: int
    output: str
    outputs: dict[str, Path] = field(default_factory=dict)


def play_run(
    fake: FakeKFP,
    run_id: str,
    s3,
    bucket: str,
    root: Path,
    image_python: Callable[[str, Path], Path],
    secret: Callable[[str], dict[str, bytes]],
    timeout: float = 600,
) -> dict[str, TaskRun]:
    """Run every task of run ``run_id`` (module docstring). ``s3``: a boto3 S3 client of
    the object store the launcher is configured with; ``bucket``: its pipeline root's
    bucket; ``image_python(image, folder)``: a fresh "image" (a venv) whose python runs a
    task; ``secret(name)``: a Secret's data. Moves the run's tasks through their states."""
    run = fake.runs[run_id]
    ir = run["pipeline_spec"]["pipeline_spec"]
    platform = (
        ((run["pipeline_spec"].get("platform_spec") or {}).get("platforms") or {})
        .get("kubernetes", {})
        .get("deploymentSpec", {})
        .get("executors", {})
    )
    params = {k: v.get("defaultValue") for k, v in
              ir["root"].get("inputDefinitions", {}).get("parameters", {}).items()}  # fmt: skip
    params.update((run.get("runtime_config") or {}).get("parameters") or {})
    tasks = ir["root"]["dag"]["tasks"]
    artifacts: dict[tuple[str, str], str] = {}  # (task, output) -> uri
    states: dict[str, tuple[str, str | None]] = {}
    done: dict[str, TaskRun] = {}
    fake.set_tasks(run_id, "RUNNING", {})
    for name in _order(tasks):
        task = tasks[name]
        display = task["taskInfo"]["name"]
        component = ir["components"][task["componentRef"]["name"]]
        label = component["executorLabel"]
        executor = ir["deploymentSpec"]["executors"][label]
        if "importer" in executor:  # the driver records the artifact; no pod
            artifacts[(name, "artifact")] = executor["importer"]["artifactUri"]["constant"]
            states[display] = ("SUCCEEDED", None)
            continue
        pod = root / name
        local: dict[str, Path] = {}

        def where(uri: str, pod=pod) -> Path:  # the launcher's /s3/BUCKET/KEY, in the pod
            assert uri.startswith("s3://"), uri
            return pod / "s3" / uri[len("s3://") :]

        values: dict[str, str] = {}
        kinds = component.get("inputDefinitions", {}).get("parameters", {})
        for key, spec in (task.get("inputs") or {}).get("parameters", {}).items():
            kind = kinds.get(key, {}).get("parameterType", "STRING")
            if "componentInputParameter" in spec:
                values[key] = _param_text(params[spec["componentInputParameter"]], kind)
            else:
                values[key] = _param_text(spec["runtimeValue"]["constant"], kind)
        for key, spec in (task.get("inputs") or {}).get("artifacts", {}).items():
            out = spec["taskOutputArtifact"]
            uri = artifacts[(out["producerTask"], out["outputArtifactKey"])]
            local[("inputs", key)] = target = where(uri)
            loc = uri[len("s3://") :].split("/", 1)
            found = s3.list_objects_v2(Bucket=loc[0], Prefix=loc[1]).get("Contents") or []
            if not found:
                raise FileNotFoundError(f"task {display}: input artifact {uri} is not there")
            for obj in found:  # a file, or every object under a folder's prefix
                rel = os.path.relpath(obj["Key"], loc[1])
                dest = target if rel == "." else target / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(loc[0], obj["Key"], str(dest))
        outputs: dict[str, str] = {}
        for key in component.get("outputDefinitions", {}).get("artifacts", {}):
            uri = f"s3://{bucket}/v2/artifacts/{ir['pipelineInfo']['name']}/{run_id}/{name}/{key}"
            outputs[key] = uri
            local[("outputs", key)] = where(uri)
            where(uri).parent.mkdir(parents=True, exist_ok=True)

        def fill(text: str, values=values, local=local, display=display) -> str:
            def one(m: re.Match) -> str:
                side, kind, key, path = m.groups()
                if kind == "parameters" and side == "inputs" and not path:
                    return values[key]
                if kind == "artifacts" and path:
                    return str(local[(side, key)])
                raise ValueError(f"task {display}: placeholder {m.group(0)} is not played")

            out = _PLACEHOLDER.sub(one, text)
            if "{{$" in out:
                raise ValueError(f"task {display}: unplayed placeholder in {text[:200]!r}")
            return out

        container = executor["container"]
        env: dict[str, str] = {}
        mounts: dict[str, str] = {}
        for vol in (platform.get(label) or {}).get("secretAsVolume") or []:
            name_spec = vol.get("secretNameParameter") or {}
            secret_name = (name_spec.get("runtimeValue") or {}).get("constant") or vol.get(
                "secretName"
            )
            # as the kubelet writes it (0644: kfp-kubernetes sets no defaultMode)
            data = {k: v.decode() for k, v in secret(secret_name).items()}
            folder = kubernetes_secret_volume(pod / "volumes" / secret_name, data)
            mounts[vol["mountPath"].rstrip("/")] = str(folder)
        for item in container.get("env") or []:
            value = item["value"]
            for path, folder in mounts.items():
                value = value.replace(path, folder)
            env[item["name"]] = value
        python = image_python(container["image"], pod / "image")
        home = pod / "home"
        home.mkdir(parents=True, exist_ok=True)
        full_env = {
            "PATH": f"{python.parent}:/usr/bin:/bin",
            "HOME": str(home),  # nbscale's home is the pod's own: ~/.nbscale
            "LANG": "C.UTF-8",
            "PIP_NO_INDEX": "1",  # nothing but what the command names: a pod without an index
            "PIP_FIND_LINKS": "",
            **env,
        }
        argv = [fill(a) for a in [*container["command"], *(container.get("args") or [])]]
        states[display] = ("RUNNING", None)
        fake.set_tasks(run_id, "RUNNING", states)
        proc = subprocess.run(argv, env=full_env, cwd=home, capture_output=True, text=True,
                              timeout=timeout)  # fmt: skip
        result = TaskRun(display, argv, full_env, proc.returncode, proc.stdout + proc.stderr)
        done[display] = result
        if proc.returncode:
            states[display] = ("FAILED", f"exit code {proc.returncode}")
            fake.set_tasks(run_id, "FAILED", states)
            return done
        for key, uri in outputs.items():  # the launcher uploads each output artifact
            path = local[("outputs", key)]
            result.outputs[key] = path
            loc = uri[len("s3://") :].split("/", 1)
            files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
            for f in files:
                rel = "" if f == path else "/" + f.relative_to(path).as_posix()
                s3.upload_file(str(f), loc[0], loc[1] + rel)
            artifacts[(name, key)] = uri
        states[display] = ("SUCCEEDED", None)
        fake.set_tasks(run_id, "RUNNING", states)
    fake.set_tasks(run_id, "SUCCEEDED", states)
    return done
