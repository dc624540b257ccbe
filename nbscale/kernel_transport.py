"""How nbscale reaches the kernels it starts: Unix sockets in a private folder.

papermill (nbclient under it) starts its kernel over TCP, and ipykernel warns about any
unencrypted TCP kernel, loopback included. Every kernel nbscale starts (``nbscale
quickstart``, each rank of a notebook job, pipeline steps locally and in containers) gets its
kernel manager here instead:

- IPC transport: the kernel's five ZeroMQ sockets are Unix sockets in a folder made for this
  one kernel by ``mkdtemp`` (mode 0700, so only this user can reach them), beside its
  connection file (mode 0600, holding the HMAC key that signs every message). The folder is
  removed when the kernel is done.
- Where IPC cannot be used (a pyzmq without IPC, as on Windows; no temporary folder whose
  socket paths fit the AF_UNIX limit; a kernel other than ipykernel), TCP bound to 127.0.0.1,
  never another interface, CurveZMQ-encrypted where jupyter_client and the kernel support it.
  The reason is printed once, to stderr.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

PREFIX = "nbscale-k-"
# sun_path is 108 bytes on Linux and 104 on macOS and the BSDs, the terminating NUL included
AF_UNIX_PATH_MAX = 107 if sys.platform.startswith("linux") else 103
# mkdtemp's random part is 8 characters; ports are numbered from 1 in a fresh folder
_LONGEST_SOCKET = os.path.join(PREFIX + "x" * 8, "kernel-99")
LOOPBACK = "127.0.0.1"

_said: set[str] = set()


@dataclass
class KernelSockets:
    """A kernel manager (not started) and the private folder of its sockets and connection file."""

    km: Any  # jupyter_client.manager.AsyncKernelManager
    transport: str  # "ipc" or "tcp"
    folder: str | None
    reason: str | None = None  # why not "ipc"
    _removed: bool = field(default=False, repr=False)

    def remove(self) -> None:
        """Remove the folder (sockets, connection file); call once the kernel has stopped."""
        if self.folder and not self._removed:
            self._removed = True
            shutil.rmtree(self.folder, ignore_errors=True)


def _ipc_unavailable() -> str | None:
    import zmq

    if not zmq.has("ipc"):
        return f"this pyzmq ({zmq.__version__}, {sys.platform}) has no IPC transport"
    return None


def spec_manager(kernel_name: str) -> Any:
    """A kernelspec manager that finds ``kernel_name``. It looks in Jupyter's own kernel
    folders first: jupyter_client's default list adds IPython's, and computing it imports
    IPython (about half a second before every first kernel start). Only a kernel that is
    not there gets the default manager."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    from jupyter_core.paths import jupyter_path

    quick = KernelSpecManager(kernel_dirs=jupyter_path("kernels"))
    try:
        quick.get_kernel_spec(kernel_name)
    except NoSuchKernel:
        return KernelSpecManager()
    return quick


def runs_ipykernel(argv: list[str]) -> bool:
    """The kernelspec command runs ipykernel ("python -m ipykernel_launcher -f
    {connection_file}", as ipykernel installs itself), which binds ``ipc://`` addresses."""
    modules = {b for a, b in itertools.pairwise(argv) if a == "-m"}
    return bool(modules & {"ipykernel_launcher", "ipykernel"})


def _speaks_ipc(kernel_name: str, specs: Any = None) -> str | None:
    """None when the kernel is ipykernel (which binds ``ipc://`` addresses), else why not."""
    from jupyter_client.kernelspec import NoSuchKernel

    try:
        spec = (specs or spec_manager(kernel_name)).get_kernel_spec(kernel_name)
    except NoSuchKernel:
        return None  # starting it fails with jupyter_client's own message, whatever the transport
    if runs_ipykernel(spec.argv):
        return None
    return f"kernel {kernel_name!r} is not ipykernel, and not every kernel binds IPC addresses"


def private_folder(max_socket_path: int | None) -> tuple[str | None, str | None]:
    """A new 0700 folder under TMPDIR (or /tmp when TMPDIR's paths are too long for sockets)."""
    bases: list[str] = []
    with contextlib.suppress(FileNotFoundError):  # "no usable temporary directory"
        bases.append(tempfile.gettempdir())
    if os.name == "posix" and os.path.isdir("/tmp") and "/tmp" not in bases:
        bases.append("/tmp")
    problems = []
    for base in bases:
        longest = os.path.join(base, _LONGEST_SOCKET)
        if max_socket_path is not None and len(os.fsencode(longest)) > max_socket_path:
            problems.append(
                f"socket paths under {base} would be {len(os.fsencode(longest))} bytes, "
                f"over the AF_UNIX limit of {max_socket_path}"
            )
            continue
        try:
            return tempfile.mkdtemp(prefix=PREFIX, dir=base), None  # mode 0700
        except OSError as exc:
            problems.append(f"cannot create a folder in {base}: {exc.strerror or exc}")
    return None, "; ".join(problems) or "no temporary folder"


