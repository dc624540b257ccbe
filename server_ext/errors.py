"""The one place where exceptions become HTTP answers.

Handlers never catch engine errors themselves: they let them rise, and
``NbscaleHandler.write_error`` asks ``translate`` for the status and body. So
bad input is a 400 with a message, never a 500, and no verb repeats the mapping.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError
from tornado import httputil
from tornado.web import HTTPError

from nbscale.errors import (
    BackendUnavailable,
    Conflict,
    NbscaleError,
    NotFound,
    SpecError,
    WaitTimeout,
)
from nbscale.store import StoreError

# order matters: subclasses before their bases
_STATUS: tuple[tuple[type[BaseException], int, str], ...] = (
    (SpecError, 400, "bad_request"),
    (NotFound, 404, "not_found"),
    (Conflict, 409, "conflict"),
    (BackendUnavailable, 502, "backend_unavailable"),
    (StoreError, 503, "store_unavailable"),  # disk full, store locked too long: not the request
    # a wait (a deploy, a job, a cancel) whose target is not done within it: not a bad request
    (WaitTimeout, 504, "timeout"),
    (NbscaleError, 400, "bad_request"),
    # a cancel whose target has not stopped within the wait: not a bug, just not done yet
    (TimeoutError, 504, "timeout"),
)


class BadRequest(SpecError):
    """Bad input caught in the handler layer (query strings, paths, JSON)."""


def _validation_message(exc: ValidationError) -> str:
    """Every problem with its field and the value sent, then where the fields are described."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ())) or "body"
        kind = err.get("type", "")
        if kind == "extra_forbidden":
            parts.append(f"{where}: is not a field of this request")
            continue
        if kind == "missing":
            parts.append(f"{where}: is required")
            continue
        text = f"{where}: {err.get('msg', 'invalid')}"
        if "input" in err:
            shown = repr(err["input"])
            text += f", got {shown if len(shown) <= 40 else shown[:37] + '...'}"
        parts.append(text)
    return "; ".join(parts) + " (the fields and their limits are in server_ext/openapi.json)"


def translate(exc: BaseException | None, fallback_status: int = 500) -> tuple[int, dict[str, Any]]:
    """``(status, {"error": kind, "message": text})`` for any exception a handler let through."""
    if isinstance(exc, ValidationError):
        return 400, {"error": "bad_request", "message": _validation_message(exc)}
    if isinstance(exc, json.JSONDecodeError):
        return 400, {
            "error": "bad_request",
            "message": f"the request body is not valid JSON: {exc.msg}",
        }
    for kind, status, name in _STATUS:
        if isinstance(exc, kind):
            body: dict[str, Any] = {"error": name, "message": str(exc)}
            if isinstance(exc, SpecError):
                body["field"] = exc.field
            return status, body
    if isinstance(exc, HTTPError):
        return exc.status_code, {
            "error": "http_error",
            "message": http_message(exc.status_code, exc.log_message or exc.reason),
        }
    return fallback_status, {
        "error": "internal",
        "message": "nbscale hit an unexpected error; the server log has the traceback",
    }


# what to do about the answers tornado and jupyter_server give before a verb runs
_HTTP_HINTS = {
    401: "sign in: send the Jupyter server's token as 'Authorization: token TOKEN'",
    403: "send the Jupyter server's token as 'Authorization: token TOKEN' (or, from a "
    "browser, the _xsrf cookie); a signed-in user without the permission needs it granted",
    404: "the routes are listed in server_ext/openapi.json",
    405: "this route does not take that method; the methods are listed in server_ext/openapi.json",
}


def http_message(status: int, message: str | None = None) -> str:
    """A message for a bare HTTP error: what happened and what to do."""
    text = message or httputil.responses.get(status, f"HTTP {status}")
    hint = _HTTP_HINTS.get(status)
    return f"{text} ({hint})" if hint else text


def is_expected(exc: BaseException | None) -> bool:
    """Errors a user caused: not worth a traceback in the server log."""
    return isinstance(exc, NbscaleError | ValidationError | json.JSONDecodeError | HTTPError)
