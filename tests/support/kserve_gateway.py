"""Kubeflow's ingress gateway in front of an InferenceService's external URL (``status.url``).

On a Kubeflow install the external host goes through the Istio ingress gateway and the
auth proxy (oidc-authservice / oauth2-proxy with Dex): a request without the session
cookie is answered with a redirect to Dex's login page, never reaching the predictor.
With the cookie it is forwarded, headers and body as they came. Listens on 127.0.0.1.
"""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COOKIE = "authservice_session"
HOP = {"connection", "keep-alive", "transfer-encoding", "host", "content-length"}


class Gateway:
    def __init__(
        self,
        backend: tuple[str, int],
        sessions: set[str] | None = None,
        bearers: set[str] | None = None,
    ) -> None:
        """``sessions``: the session cookie values the auth proxy accepts; None: no auth
        proxy (a cluster without Dex). ``bearers``: the ID tokens it also accepts as
        ``Authorization: Bearer`` (oauth2-proxy's ``--skip-jwt-bearer-tokens``), a request
        then passed on with its headers unchanged."""
        self.backend = backend
        self.sessions = sessions
        self.bearers = bearers or set()
        self.forwarded = 0
        self.redirected = 0
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _authenticated(self) -> bool:
                if gateway.sessions is None:
                    return True
                scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
                if scheme == "Bearer" and token in gateway.bearers:
                    return True
                for part in (self.headers.get("Cookie") or "").split(";"):
                    name, _, value = part.strip().partition("=")
                    if name == COOKIE and value in gateway.sessions:
                        return True
                return False

            def _handle(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else None
                if not self._authenticated():
                    gateway.redirected += 1
                    page = b"<html>Found</html>"
                    self.send_response(302)
                    self.send_header("Location", "/dex/auth?client_id=kubeflow-oidc-authservice")
                    self.send_header("Content-Length", str(len(page)))
                    self.end_headers()
                    self.wfile.write(page)
                    return
                gateway.forwarded += 1
                conn = http.client.HTTPConnection(*gateway.backend, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                self.send_response(resp.status)
                for key, value in resp.getheaders():
                    if key.lower() not in HOP:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _handle  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