def _say_once(kernel_name: str, reason: str, encrypted: bool) -> None:
    if reason in _said:
        return
    _said.add(reason)
    how = "encrypted with CurveZMQ" if encrypted else "signed with the connection file's key"
    print(
        f"nbscale: kernel {kernel_name!r} talks to nbscale over TCP on {LOOPBACK} only ({how}): "
        f"{reason}",
        file=sys.stderr,
        flush=True,
    )


def kernel_sockets(kernel_name: str = "python3", prespawned: Any = None) -> KernelSockets:
    """A kernel manager for ``kernel_name`` whose kernel is reachable only by this user.

    ``prespawned``: a ``kernel_spawn.Prespawned`` process of ``kernel_name``, started before
    jupyter_client was imported; the manager takes it over (its ``start_kernel`` launches
    nothing), unless the kernelspec the manager resolves would not have started it, or IPC
    cannot be used here: then it is killed and the manager starts a kernel itself."""
    from jupyter_client.manager import AsyncKernelManager

    specs = spec_manager(kernel_name)
    if prespawned is not None:
        taken = _take_over(prespawned, kernel_name, specs)
        if taken is not None:
            return taken
    reason = _ipc_unavailable() or _speaks_ipc(kernel_name, specs)
    if reason is None:
        folder, reason = private_folder(AF_UNIX_PATH_MAX)
        if folder is not None:
            km = AsyncKernelManager(
                kernel_name=kernel_name,
                transport="ipc",
                ip=os.path.join(folder, "kernel"),  # sockets kernel-1 ... kernel-5
                connection_file=os.path.join(folder, "kernel.json"),
                kernel_spec_manager=specs,
            )
            return KernelSockets(km, "ipc", folder)
    # TCP, on the loopback interface only; the connection file still in a private folder
    folder, _ = private_folder(None)
    km = AsyncKernelManager(
        kernel_name=kernel_name, transport="tcp", ip=LOOPBACK, kernel_spec_manager=specs
    )
    if folder is not None:
        km.connection_file = os.path.join(folder, "kernel.json")
    encrypted = _encrypt(km)
    _say_once(kernel_name, reason, encrypted)
    return KernelSockets(km, "tcp", folder, reason)


def _take_over(prespawned: Any, kernel_name: str, specs: Any) -> KernelSockets | None:
    from jupyter_client.kernelspec import NoSuchKernel
    from jupyter_client.manager import AsyncKernelManager

    try:
        spec = specs.get_kernel_spec(kernel_name)
    except NoSuchKernel:
        spec = None  # removed since the kernel was started
    if (
        spec is None
        or prespawned.kernel_name != kernel_name
        or not prespawned.started_by(spec)
        or _ipc_unavailable()
    ):
        prespawned.discard()
        return None
    km = AsyncKernelManager(
        kernel_name=kernel_name,
        transport="ipc",
        ip=prespawned.ip,
        connection_file=prespawned.connection_file,
        kernel_spec_manager=specs,
    )
    if getattr(km, "transport_encryption", "disabled") != "disabled":
        prespawned.discard()  # its connection file has no CurveZMQ keys: started anew
        return None
    km.load_connection_file()  # its key, ports and signature scheme
    km.provisioner = _prespawned_provisioner(km, prespawned)
    return KernelSockets(km, "ipc", prespawned.folder)


