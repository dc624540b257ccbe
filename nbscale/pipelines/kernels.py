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
import tempfile
import threading
from collections import deque
from typing import Any

STARTUP_TIMEOUT = 120


class PooledKernel:
    def __init__(self, kernel_name: str, cwd: str, env: dict[str, str]):
        from jupyter_client.manager import AsyncKernelManager

        # ipc sockets under a private directory: nothing listens on a TCP port
        self._ipc_dir = tempfile.mkdtemp(prefix="nbscale-k-")
        self.km = AsyncKernelManager(kernel_name=kernel_name, transport="ipc",
                                     ip=os.path.join(self._ipc_dir, "kernel"))
        self.cwd = cwd
        self.env = env
        self.ready = threading.Event()
        self.error: BaseException | None = None

    def start(self) -> None:
        try:
            asyncio.run(self._start())
        except BaseException as exc:  # reported to whoever takes the kernel
            self.error = exc
        finally:
            self.ready.set()

    async def _start(self) -> None:
        await self.km.start_kernel(cwd=self.cwd, env=self.env)
        client = self.km.client()
        client.start_channels()
        try:
            await client.wait_for_ready(timeout=STARTUP_TIMEOUT)
        finally:
            client.stop_channels()

    @property
    def pid(self) -> int | None:
        provisioner = getattr(self.km, "provisioner", None)
        return getattr(provisioner, "pid", None)

    def kill(self) -> None:
        """Kill the kernel and everything it started (joblib workers, dataloaders)."""
        import psutil

        pid = self.pid
        if pid:
            try:
                proc = psutil.Process(pid)
                for p in [*proc.children(recursive=True), proc]:
                    p.kill()
            except psutil.Error:
                pass

    def close(self) -> None:
        self.kill()
        with contextlib.suppress(Exception):  # best effort: the process is gone already
            asyncio.run(self.km.cleanup_resources())
        import shutil

        shutil.rmtree(self._ipc_dir, ignore_errors=True)


class KernelPool:
    """Keeps up to ``size`` kernels starting or ready, for the working directories asked for."""

    def __init__(self, size: int, kernel_name: str = "python3", env: dict[str, str] | None = None):
        self.size = max(1, size)
        self.kernel_name = kernel_name
        self.env = {**os.environ, **(env or {})}
        self._lock = threading.Lock()
        self._waiting: deque[str] = deque()  # cwds of steps expected to need a kernel
        self._spare: list[PooledKernel] = []
        self._closed = False

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
                threading.Thread(target=kernel.start, name="nbscale-kernel-start", daemon=True).start()

    def take(self, cwd: str) -> PooledKernel:
        """A started kernel for ``cwd`` (waits for it), or a new one when none was expected."""
        with self._lock:
            kernel = next((k for k in self._spare if k.cwd == cwd and k.ready.is_set() and not k.error), None)
            kernel = kernel or next((k for k in self._spare if k.cwd == cwd), None)
            if kernel is not None:
                self._spare.remove(kernel)
            elif cwd in self._waiting:
                self._waiting.remove(cwd)
        if kernel is None:
            kernel = PooledKernel(self.kernel_name, cwd, self.env)
            kernel.start()
        self._fill()
        kernel.ready.wait(STARTUP_TIMEOUT + 10)
        if kernel.error is not None:
            kernel.close()
            raise RuntimeError(f"the kernel {self.kernel_name!r} did not start: {kernel.error}") from kernel.error
        return kernel

    def close(self) -> None:
        with self._lock:
            self._closed = True
            spare, self._spare = self._spare, []
            self._waiting.clear()
        for kernel in spare:
            kernel.ready.wait(STARTUP_TIMEOUT + 10)
            kernel.close()


def register_engine() -> str:
    """A papermill engine that executes on a kernel the pool started, and kills it afterwards."""
    from papermill.clientwrap import PapermillNotebookClient
    from papermill.engines import NBClientEngine, papermill_engines

    class PooledEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, log_output=False, stdout_file=None,
                                     stderr_file=None, start_timeout=60, execution_timeout=None, **kwargs: Any):
            client = PapermillNotebookClient(
                nb_man, km=kwargs.pop("km"), kernel_name=kernel_name, timeout=execution_timeout,
                startup_timeout=start_timeout, shutdown_kernel="immediate", log_output=log_output,
                stdout_file=stdout_file, stderr_file=stderr_file,
            )
            return client.execute(cleanup_kc=True)

    papermill_engines.register("nbscale-pooled", PooledEngine)
    return "nbscale-pooled"
