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
"""

from __future__ import annotations

import base64
import json
import threading
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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
