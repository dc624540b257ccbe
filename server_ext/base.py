"""The base every nbscale handler shares: authentication, bodies, the error translator.

Engine calls block (SQLite, process tables, backend SDKs), so handlers run
them on the extension's thread pool with ``await self.call(...)``; the
server's event loop never waits on them.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from pydantic import BaseModel
from tornado import web

from nbscale.errors import NotFound

from .errors import BadRequest, http_message, is_expected, translate

M = TypeVar("M", bound=BaseModel)

AUTH_RESOURCE = "nbscale"
MAX_PATH = 4096  # PATH_MAX on Linux
MAX_NAME = 255  # NAME_MAX


class NbscaleHandler(ExtensionHandlerMixin, APIHandler):
    auth_resource = AUTH_RESOURCE

    @property
    def app(self):  # the NbscaleExtension
        return self.extensionapp

    async def prepare(self, *args: Any, **kwargs: Any) -> None:
        await super().prepare(*args, **kwargs)
        # an id never holds '..' (nothing may look like a parent folder); only a signed-in
        # user learns this, everyone else gets the verb's 403
        if self.current_user and any(".." in str(v) for v in self.path_kwargs.values()):
            raise NotFound(
                f"no such id: {self.request.path.rsplit('/', 1)[-1][:80]!r}",
                "ids use letters, digits, '.', '_' and '-' and never '..'",
            )

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await self.app.run_blocking(functools.partial(fn, *args, **kwargs))

    def query(self, model: type[M]) -> M:
        """The query string as ``model`` (unknown or malformed arguments are a 400)."""
        raw = {k: self.get_query_argument(k) for k in self.request.query_arguments}
        raw = {k: (v if v != "" else None) for k, v in raw.items()}
        if "offset" in raw and "after" in model.model_fields:
            raise BadRequest(
                "offset",
                "is not taken: lists page by cursor",
                "leave it out for the first page, then send each page's 'next' as ?after=",
            )
        return model.model_validate({k: v for k, v in raw.items() if v is not None})

    def body(self, model: type[M]) -> M:
        if not self.request.body:
            raise BadRequest("body", "is empty", "send a JSON object")
        try:
            text = self.request.body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadRequest(
                "body",
                f"is not valid UTF-8 (byte {exc.start})",
                "send the JSON object encoded as UTF-8",
            ) from None
        try:
            data = json.loads(text)
        except RecursionError:
            raise BadRequest(
                "body", "is nested too deeply", "send a flat JSON object of the documented fields"
            ) from None
        if not isinstance(data, dict):
            raise BadRequest("body", f"must be a JSON object, got {type(data).__name__}")
        return model.model_validate(data)

    def reply(self, model: BaseModel, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(model.model_dump_json())

    def notebook_path(self, relative: str, suffixes: tuple[str, ...] = (".ipynb",)) -> str:
        """An absolute path inside the server root; anything outside it is refused."""
        root = Path(self.app.root_dir).resolve()
        if "\0" in relative:
            raise BadRequest("path", "contains a NUL character", "send the notebook's path")
        if len(relative) > MAX_PATH or any(len(part) > MAX_NAME for part in relative.split("/")):
            raise BadRequest(
                "path",
                f"is too long ({len(relative)} characters)",
                f"paths have at most {MAX_PATH} characters and {MAX_NAME} per name",
            )
        try:
            target = (root / relative.lstrip("/")).resolve()
        except (OSError, RuntimeError) as exc:  # a symlink loop, a name the OS refuses
            raise BadRequest("path", f"cannot be used: {exc.strerror or exc}") from None
        if not target.is_relative_to(root):
            raise BadRequest("path", f"{relative!r} is outside the server's root directory")
        if target.suffix not in suffixes:
            raise BadRequest("path", f"{relative!r} is not a {' or '.join(suffixes)} file")
        if not target.is_file():
            raise BadRequest("path", f"{relative!r} does not exist", "save the notebook first")
        return str(target)

    # -- the error translator's hook: tornado calls these for anything a verb raised
    def log_exception(self, typ, value, tb) -> None:
        if is_expected(value):
            self.log.info("nbscale %s %s: %s", self.request.method, self.request.path, value)
        else:
            super().log_exception(typ, value, tb)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        status, body = translate(exc, fallback_status=status_code)
        if exc is None:
            body = {"error": "http_error", "message": http_message(status_code, self._reason)}
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))


authenticated = web.authenticated
