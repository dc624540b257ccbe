"""A pool of kernels started ahead of time, each used by exactly one step.

papermill starts a kernel per notebook (about a second). Here kernels start
in the background while earlier steps run, and a step takes one that is
already up. A kernel is never reused: a step always starts from a clean
namespace, and the kernel is killed when the step ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import types
from collections import deque
from typing import Any

from .. import lazy_grammar
from ..cpus import allowed_cpus
from .warm import WARMUP_MODULES

STARTUP_TIMEOUT = 120
RECONNECT_MS = 10  # how often a booting kernel's client retries to connect (see PooledKernel)
WARMUP = (
    "import importlib.util as _u\n"
    f"for _m in {WARMUP_MODULES!r}:\n"
    "    _u.find_spec(_m) and __import__(_m)\n"
    "del _u, _m"
)


async def handshake(client, km, timeout: float, poll: float = 0.25) -> None:
    """Wait until the kernel answers and our iopub subscription receives its status messages.

    Like ``wait_for_ready`` without its fixed 0.2 s drain of iopub at the end: the idle
    status of our own kernel_info request proves both channels work.
    """
    import time
    from queue import Empty

    deadline = time.monotonic() + timeout
    sent: set[str] = set()  # a late answer to an earlier request proves the channels as well
    while True:
        sent.add(client.kernel_info())
        try:
            while True:
                msg = await client.get_iopub_msg(timeout=poll)
                if (
                    msg["parent_header"].get("msg_id") in sent
                    and msg["msg_type"] == "status"
                    and msg["content"].get("execution_state") == "idle"
                ):
                    return
        except (Empty, TimeoutError):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the kernel did not answer within {timeout:g} s") from None
            if not await km.is_alive():
                raise RuntimeError("the kernel died while starting") from None


async def _until_idle(client, km, msg_id: str, timeout: float) -> None:
    """Wait for the kernel to go idle after the last request (its iopub status message), or
    until it dies (killed while warming up)."""
    import time
    from queue import Empty

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msg = await client.get_iopub_msg(timeout=0.5)
        except (Empty, TimeoutError):
            if not await km.is_alive():
                raise RuntimeError("the kernel died while warming up") from None
            continue
        if (
            msg["parent_header"].get("msg_id") == msg_id
            and msg["msg_type"] == "status"
            and msg["content"].get("execution_state") == "idle"
        ):
            return


class PooledKernel:
    def __init__(
        self, kernel_name: str, cwd: str, env: dict[str, str], prespawned: Any = None
    ) -> None:
        """``prespawned``: its process, already started for this kernel, folder and environment
        (``kernel_spawn``); its start then only waits for the kernel to answer."""
        from ..kernel_transport import kernel_sockets

        # Unix sockets and the connection file in a private folder: nothing listens on TCP
        self._sockets = kernel_sockets(kernel_name, prespawned)
        self.km = self._sockets.km
        self.cwd = cwd
        self.env = env
        self.ready = threading.Event()
        self.spawned = threading.Event()  # its process exists (or its start failed)
        self.error: BaseException | None = None
        self.doomed = False  # killed before its process existed: kill it as soon as it does
        self.taken = False  # a step waits for it: skip the warm-up
        self.warm: dict[str, Any] | None = None  # the registry entry, for a kernel kept warm

    @classmethod
    def adopt(cls, entry: dict[str, Any], kernel_name: str, cwd: str) -> PooledKernel:
        """A warm kernel a keeper started (``warm``), claimed by this run: up and warmed up."""
        from ..kernel_transport import KernelSockets
        from .warm import adopted_manager

        kernel = cls.__new__(cls)
        kernel.km = adopted_manager(entry, kernel_name)
        kernel._sockets = KernelSockets(kernel.km, "ipc", entry.get("folder"))
        kernel.cwd, kernel.env = cwd, {}
        kernel.ready, kernel.spawned = threading.Event(), threading.Event()
        kernel.ready.set()
        kernel.spawned.set()
        kernel.error, kernel.doomed, kernel.taken, kernel.warm = None, False, False, entry
        return kernel

    def start(
        self, gate: threading.Semaphore | None = None, after: threading.Event | None = None
    ) -> None:
        try:
            if after is not None:
                after.wait(STARTUP_TIMEOUT)
            if self.doomed:  # the run ended while this kernel waited to start: none is started
                return
            if gate is None:
                asyncio.run(self._start())
            else:
                with gate:
                    asyncio.run(self._start())
        except BaseException as exc:  # reported to whoever takes the kernel
            self.error = exc
        finally:
            if self.doomed:
                self.kill()
            self.spawned.set()
            self.ready.set()

    async def _start(self) -> None:
        import zmq

        await self.km.start_kernel(cwd=self.cwd, env=self.env)
        self.spawned.set()
        if self.doomed:  # killed while its process was being started: ``start`` kills it now
            return
        client = self.km.client()
        # the kernel binds its sockets only once it has booted; until then each of ours retries
        # its connect every RECONNECT_IVL (zmq's default 100 ms, so up to 0.1 s after the
        # kernel is up); this client's own context makes its sockets retry every 10 ms
        client.context.setsockopt(zmq.RECONNECT_IVL, RECONNECT_MS)
        client.start_channels()
        try:
            await handshake(client, self.km, STARTUP_TIMEOUT, poll=0.1)
            if not self.taken:
                # load what every step's load/save cells use while nobody waits; silent, so the
                # user namespace, history and execution count stay untouched
                msg_id = client.execute(WARMUP, silent=True, store_history=False)
                await _until_idle(client, self.km, msg_id, STARTUP_TIMEOUT)
        finally:
            client.stop_channels()

    def remove_folder(self) -> None:
        """Remove the folder of the kernel's sockets and connection file (once it is killed)."""
        self._sockets.remove()

    @property
    def pid(self) -> int | None:
        provisioner = getattr(self.km, "provisioner", None)
        return getattr(provisioner, "pid", None)

    def kill(self) -> None:
        """Kill the kernel and everything it started (joblib workers, dataloaders)."""
        import psutil

        self.doomed = True
        pid = self.pid
        if pid and self.warm is not None:
            from .warm import process_state

            # not this process's child: its pid may belong to another process once it is reaped
            if process_state(pid, self.warm.get("started")) == "gone":
                return
        if pid:
            try:
                proc = psutil.Process(pid)
                for p in [*proc.children(recursive=True), proc]:
                    p.kill()
            except psutil.Error:
                pass

    def close(self, background: bool = False) -> threading.Thread | None:
        """Kill the kernel now; reaping it and removing its files may go on in the background
        (the thread doing so is returned: join it before the process ends)."""
        self.kill()
        if background:
            reaper = threading.Thread(target=self._cleanup, name="nbscale-kernel-reap", daemon=True)
            reaper.start()
            return reaper
        self._cleanup()
        return None

    def _cleanup(self) -> None:
        process = getattr(getattr(self.km, "provisioner", None), "process", None)
        with contextlib.suppress(Exception):  # best effort: the process was killed already
            if process is not None:
                process.wait(10)  # reap it: no zombie left behind
            asyncio.run(self.km.cleanup_resources())
        self.remove_folder()


