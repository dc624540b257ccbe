"""Errors a user can cause, each with a message that says what to do.

The engine only names the *kind* of problem; the faces decide how to show it
(the CLI prints one line, the server maps the kind to an HTTP status in
``nbscale.server_ext.errors``, the magics print the message without traceback).
"""

from __future__ import annotations


class NbscaleError(Exception):
    """Base class: ``str(err)`` is the whole user-facing message."""

    def __init__(self, message: str, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class SpecError(NbscaleError, ValueError):
    """A field of a spec or an argument has a bad value."""

    def __init__(self, field: str, problem: str, hint: str | None = None):
        self.field = field
        super().__init__(f"{field}: {problem}", hint)


class NotFound(NbscaleError, LookupError):
    """A job, endpoint, pipeline run or backend that does not exist."""


class Conflict(NbscaleError):
    """The request clashes with the current state (name taken, job already ended)."""


class BackendUnavailable(NbscaleError):
    """A backend cannot be reached or is missing a dependency."""


class MissingDependency(BackendUnavailable):
    def __init__(self, module: str, extra: str):
        super().__init__(
            f"this needs the Python package '{module}', which is not installed",
            f"run: pip install 'nbscale[{extra}]'",
        )
        self.module = module
        self.extra = extra


class JobFailed(NbscaleError):
    """Raised by ``Job.result()``/``Job.wait(raise_on_failure=True)`` when a job failed."""

    def __init__(self, message: str, rank: int | None = None, traceback: str | None = None):
        self.rank = rank
        self.remote_traceback = traceback
        super().__init__(message)


class SignatureError(NbscaleError):
    """A bundle or result whose HMAC does not match; nothing was unpickled."""


class WaitTimeout(NbscaleError, TimeoutError):
    """A wait (a job to end, an endpoint to serve) that ran out of time: what was waited for,
    the state it was last seen in, and what to do. Still a ``TimeoutError``."""

    def __init__(
        self,
        what: str,
        state: str,
        timeout: float,
        hint: str | None = None,
        detail: str | None = None,
    ):
        self.what = what
        self.state = state
        self.timeout = timeout
        self.detail = detail
        message = f"{what} is still {state} after {timeout:g} s"
        super().__init__(f"{message} ({detail})" if detail else message, hint)