def _prespawned_provisioner(km: Any, prespawned: Any) -> Any:
    """jupyter_client's ``LocalProvisioner`` holding a process that is already running: the
    manager's first ``start_kernel`` (with the environment and folder it was started with)
    launches nothing; signals, polling, reaping and any later start are the local
    provisioner's own."""
    from jupyter_client.provisioning.local_provisioner import LocalProvisioner

    class PrespawnedProvisioner(LocalProvisioner):
        waiting: Any = None  # the process until the manager's start takes it

        async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
            waiting, asked = self.waiting, (kwargs.get("env"), kwargs.get("cwd"))
            if waiting is not None and asked != (waiting.env, waiting.cwd):
                # started for another environment or folder: killed, and one started as asked
                self.waiting, self.process, self.pid, self.pgid = None, None, None, None
                waiting.discard(keep_folder=True)
            if self.waiting is None:
                return await super().pre_launch(**kwargs)
            kwargs.pop("extra_arguments", None)
            self.connection_info = self.parent.get_connection_info()
            return {**kwargs, "cmd": list(waiting.process.args)}

        async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> Any:
            if self.waiting is None:
                return await super().launch_kernel(cmd, **kwargs)
            self.waiting = None  # the manager has it now
            return self.connection_info

    provisioner = PrespawnedProvisioner(
        kernel_id=None, kernel_spec=km.kernel_spec, parent=km, connection_info={}
    )
    process = prespawned.process
    provisioner.waiting = prespawned
    # what PooledKernel.kill and the reaping read, before the manager's start as after it
    provisioner.process, provisioner.pid, provisioner.cwd = process, process.pid, prespawned.cwd
    with contextlib.suppress(OSError):
        provisioner.pgid = os.getpgid(process.pid)
    return provisioner


def _encrypt(km: Any) -> bool:
    """CurveZMQ on the TCP sockets where jupyter_client (8.10+) and libzmq offer it; the kernel
    gets keys only if its kernelspec declares ``curve`` support ("auto")."""
    import zmq

    if "transport_encryption" not in km.trait_names() or not zmq.has("curve"):
        return False
    km.transport_encryption = "auto"
    return bool(getattr(km, "_kernel_supports_curve_encryption", lambda: False)())


@contextlib.contextmanager
def kernel_manager(kernel_name: str = "python3", note: str | None = None) -> Iterator[Any]:
    """``kernel_sockets(kernel_name).km``, its folder removed on the way out, a SIGTERM included.

    ``note``: a file to write the folder's path to, so that whoever stops this process with
    SIGKILL can remove the folder afterwards (``remove_noted``)."""
    sockets = kernel_sockets(kernel_name)
    if note and sockets.folder:
        with contextlib.suppress(OSError):
            os.makedirs(os.path.dirname(note), exist_ok=True)
            with open(note, "w") as f:
                f.write(sockets.folder)
    try:
        with _removed_on_sigterm(sockets):
            yield sockets.km
    finally:
        sockets.remove()


def remove_noted(notes: str) -> list[str]:
    """Remove the kernel folders named by the note files in ``notes`` that are still there (their
    process was killed before it could), and the notes; returns the folders removed.

    Only a folder nbscale made is removed: its name starts with ``nbscale-k-`` and it belongs
    to this user, whatever a note says."""
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(notes):
            with contextlib.suppress(OSError):
                with open(entry.path) as f:
                    folder = f.read().strip()
                os.unlink(entry.path)
                st = os.lstat(folder)
                if (
                    os.path.basename(folder).startswith(PREFIX)
                    and os.path.isabs(folder)
                    and st.st_uid == os.getuid()
                    and not os.path.islink(folder)
                ):
                    shutil.rmtree(folder, ignore_errors=True)
                    removed.append(folder)
    return removed


@contextlib.contextmanager
def _removed_on_sigterm(sockets: KernelSockets) -> Iterator[None]:
    """SIGTERM (a cancelled job's rank, a stopped container) ends a process without running its
    ``finally`` blocks: remove the folder first, then die of the signal as before. The kernel
    keeps its bound sockets and, its parent gone, exits as it always did."""
    import signal
    import threading

    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield  # someone else handles SIGTERM here: theirs to keep
        return

    def terminated(signum: int, _frame: Any) -> None:
        sockets.remove()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def execute_notebook(
    input_path: str,
    output_path: str,
    *,
    kernel_name: str = "python3",
    note: str | None = None,
    **kwargs: Any,
) -> Any:
    """``papermill.execute_notebook`` on a kernel from ``kernel_sockets``.

    nbclient, under papermill's default engine, starts the kernel of the manager it is given
    (``km``) but leaves it running, as not its own; so it is shut down here as nbclient shuts
    down its own (a shutdown request, then a kill if it is still up after the grace time), and
    the folder goes once it has. ``note``: see ``kernel_manager``.
    """
    from . import lazy_grammar

    lazy_grammar.defer()  # papermill's import compiles no IRI grammar (see lazy_grammar)
    import papermill
    from jupyter_core.utils import run_sync

    with kernel_manager(kernel_name, note) as km:
        try:
            return papermill.execute_notebook(
                input_path, output_path, kernel_name=kernel_name, km=km, **kwargs
            )
        finally:
            try:
                if km.has_kernel:
                    run_sync(km.shutdown_kernel)(now=False)
            finally:
                run_sync(km.cleanup_resources)()
