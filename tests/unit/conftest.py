"""The unit tier's rule: a unit test starts no process and opens no network listener.

While a unit test (its fixtures included) runs, starting a process (``subprocess``, ``os.fork``,
``os.posix_spawn``, ``os.system``, a ``multiprocessing`` process) or binding/listening on an
AF_INET/AF_INET6 socket raises ``UnitTierViolation``, and the test fails even where the code
under test swallowed the error. A test that needs a process, a server, a kernel or a venv belongs
in tests/integration (or tests/contract for a platform's container command). Files, temporary
folders and SQLite stores are fine: they are what unit tests are for.
"""

from __future__ import annotations

import contextlib
import multiprocessing.process
import os
import posix
import socket
import subprocess

import pytest

RULE = "unit tests start no process / open no listener: move this test to tests/integration"
_INET = (socket.AF_INET, socket.AF_INET6)
_PROCESS_STARTERS = ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system")


class UnitTierViolation(RuntimeError):
    pass


# matplotlib's first import on a machine builds its font cache by asking fontconfig (``fc-list``,
# a subprocess): a library's one-time set-up, not a process a test starts. Done here, before any
# test runs under the rule; without it the unit tier failed on a fresh machine, where the plots'
# test was the first to import matplotlib.
with contextlib.suppress(ImportError):
    import matplotlib.font_manager  # noqa: F401


_depth = 0
_saved: list[tuple[object, str, object]] = []
_violations: list[str] = []


def _refuse(what: str, original):
    def refused(*args, **kwargs):
        _violations.append(what)
        raise UnitTierViolation(f"{what}: {RULE}")

    # the stand-in pickles as the original does (a test may pickle os.system in a payload it
    # expects to be refused): same module and name, and that module holds the stand-in
    for attr in ("__module__", "__name__", "__qualname__"):
        setattr(refused, attr, getattr(original, attr, what))
    return refused


def _install() -> None:
    def patch(owner, name: str, new) -> None:
        _saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, new)

    patch(
        subprocess.Popen,
        "_execute_child",
        _refuse("subprocess.Popen", subprocess.Popen._execute_child),
    )
    for name in _PROCESS_STARTERS:
        if hasattr(os, name):
            refused = _refuse(f"os.{name}", getattr(os, name))
            patch(os, name, refused)
            patch(posix, name, refused)
    patch(
        multiprocessing.process.BaseProcess,
        "start",
        _refuse("multiprocessing start", multiprocessing.process.BaseProcess.start),
    )
    bind, listen = socket.socket.bind, socket.socket.listen

    def guarded_bind(self, *args, **kwargs):
        if self.family in _INET:
            _violations.append("socket.bind")
            raise UnitTierViolation(f"socket.bind: {RULE}")
        return bind(self, *args, **kwargs)

    def guarded_listen(self, *args, **kwargs):
        if self.family in _INET:
            _violations.append("socket.listen")
            raise UnitTierViolation(f"socket.listen: {RULE}")
        return listen(self, *args, **kwargs)

    patch(socket.socket, "bind", guarded_bind)
    patch(socket.socket, "listen", guarded_listen)


def _uninstall() -> None:
    while _saved:
        owner, name, original = _saved.pop()
        setattr(owner, name, original)


@contextlib.contextmanager
def no_process_no_listener():
    """Re-entrant: the rule is in force from the outermost enter to the matching exit."""
    global _depth
    if _depth == 0:
        _install()
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            _uninstall()


@pytest.fixture(autouse=True)
def unit_tier_rule():
    """Every unit test runs under the rule."""
    with no_process_no_listener():
        yield


# Fixtures scoped wider than a function are set up before any autouse function fixture and torn
# down after it: the setup and teardown phases of a unit test run under the rule as well.
@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    _violations.clear()
    with no_process_no_listener():
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """A violation the code under test caught (and carried on from) still fails the test."""
    result = yield
    if _violations:
        pytest.fail(f"{_violations[0]} (caught by the code under test): {RULE}", pytrace=False)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item):
    with no_process_no_listener():
        return (yield)