class KernelPool:
    """Keeps up to ``size`` kernels starting or ready, for the working directories asked for."""

    def __init__(self, size: int, kernel_name: str = "python3", env: dict[str, str] | None = None):
        self.size = max(1, size)
        self.kernel_name = kernel_name
        self.env = {**os.environ, **(env or {})}
        self._lock = threading.Lock()
        self._waiting: deque[str] = deque()  # cwds of steps expected to need a kernel
        self._spare: list[PooledKernel] = []
        self._busy: set[PooledKernel] = set()  # handed to a step; killed too if the run stops
        self._reapers: list[threading.Thread] = []  # released kernels being reaped, folders removed
        self._closed = False
        # a kernel start is mostly CPU (imports): starting several at once on a small machine
        # makes the first one, which a step waits for, late; so the first starts alone and the
        # rest follow, a few at a time, once the first step's cells run on it: until then the
        # runner's own work (papermill's import, reading and parameterizing the notebook) is
        # what the first step waits for, and booting kernels would take its cores
        self._gate = threading.Semaphore(max(2, allowed_cpus() // 2))
        self._first_spawned: threading.Event | None = None
        self._running = threading.Event()  # a step's notebook runs on its kernel (or one ended)
        self._loaded = threading.Event()  # papermill imported, engine registered, schema compiled
        self._preloading = False

    def adopt(self, kernel: PooledKernel) -> None:
        """A warm kernel from between runs, for the first step: nothing to boot first, so
        papermill's import starts at once, and the run's own kernels start once the first step
        runs on this one (imports hold the GIL; the first step waits for that import now)."""
        with self._lock:
            self._spare.insert(0, kernel)
            if self._first_spawned is None:
                self._first_spawned = kernel.spawned

    def running(self) -> None:
        """A step's notebook runs on its kernel now (its cells are sent), or a step ended: the
        kernels for later steps may start."""
        self._running.set()

    @staticmethod
    def import_client() -> None:
        """Import jupyter_client on the calling thread, before any other thread needs it: two
        threads importing its circular modules at once can see a half-initialised module
        ("cannot import name 'AsyncKernelManager' ... partially initialized module")."""
        import jupyter_client.asynchronous  # noqa: F401
        import jupyter_client.manager  # noqa: F401

    def preload(self) -> None:
        """Import papermill and nbclient, and compile the notebook schema's validator, in the
        background once the first kernel's process is spawned: imports hold the GIL, and the
        kernel starting first is what a step waits for."""
        self.import_client()
        lazy_grammar.defer()
        self._preloading = True

        def load() -> None:
            self.wait_first_spawn()
            try:
                with contextlib.suppress(Exception):
                    register_engine()
                    compile_validator()
            finally:
                self._loaded.set()

        threading.Thread(target=load, name="nbscale-preload", daemon=True).start()

    def wait_loaded(self) -> None:
        """Until ``preload`` is done (at once where it was not started): a step that found
        papermill half imported would otherwise compile the validator a second time."""
        if self._preloading:
            self._loaded.wait(STARTUP_TIMEOUT)

    def wait_first_spawn(self) -> None:
        """Until the first kernel's process exists (its start is what the first step waits for)."""
        with self._lock:
            first = self._first_spawned
        if first is not None:
            first.wait(STARTUP_TIMEOUT)

    def expect(self, cwds: list[str]) -> None:
        """Steps in these directories will run soon: start kernels for as many as the pool holds."""
        with self._lock:
            self._waiting.extend(cwds)
        self._fill()

    def _fill(self) -> None:
        with self._lock:
            while not self._closed and self._waiting and len(self._spare) < self.size:
                kernel = PooledKernel(self.kernel_name, self._waiting.popleft(), self.env)
                self._spare.append(kernel)
                after: threading.Event | None = self._running
                if self._first_spawned is None:  # the first kernel of the run starts at once
                    after = None
                    self._first_spawned = kernel.spawned
                threading.Thread(
                    target=kernel.start,
                    args=(self._gate, after),
                    name="nbscale-kernel-start",
                    daemon=True,
                ).start()

    def take(self, cwd: str) -> PooledKernel:
        """A started kernel for ``cwd`` (waits for it), or a new one when none was expected."""
        with self._lock:
            kernel = next(
                (k for k in self._spare if k.cwd == cwd and k.ready.is_set() and not k.error), None
            )
            kernel = kernel or next((k for k in self._spare if k.cwd == cwd), None)
            if kernel is not None:
                self._spare.remove(kernel)
                kernel.taken = True
            elif cwd in self._waiting:
                self._waiting.remove(cwd)
        if kernel is None:
            kernel = PooledKernel(self.kernel_name, cwd, self.env)
            kernel.taken = True
            kernel.start()
        with self._lock:
            self._busy.add(kernel)
        self._fill()
        kernel.ready.wait(STARTUP_TIMEOUT + 10)
        if self._closed or kernel.doomed:
            self.release(kernel)
            raise RuntimeError("the run was stopped before this step started")
        if kernel.error is not None:
            self.running()  # no step runs on it: the later kernels must not wait for one
            kernel.close()
            raise RuntimeError(
                f"the kernel {self.kernel_name!r} did not start: {kernel.error}"
            ) from kernel.error
        return kernel

    def release(self, kernel: PooledKernel) -> None:
        self.running()  # a step that failed before its cells ran lets the later kernels start too
        with self._lock:
            self._busy.discard(kernel)
            closed = self._closed
        # once the pool is closed nobody joins reapers: a step that ends then cleans up itself
        reaper = kernel.close(background=not closed)
        with self._lock:
            self._reapers = [t for t in self._reapers if t.is_alive()]
            if reaper is not None:
                self._reapers.append(reaper)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            spare, self._spare = self._spare, []
            busy, self._busy = self._busy, set()
            self._waiting.clear()
        for kernel in spare:
            if not kernel.spawned.is_set():
                kernel.doomed = True  # still waiting to start: it never starts (or dies at once)
        self.running()  # the starts that wait for it see that at once
        for kernel in busy:  # steps still running when the run stops: their papermill call fails
            kernel.kill()
            # its folder now: a run stopped by SIGTERM may not live to see the step release it
            kernel.remove_folder()
        for kernel in spare:
            kernel.ready.wait(STARTUP_TIMEOUT + 10)
            kernel.close()
        # the released kernels were killed already: their reaping is quick, and it removes their
        # socket folders, which a daemon thread cut short at exit would leave in the temp folder
        with self._lock:
            reapers, self._reapers = self._reapers, []
        for reaper in reapers:
            reaper.join(15)


# modules papermill imports as it is imported and uses only through calls a runner never makes:
# the optional storage handlers boto3 (s3://, 0.1 s) and pyarrow.fs (hdfs://, 0.1 s), requests
# (http:// notebooks, 0.05-0.1 s) and click (its command line's help, 0.04 s); a runner reads
# and writes local files. module -> (package, papermill extra) for the missing-dependency message
DEFERRED_BY_PAPERMILL = {
    "papermill.s3": ("boto3", "s3"),
    "pyarrow.fs": ("pyarrow", "hdfs"),
    "requests": (None, None),
    "click": (None, None),
}


# papermill's entry-point groups for third-party engines and I/O handlers (see below)
UNUSED_BY_RUNNERS = ("papermill.engine", "papermill.io")


class _Deferred:
    """A name of a module not imported yet, imported at its first call (papermill only calls
    these names)."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        import importlib

        try:
            target = getattr(importlib.import_module(self.module), self.name)
        except ImportError:
            package, extra = DEFERRED_BY_PAPERMILL[self.module]
            if package is not None:
                from papermill.exceptions import missing_dependency_generator

                missing_dependency_generator(package, extra)()
            raise
        return target(*args, **kwargs)


class _StandIn(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Deferred(self.__name__, name)


@contextlib.contextmanager
def _optional_io_deferred():
    """While papermill is imported, the modules above (those not imported yet) are stand-ins
    whose names import the real module when called; they leave ``sys.modules`` afterwards, so
    any later import of them is the real one. An s3://, hdfs:// or http:// path still works
    (or fails with papermill's own missing-dependency message)."""
    import sys

    placed = []
    for module in DEFERRED_BY_PAPERMILL:
        if module in sys.modules:
            continue
        sys.modules[module] = _StandIn(module)
        placed.append(module)
    # papermill asks entrypoints for two groups as it is imported, its plugins' engines and
    # I/O handlers, and each ask reads every installed distribution's entry points (25-85 ms
    # each here). A runner uses neither: it executes with its own engine (registered below)
    # and reads and writes local files only; so it reads none. Another group is read once.
    import entrypoints

    original = entrypoints.get_group_all
    read: dict[str, list[Any]] = {}

    def get_group_all(group: str, path: Any = None) -> list[Any]:
        if path is not None:
            return original(group, path)
        if group in UNUSED_BY_RUNNERS:
            return []
        if not read:
            read[""] = []
            for config, distro in entrypoints.iter_files_distros():
                for section in config.sections():
                    for name, spec in config[section].items():
                        with entrypoints.BadEntryPoint.err_to_warnings():
                            ep = entrypoints.EntryPoint.from_string(spec, name, distro)
                            read.setdefault(section, []).append(ep)
        return list(read.get(group, []))

    entrypoints.get_group_all = get_group_all
    try:
        yield
    finally:
        entrypoints.get_group_all = original
        for module in placed:
            if isinstance(sys.modules.get(module), _StandIn):
                del sys.modules[module]


def inside_a_shell() -> bool:
    """Whether this process is a user's kernel or IPython shell (a ``%pipeline run``
    in-process), where the user's own threads run beside the runner. ``ipykernel`` being
    imported proves nothing: jupyter_client imports ``ipykernel.kernelspec`` to look up the
    native kernel's spec, as every run does for its kernels' environment key."""
    import sys

    shell = getattr(sys.modules.get("IPython.core.interactiveshell"), "InteractiveShell", None)
    if shell is not None and shell.initialized():
        return True
    app = getattr(sys.modules.get("ipykernel.kernelapp"), "IPKernelApp", None)
    return app is not None and app.initialized()


def compile_validator() -> None:
    """Compile the notebook schema's validator for the step notebooks' format version now:
    nbformat compiles it at its first validation (about 50 ms), and papermill validates the
    notebook as it reads it, so otherwise the first step pays it."""
    from nbformat.validator import get_validator

    from .stepbook import NBFORMAT, NBFORMAT_MINOR

    get_validator(NBFORMAT, NBFORMAT_MINOR)


def register_engine() -> str:
    """A papermill engine that executes on a kernel the pool started, and kills it afterwards."""
    import atexit
    import sys

    lazy_grammar.defer()  # before papermill imports jsonschema (see lazy_grammar)
    if "papermill" not in sys.modules:
        # stand-ins in sys.modules are seen by every thread: inside a user's kernel (a
        # %pipeline run in-process) another thread may import requests meanwhile, so there
        # papermill is imported plainly; a CLI or detached runner does nothing else meanwhile
        deferring = _optional_io_deferred() if not inside_a_shell() else None
        with deferring or contextlib.nullcontext():
            import papermill  # noqa: F401
    from jupyter_core.utils import ensure_async, run_sync
    from nbclient.util import run_hook
    from papermill.clientwrap import PapermillNotebookClient
    from papermill.engines import NBClientEngine, papermill_engines

    class PooledClient(PapermillNotebookClient):
        on_running: Any = None  # called once the kernel answers, before the cells are sent

        async def async_start_new_kernel_client(self):
            """Connect to the pooled kernel, which is known to be up, without ``wait_for_ready``'s
            fixed 0.2 s drain (see ``handshake``)."""
            self.kc = self.km.client()
            await ensure_async(self.kc.start_channels())
            # the kernel_info replies left on the shell channel are skipped by nbclient (other msg_id)
            await handshake(self.kc, self.km, self.startup_timeout, poll=0.1)
            self.kc.allow_stdin = False
            if self.on_running is not None:
                self.on_running()  # its cells are sent next: the pool starts the later kernels
            await run_hook(self.on_notebook_start, notebook=self.nb)
            return self.kc

        # papermill enters the kernel through the sync wrapper, made from the base class's coroutine
        start_new_kernel_client = run_sync(async_start_new_kernel_client)

    class PooledEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(
            cls,
            nb_man,
            kernel_name,
            log_output=False,
            stdout_file=None,
            stderr_file=None,
            start_timeout=60,
            execution_timeout=None,
            **kwargs: Any,
        ):
            client = PooledClient(
                nb_man,
                km=kwargs.pop("km"),
                kernel_name=kernel_name,
                timeout=execution_timeout,
                startup_timeout=start_timeout,
                shutdown_kernel="immediate",
                log_output=log_output,
                stdout_file=stdout_file,
                stderr_file=stderr_file,
            )
            client.on_running = kwargs.pop("on_running", None)
            try:
                # the kernel is killed by its PooledKernel, without the 0.1 s of a managed shutdown
                return client.execute(cleanup_kc=False)
            finally:
                atexit.unregister(client._cleanup_kernel)
                if client.kc is not None:
                    client.kc.stop_channels()

    papermill_engines.register("nbscale-pooled", PooledEngine)
    return "nbscale-pooled"
