"""Keeps a local endpoint's router running: the process that owns the endpoint's port.

``python -m nbscale.backends.local.router NAME --daemonize`` lands here. The
supervisor binds the endpoint's port once and hands the listening socket to
each router it starts (``--listen-fd``), so the port stays the endpoint's
while a router is replaced and connections made meanwhile wait in the
listen backlog instead of being refused. A router that dies (a crash, a
``kill -9``) is started again at once; its replicas keep running and the new
router adopts them, so it answers again within a second or two. A router
that dies five times within a minute is restarted with growing pauses. SIGTERM (``undeploy``)
is passed on to the router, which stops its replicas, and then the
supervisor exits. The supervisor imports nothing heavy and does nothing
else, so there is little in it that can fail.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable

from ...errors import NotFound
from ...store import get_store
from ...store.endpoints import FAILED, add_endpoint_event, get_endpoint, update_endpoint
from .processes import create_time

RESTART_WINDOW_S = 60.0
CRASH_LOOP = 5  # deaths within the window before restarts are spaced out


class _Forked:
    """A router forked from this supervisor, waited on like a ``subprocess.Popen``."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is None:
                with contextlib.suppress(ChildProcessError, InterruptedError):
                    _, status = os.waitpid(self.pid, 0)
                    self.returncode = os.waitstatus_to_exitcode(status)
                continue
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout)
            time.sleep(0.02)
        return self.returncode


def _fork_router(run_router: Callable[[int], int], fd: int, log_path: str) -> _Forked:
    """The router in a child of this process, which has imported it already: no second
    interpreter start on a deploy or a restart."""
    import nbscale.store as store_module

    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return _Forked(pid)
    code = 1
    try:
        # the supervisor's SQLite connection stays the supervisor's: the router opens its own
        # (kept referenced, never closed or used here)
        inherited = list(store_module._stores.values())  # noqa: F841
        store_module._stores.clear()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.close(null)
        code = run_router(fd)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - said in the router's log, then the exit code
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def supervise(name: str, run_router: Callable[[int], int] | None = None) -> int:
    """Own the endpoint's port and keep a router running on it: ``run_router(fd)`` in a forked
    child when given (the caller has the router imported), else a new interpreter."""
    store = get_store()
    rec = get_endpoint(store, name)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", rec.port))
    except OSError as exc:
        update_endpoint(
            store, name, "failed", status=FAILED, error=f"port {rec.port} on 127.0.0.1: {exc}"
        )
        return 1
    sock.listen(1024)
    sock.set_inheritable(True)
    me = os.getpid()
    update_endpoint(store, name, None, pid=me, pid_created=create_time(me))
    stopping = False
    child: subprocess.Popen | None = None

    def on_signal(signum, frame):
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    deaths: deque[float] = deque()
    log_path = os.path.join(rec.config["dir"], "router.log")
    while not stopping:
        if run_router is not None:
            child = _fork_router(run_router, sock.fileno(), log_path)
        else:
            with open(log_path, "ab") as log:
                child = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "nbscale.backends.local.router",
                        name,
                        "--listen-fd",
                        str(sock.fileno()),
                    ],
                    pass_fds=(sock.fileno(),),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
        code = child.wait()
        if stopping:
            break
        try:
            rec = get_endpoint(store, name)
        except NotFound:
            break  # undeployed meanwhile
        if rec.status == FAILED or code == 0:
            break  # a deploy that failed (the router said why), or a router stopped on purpose
        now = time.monotonic()
        deaths.append(now)
        while deaths and deaths[0] < now - RESTART_WINDOW_S:
            deaths.popleft()
        add_endpoint_event(store, name, "router_restart", {"returncode": code})
        update_endpoint(store, name, None, restarts=rec.restarts + 1)
        if len(deaths) >= CRASH_LOOP:  # crash-looping: pause before the next try, longer each time
            pause_until = now + min(30.0, 2.0 ** (len(deaths) - CRASH_LOOP + 1))
            while not stopping and time.monotonic() < pause_until:
                time.sleep(0.1)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(30)
    sock.close()
    return 0
