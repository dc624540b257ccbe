"""A fork server for serving replicas: Python, torch and the runtime imported once.

A fresh ``python -m nbscale.serving`` spends most of its start in the
interpreter's start and ``import torch``; the model itself loads in tens of
milliseconds. ``python -m nbscale.serving.zygote FD`` imports everything a
replica needs, then waits on ``FD`` (one end of a ``SOCK_SEQPACKET`` socket
pair whose other end the router keeps) for requests to start a replica. For
each it forks; the child takes the request's environment, working directory,
log file and arguments and runs :func:`nbscale.serving.server.main` exactly
as a fresh process would: the artifact's signature is checked before its code
is imported or a weight read, the token is read from its file, the port is
the child's own.

What the zygote must not hand down, it never holds:

- no key, token or artifact is read in the zygote (the child reads them), but the
  artifact's manifest, to know whether the replica needs ``torch.export.load``
  (``_needs_export``): nothing of it is executed or loaded there;
- no socket but the request channel, which the child closes first; the
  router starts it with only stdin, stdout and stderr besides;
- no CUDA state: the zygote never initialises CUDA, checks that before each
  fork, and the router starts replicas that get a GPU as fresh processes;
- no thread: forking a process with threads copies locks others held. The
  zygote is started with ``OMP_NUM_THREADS=1`` and ``OPENBLAS_NUM_THREADS=1``
  (NumPy's BLAS otherwise starts a pool at import), checks before each fork
  that it is still the only thread, and the child sets torch's thread counts
  from its own environment;
- the random generators are seeded again in each child.

The zygote dies with the router that started it (``PR_SET_PDEATHSIG``, and it
exits when the channel closes; a zygote claimed from the warm one, below, by the
channel alone); the replicas it forked do not (a fork clears
the parent-death signal), so a router started after a crash adopts them as it
adopts any replica. The zygote reaps its children and reports each one's pid
and exit code on the channel.

Messages are JSON, one per datagram: ``{"op": "spawn", "id", "argv", "env",
"cwd"}`` with the log file's descriptor attached; answers ``{"ready": pid}``
once, ``{"id", "pid"}`` or ``{"id", "error"}``, and ``{"exit": pid, "code"}``.

**The warm zygote.** Started that way, a first deploy pays the zygote's own start
(Python and torch, 1-2 s). ``python -m nbscale.serving.zygote --warm`` is the
same preload, started ahead (``start_warm``: by ``%load_ext nbscale`` and by a
local deploy) and kept for a while: one per nbscale home, user and Python
environment (its socket's name carries a fingerprint of the interpreter,
``PYTHONPATH``, torch's and nbscale's serving files, so a changed installation
never gets an old one). It listens on a unix socket in ``$NBSCALE_HOME/run`` (0700 folder, 0600
socket, and the peer's uid checked), never on the network, and exits after
``NBSCALE_WARM_TTL`` seconds (default 600) without a claim. A router *claims*
it: the warm process forks a child that becomes that router's zygote, talking
over the claim's connection exactly as above. The child writes the endpoint's
tags into its own environment block (reserved space, ``NBSCALE_ZYGOTE_ROOM``)
so that it and the replicas it forks are found by ``NBSCALE_ENDPOINT_TAG`` as
every process of the endpoint is, and it exits when the router's end closes.
The warm process holds no key, token, artifact or CUDA state either; a router
that finds no warm zygote (absent, dead, stale, still starting past its wait)
starts its own.
"""

from __future__ import annotations

import abc
import contextlib
import ctypes
import fcntl
import gc
import hashlib
import importlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..number_settings import number_setting

MAX_MESSAGE = 1 << 20
# what the first ``torch.export.load`` of a process imports (found with ``python -X importtime``);
# a name a given torch version lacks is skipped
LAZY_IMPORTS = (
    "torch.export.pt2_archive._package",
    "torch._export.serde.schema",
    "torch._export.serde.serialize",
    "torch.export._trace",
    "torch.export._unlift",
    "torch._functorch.aot_autograd",
    "torch._inductor.sizevars",
    "torch.utils.serialization",
    "torch.fx.experimental.validator",
    "torch._export.db.logging",
    "sympy.tensor.tensor",
    "sympy.combinatorics",
    "sympy.assumptions.wrapper",
    "tabulate",
)
_LAZY_MISSING: set[str] = set()
LAZY_DONE = "imported what torch.export.load needs"  # said in the log once they are
_PR_SET_PDEATHSIG = 1


def threads() -> int:
    """Threads of this process, as the kernel counts them (native ones included)."""
    return len(os.listdir("/proc/self/task"))


def _die_with_parent(parent: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the call: nobody is left to ask
        os._exit(0)


def preload() -> None:
    """Import what every replica imports, and nothing that starts a thread or touches CUDA.

    A model packaged with its lean form (``exported``) needs nothing more. What
    ``torch.export.load`` imports besides (``LAZY_IMPORTS``, longer than ``import torch``)
    comes later: the warm zygote imports it while no claim waits (``preload_next``), and a
    zygote asked to fork a replica of a program without a usable lean form imports it first
    (``_needs_export``), once."""
    import numpy  # noqa: F401
    import prometheus_client  # noqa: F401
    import torch
    import uvloop  # noqa: F401

    from . import app, capture, exported, handler, server  # noqa: F401

    if torch.cuda.is_initialized():
        raise RuntimeError("CUDA was initialised while preloading; a fork would share it")


def preload_next() -> bool:
    """Import the next of ``LAZY_IMPORTS`` not imported yet; False once none is left."""
    for name in LAZY_IMPORTS:
        if name in sys.modules or name in _LAZY_MISSING:
            continue
        try:
            importlib.import_module(name)
        except ImportError:  # a name this torch version lacks
            _LAZY_MISSING.add(name)
        return True
    return False


def preload_export() -> None:
    """Everything ``torch.export.load`` imports, then frozen as the first preload was."""
    start = time.perf_counter()
    if not preload_next():
        return
    while preload_next():
        pass
    _lazy_done("nbscale zygote", start)


def _lazy_done(who: str, start: float) -> None:
    """Freeze what the lazy imports made, as the first preload was, and say so in the log."""
    gc.collect()
    gc.freeze()
    print(f"{who}: {LAZY_DONE} ({time.perf_counter() - start:.2f}s)", flush=True)


def _needs_export(argv: list[str]) -> bool:
    """Whether the replica ``argv`` starts loads its program with ``torch.export.load``: a
    ``model.pt2`` whose manifest has no lean form written by this torch. Read from the
    manifest alone (the replica checks the artifact's signature before it loads anything)."""
    from .exported import MANIFEST_KEY, usable_lean_form

    try:
        model_dir = Path(argv[argv.index("--model-dir") + 1])
        manifest = json.loads((model_dir / "nbscale.json").read_text())
    except (ValueError, IndexError, OSError):
        return False  # the replica says what is wrong with it
    return manifest.get("format") == "torch.export" and not usable_lean_form(
        manifest.get(MANIFEST_KEY)
    )


def _child(chan: socket.socket, msg: dict, log_fd: int) -> None:
    """In the forked child: become the replica ``msg`` describes; never returns."""
    code = 1
    try:
        chan.close()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        for fd in {null, log_fd} - {0, 1, 2}:
            os.close(fd)
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - the process's own
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        os.environ.clear()
        os.environ.update(msg["env"])
        os.chdir(msg.get("cwd") or "/")
        import random

        import numpy as np
        import torch

        random.seed()
        np.random.seed()
        torch.seed()
        n = msg["env"].get("OMP_NUM_THREADS", "")
        if n.isdigit() and int(n) > 0:
            torch.set_num_threads(int(n))
        from .server import main

        sys.argv = ["python -m nbscale.serving", *msg["argv"]]
        code = main(msg["argv"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - said in the replica's log, then the exit code
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 1)


def _send(chan: socket.socket, doc: dict) -> None:
    with contextlib.suppress(OSError):
        chan.send(json.dumps(doc).encode())


def serve(chan: socket.socket) -> int:
    """The zygote's loop: fork on request, reap children, exit when the router is gone."""
    _send(chan, {"ready": os.getpid()})
    while True:
        with contextlib.suppress(InterruptedError):
            readable, _, _ = select.select([chan], [], [], 0.1)
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            _send(chan, {"exit": pid, "code": os.waitstatus_to_exitcode(status)})
        if not readable:
            continue
        try:
            data, fds, _, _ = socket.recv_fds(chan, MAX_MESSAGE, 4)
        except OSError:
            return 0
        if not data:
            for fd in fds:
                os.close(fd)
            return 0  # the router closed its end: it stopped or died
        try:
            msg = json.loads(data)
        except ValueError:
            for fd in fds:
                os.close(fd)
            continue
        expected = 2 if msg.get("listen_fd") else 1
        if msg.get("op") == "spawn" and _needs_export(msg.get("argv") or []):
            preload_export()  # once per zygote: the next replicas of the endpoint fork with it
        refusal = _refusal()  # after any import: none may have left a thread or CUDA behind
        if msg.get("op") != "spawn" or len(fds) != expected:
            refusal = "a spawn request carries its log file (and the listening socket it names)"
        if refusal:
            for fd in fds:
                os.close(fd)
            _send(chan, {"id": msg.get("id"), "error": refusal})
            continue
        if expected == 2:  # the replica's own number for the endpoint's socket
            argv = msg["argv"]
            argv[argv.index("--listen-fd") + 1] = str(fds[1])
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(chan, msg, fds[0])
        for fd in fds:  # the zygote keeps neither the log nor the endpoint's socket
            os.close(fd)
        _send(chan, {"id": msg.get("id"), "pid": pid})


def _refusal() -> str | None:
    """Why forking now would hand down something it must not, or None."""
    if threads() != 1:
        return f"the zygote has {threads()} threads; forking it would copy their locks"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "CUDA is initialised in the zygote"
    return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--warm"]:
        if len(args) != 3:
            print("usage: python -m nbscale.serving.zygote --warm RUN_DIR TTL_S", file=sys.stderr)
            return 2
        return warm_main(Path(args[1]), float(args[2]))
    if len(args) != 2 or not args[0].isdigit() or not args[1].isdigit():
        print("usage: python -m nbscale.serving.zygote CHANNEL_FD PARENT_PID", file=sys.stderr)
        return 2
    _die_with_parent(int(args[1]))
    chan = socket.socket(fileno=int(args[0]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the router decides when the zygote ends
    if not _prepare():
        return 1
    return serve(chan)


def _prepare() -> bool:
    """Preload, check, freeze; False (said on stderr) when this process must not fork replicas."""
    start = time.perf_counter()
    try:
        preload()
    except Exception as exc:  # noqa: BLE001 - the router falls back to fresh processes
        print(f"nbscale zygote: cannot preload: {exc}", file=sys.stderr, flush=True)
        return False
    refusal = _refusal()
    if refusal:
        print(f"nbscale zygote: {refusal}", file=sys.stderr, flush=True)
        return False
    # everything imported lives as long as every replica: frozen once here, a replica's own
    # gc.collect() (before it reports ready) scans only what it made, not torch's modules
    gc.collect()
    gc.freeze()
    print(f"nbscale zygote ready after {time.perf_counter() - start:.2f}s", flush=True)
    return True


# -- the warm zygote -----------------------------------------------------------------------

WARM_ENV = "NBSCALE_WARM_ZYGOTE"  # 0: no warm zygote; each router starts its own
WARM_TTL_ENV = "NBSCALE_WARM_TTL"
WARM_TTL_S = 600.0
ROOM_VAR = "NBSCALE_ZYGOTE_ROOM"  # reserved environment space for the endpoint's tags
ROOM_BYTES = 4096
CLAIM_TIMEOUT_S = 5.0
# how long a router waits for the warm zygote to answer its claim: the preload it may still be
# in takes 1-2 s (several on a loaded machine); a router's own zygote costs the same
CLAIM_PATIENCE_S = 15.0
STALE_CHECK_S = 5.0  # how often an idle warm zygote checks that its environment is unchanged


def fingerprint() -> str:
    """The Python environment a warm zygote was made in: the interpreter and its prefix,
    ``PYTHONPATH``, torch's and nbscale's serving code as they are on disk now. The same in
    a kernel, a CLI and a router of one environment (no process's own ``sys.path`` in it)."""
    import importlib.util

    here = Path(__file__).resolve().parent
    h = hashlib.sha256()
    h.update(f"{sys.executable}\0{sys.prefix}\0{sys.version}\0{os.getuid()}\0".encode())
    h.update(os.environ.get("PYTHONPATH", "").encode())
    files = [*here.glob("*.py"), here.parent / "keys.py"]
    with contextlib.suppress(ImportError, ValueError, AttributeError):
        torch_init = Path(importlib.util.find_spec("torch").origin)  # found, not imported
        files += [torch_init, torch_init.parent / "version.py"]
    for f in sorted(files):
        with contextlib.suppress(OSError):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}\0".encode())
    return h.hexdigest()[:12]


def warm_dir() -> Path:
    """Where this nbscale home's warm zygotes listen."""
    from ..paths import home

    return home() / "run"


def warm_paths(run_dir: Path, fp: str | None = None) -> tuple[Path, Path]:
    """The warm zygote's socket and lock file for this environment, in ``run_dir``."""
    fp = fp or fingerprint()
    return run_dir / f"zygote-{fp}.sock", run_dir / f"zygote-{fp}.lock"


def warm_enabled() -> bool:
    return os.environ.get(WARM_ENV, "1") != "0" and os.environ.get("NBSCALE_ZYGOTE", "1") != "0"


WARM_TTL_MAX_S = 86_400.0  # a day: the warm zygote holds about 300 MiB while it waits


def warm_ttl() -> float:
    """``NBSCALE_WARM_TTL`` in seconds (1 s to a day); a ``ValueError`` that says what to set."""
    raw = os.environ.get(WARM_TTL_ENV, "").strip()
    return number_setting(
        raw,
        WARM_TTL_S,
        lambda ttl: 1.0 <= ttl <= WARM_TTL_MAX_S,
        f"{WARM_TTL_ENV}={raw!r} is not a number of seconds from 1 to {WARM_TTL_MAX_S:.0f}: "
        f"set it like {WARM_TTL_S:.0f}, or unset it (NBSCALE_WARM_ZYGOTE=0 turns it off)",
    )


def _run_dir(run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(run_dir, 0o700)


def warm_running(run_dir: Path) -> bool:
    """Whether a warm zygote for this environment holds its lock (starting or ready)."""
    _, lock = warm_paths(run_dir)
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def start_warm(run_dir: Path, env: dict[str, str] | None = None) -> int | None:
    """Start the warm zygote in the background unless one runs already; its pid, or None.

    Costs the caller a process start (no import); the process exits by itself after its TTL."""
    if not warm_enabled() or warm_running(run_dir):
        return None
    sock, _ = warm_paths(run_dir)
    if len(os.fsencode(sock)) >= 108:  # longer than a unix socket's path may be
        return None
    _run_dir(run_dir)
    env = dict(os.environ if env is None else env)
    for k in ("NBSCALE_ENDPOINT", "NBSCALE_ENDPOINT_TAG"):
        env.pop(k, None)
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONUNBUFFERED"] = "1"
    env[ROOM_VAR] = "x" * ROOM_BYTES  # the claimed child writes its endpoint's tags here
    with open(run_dir / "zygote.log", "ab") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nbscale.serving.zygote",
                "--warm",
                str(run_dir),
                str(warm_ttl()),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd="/",
            start_new_session=True,  # not the caller's: it lives its TTL after a CLI exits
        )
    return proc.pid


def _write_environ(tags: dict[str, str]) -> None:
    """Put ``tags`` into this process's environment block as the kernel shows it
    (``/proc/self/environ``), in the space ``ROOM_VAR`` reserved at exec."""
    stat = _stat("self")
    start, end = int(stat[47]), int(stat[48])  # env_start, env_end (fields 50 and 51)
    block = ctypes.string_at(start, end - start)
    key = ROOM_VAR.encode() + b"="
    at = 0 if block.startswith(key) else block.find(b"\0" + key) + 1
    if at <= 0 and not block.startswith(key):
        raise RuntimeError("no reserved environment space")
    room = block.index(b"\0", at) - at  # its bytes, the terminating NUL aside
    new = b"".join(f"{k}={v}".encode() + b"\0" for k, v in tags.items())
    rest = room - len(new)
    if rest < len(key) + 1 or any(b"\0" in k.encode() + v.encode() for k, v in tags.items()):
        raise RuntimeError("the endpoint's tags do not fit the reserved environment space")
    new += key + b"x" * (rest - len(key))
    ctypes.memmove(start + at, new, len(new))
    if ctypes.string_at(start + at, len(new)) != new:
        raise RuntimeError("the environment block could not be written")
    os.environ.update(tags)


def _peer(conn: socket.socket) -> tuple[int, int]:
    """The (pid, uid) of the process at the other end of a unix socket, as it connected."""
    import struct

    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _ = struct.unpack("3i", creds)
    return pid, uid


def _claimed(conn: socket.socket, listener: socket.socket, lock_fd: int, msg: dict, log_fd: int):
    """In the child of a claim: become the claiming router's zygote; never returns."""
    code = 1
    try:
        listener.close()
        os.close(lock_fd)  # the lock is the warm process's, not this zygote's
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _write_environ({str(k): str(v) for k, v in msg["tags"].items()})
        os.environ.pop(ROOM_VAR, None)
        print(f"nbscale zygote: claimed from the warm zygote {os.getppid()}", flush=True)
        code = serve(conn)
    except BaseException:  # noqa: BLE001 - said in the endpoint's zygote log
        import traceback

        traceback.print_exc()
        _send(conn, {"error": "the warm zygote could not become this endpoint's zygote"})
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def warm_main(run_dir: Path, ttl: float) -> int:
    """The warm zygote: preload, then fork a zygote for each router that claims one, until
    ``ttl`` seconds pass without a claim."""
    made_in = fingerprint()  # before the preload: a change during it is seen at the first check
    sock_path, lock_path = warm_paths(run_dir, made_in)
    lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return 0  # another one runs for this home and environment
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock_path.unlink(missing_ok=True)  # a dead one's
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    old = os.umask(0o177)
    try:
        listener.bind(str(sock_path))  # 0600: only this user may connect (and uids are checked)
    finally:
        os.umask(old)
    listener.listen(64)  # claims made while preloading wait here
    ours = os.stat(sock_path).st_ino  # removed at exit only while it is still this one's
    stopping = False

    def on_term(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    print(f"nbscale warm zygote {os.getpid()} for {run_dir}, idle TTL {ttl:g} s", flush=True)
    ok = _prepare()
    more = True  # LAZY_IMPORTS are left to import while no claim waits
    lazy_start = time.perf_counter()
    last = checked = time.monotonic()
    try:
        while ok and not stopping:
            left = ttl - (time.monotonic() - last)
            if left <= 0 or not sock_path.exists():
                break  # idle past the TTL, or the home was removed
            if time.monotonic() - checked >= STALE_CHECK_S:
                checked = time.monotonic()
                if fingerprint() != made_in:
                    # nbscale, torch or Python changed on disk: claims now go to a warm zygote
                    # of the new environment (another socket), so this one would idle to its TTL
                    print("nbscale warm zygote: stale (its environment changed)", flush=True)
                    break
            with contextlib.suppress(InterruptedError):
                wait = 0.0 if more else min(left, 1.0)
                readable, _, _ = select.select([listener], [], [], wait)
            _reap()
            if not readable:
                if more:  # idle: what a program without a lean form needs, a module at a time
                    more = preload_next()
                    if not more:
                        _lazy_done("nbscale warm zygote", lazy_start)
                continue
            with contextlib.suppress(OSError):
                conn, _ = listener.accept()
                with conn:
                    if _claim(conn, listener, lock_fd):
                        last = time.monotonic()
    finally:
        with contextlib.suppress(OSError):
            if os.stat(sock_path).st_ino == ours:
                sock_path.unlink()
        listener.close()
    print(f"nbscale warm zygote {os.getpid()} exits", flush=True)
    return 0 if ok else 1


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _claim(conn: socket.socket, listener: socket.socket, lock_fd: int) -> bool:
    """One claim: checked, then forked into a zygote that keeps ``conn``."""
    if _peer(conn)[1] != os.getuid():
        print("nbscale warm zygote: claim refused: another user", flush=True)
        return False
    conn.settimeout(CLAIM_TIMEOUT_S)
    data, fds, _, _ = socket.recv_fds(conn, MAX_MESSAGE, 1)
    try:
        msg = json.loads(data) if data else {}
        refusal = _refusal()
        if msg.get("op") != "claim" or len(fds) != 1 or not isinstance(msg.get("tags"), dict):
            refusal = "a claim carries the endpoint's tags and its zygote log"
        elif msg.get("fingerprint") != fingerprint():
            refusal = "stale: nbscale or Python changed since this warm zygote started"
        if refusal:
            print(f"nbscale warm zygote: claim refused: {refusal}", flush=True)
            _send(conn, {"error": refusal})
            return False
        conn.settimeout(None)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _claimed(conn, listener, lock_fd, msg, fds[0])
        return True
    except ValueError:
        return False
    finally:
        for fd in fds:
            os.close(fd)


# -- the router's side ---------------------------------------------------------------------


class ZygoteError(Exception):
    """The zygote could not start a replica (the caller starts a fresh process instead)."""


class ForkedProcess:
    """A replica forked by the zygote, watched like a ``subprocess.Popen``."""

    def __init__(self, pid: int, zygote: Zygote):
        self.pid = pid
        self.zygote = zygote
        self.returncode: int | None = None
        self._created: float | None = None
        with contextlib.suppress(OSError, ValueError, IndexError):
            self._created = _start_ticks(pid)

    def poll(self) -> int | None:
        if self.returncode is None:
            code = self.zygote.exit_code(self.pid)
            if code is not None:
                self.returncode = code
            elif not self.zygote.alive() and not self._running():
                self.returncode = -1  # reaped by whoever adopted it after the zygote died
        return self.returncode

    def _running(self) -> bool:
        try:
            fields = _stat(self.pid)
        except OSError:
            return False
        return fields[0] != "Z" and (self._created is None or int(fields[19]) == self._created)

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.send_signal(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout)
            self.zygote.pump(0.02)
        return self.returncode


def _stat(pid: int | str) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command's name: [0] is the state (R, S, T,
    Z...), [19] the start time in clock ticks since boot; ``OSError`` once the pid is gone."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _start_ticks(pid: int) -> int:
    return int(_stat(pid)[19])


class WatchedProcess(abc.ABC):
    """A process that is not our child (no exit status to wait on): ``poll`` says whether it is
    gone (``gone``, from its pid and start time), and it is signalled and waited on like a
    ``subprocess.Popen``."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None

    @abc.abstractmethod
    def gone(self) -> bool:
        """Whether the process has exited (or its pid now names another process)."""

    def poll(self) -> int | None:
        if self.returncode is None and self.gone():
            self.returncode = -1
        return self.returncode

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def terminate(self) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)

    def kill(self) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout)
            time.sleep(0.02)
        return self.returncode


class ClaimedProcess(WatchedProcess):
    """A zygote forked by the warm zygote: not our child, so watched by pid and start time."""

    def __init__(self, pid: int):
        super().__init__(pid)
        self._created = _start_ticks(pid)

    def gone(self) -> bool:
        try:
            fields = _stat(self.pid)
        except OSError:
            return True
        return fields[0] == "Z" or int(fields[19]) != self._created


def claim_warm(
    run_dir: Path, tags: dict[str, str], log_path: Path, wait_s: float = 2.0
) -> Zygote | None:
    """This router's zygote, forked by the warm zygote of ``run_dir``; None when there is none
    to claim (absent, dead, stale, or not listening within ``wait_s`` while it starts)."""
    if not warm_enabled():
        return None
    sock_path, _ = warm_paths(run_dir)
    deadline = time.monotonic() + wait_s
    chan = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    while True:
        try:
            chan.connect(str(sock_path))
            break
        except OSError:
            # a warm zygote that holds its lock is about to listen; without one, none comes
            if time.monotonic() >= deadline or not warm_running(run_dir):
                chan.close()
                return None
            time.sleep(0.02)
    doc = {"op": "claim", "tags": tags, "fingerprint": fingerprint()}
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        warm_pid = _peer(chan)[0]
        socket.send_fds(chan, [json.dumps(doc).encode()], [fd])
    except OSError:
        chan.close()
        return None
    finally:
        os.close(fd)
    return Zygote(log_path, {}, chan=chan, warm_pid=warm_pid)


class Zygote:
    """The router's handle on its zygote: start it, ask it for replicas, hear their exits."""

    def __init__(
        self,
        log_path: Path,
        env: dict[str, str],
        chan: socket.socket | None = None,
        warm_pid: int | None = None,
    ):
        self.claimed = chan is not None
        self.claimed_at = time.monotonic()
        self.warm_pid = warm_pid  # the warm zygote a claim went to (its SO_PEERCRED pid)
        if chan is not None:  # a claim sent to the warm zygote: its child answers "ready"
            self.chan = chan
            self.ready = False
            self.exits: dict[int, int] = {}
            self.next_id = 0
            self.proc: Any = None
            self.chan.setblocking(False)
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.chan = ours
        self.ready = False
        self.exits: dict[int, int] = {}
        self.next_id = 0
        env = {**env, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "nbscale.serving.zygote",
                    str(theirs.fileno()),
                    str(os.getpid()),
                ],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        theirs.close()
        self.chan.setblocking(False)

    def alive(self) -> bool:
        if self.proc is None:  # claimed, not answered yet: alive while the channel is open
            return self.chan.fileno() != -1
        return self.proc.poll() is None

    def claim_stuck(self) -> str | None:
        """Why a claim still unanswered is given up on (the caller starts its own zygote): the
        warm zygote is stopped (SIGSTOP, a debugger), or it has not answered within
        ``CLAIM_PATIENCE_S``; None while it may still answer."""
        if not self.claimed or self.ready or not self.alive():
            return None
        if self.warm_pid is not None:
            try:
                state = _stat(self.warm_pid)[0]
            except (OSError, IndexError):
                state = ""
            if state in ("T", "t"):
                return f"the warm zygote {self.warm_pid} is stopped"
        if time.monotonic() - self.claimed_at > CLAIM_PATIENCE_S:
            return f"the warm zygote did not answer the claim within {CLAIM_PATIENCE_S:g} s"
        return None

    def _handle(self, doc: dict) -> dict | None:
        if "ready" in doc:
            if self.proc is None:
                with contextlib.suppress(OSError, ValueError, IndexError):
                    self.proc = ClaimedProcess(int(doc["ready"]))
                if self.proc is None:
                    return None
            self.ready = True
        elif "error" in doc and "id" not in doc:  # the warm zygote refused the claim
            self.chan.close()
        elif "exit" in doc:
            self.exits[int(doc["exit"])] = int(doc["code"])
        else:
            return doc
        return None

    def pump(self, timeout: float = 0.0) -> list[dict]:
        """Read what the zygote said; answers to spawn requests are returned."""
        answers = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                data = self.chan.recv(MAX_MESSAGE)
            except (BlockingIOError, InterruptedError):
                left = deadline - time.monotonic()
                if left <= 0 or answers:
                    return answers
                select.select([self.chan], [], [], left)
                continue
            except OSError:
                data = b""
            if not data:
                self.ready = False  # the zygote is gone
                if self.proc is None:
                    self.chan.close()  # a claim nobody answered
                return answers
            with contextlib.suppress(ValueError):
                answer = self._handle(json.loads(data))
                if answer is not None:
                    answers.append(answer)

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.ready and self.alive() and time.monotonic() < deadline:
            self.pump(min(0.05, max(0.0, deadline - time.monotonic())))
        return self.ready

    def exit_code(self, pid: int) -> int | None:
        if pid not in self.exits:
            self.pump()
        return self.exits.get(pid)

    def spawn(
        self,
        argv: list[str],
        env: dict[str, str],
        log_path: Path,
        timeout: float = 10.0,
        listen_fd: int | None = None,
    ) -> ForkedProcess:
        """Fork a replica running ``python -m nbscale.serving ARGV`` with ``env``; ``listen_fd``
        (named in ARGV by ``--listen-fd``) is passed to it, and only to it."""
        if not (self.ready and self.alive()):
            raise ZygoteError("the zygote is not ready")
        self.next_id += 1
        rid = self.next_id
        doc = {"op": "spawn", "id": rid, "argv": argv, "env": env, "cwd": os.getcwd()}
        if listen_fd is not None:
            doc["listen_fd"] = True
        msg = json.dumps(doc).encode()
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            socket.send_fds(self.chan, [msg], [fd] if listen_fd is None else [fd, listen_fd])
        except OSError as exc:
            raise ZygoteError(f"cannot reach the zygote: {exc}") from None
        finally:
            os.close(fd)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.alive():
            for answer in self.pump(min(0.05, max(0.0, deadline - time.monotonic()))):
                if answer.get("id") != rid:
                    continue
                if "pid" in answer:
                    return ForkedProcess(int(answer["pid"]), self)
                raise ZygoteError(str(answer.get("error")))
        raise ZygoteError("the zygote did not answer")

    def close(self, timeout: float = 5.0) -> None:
        """Stop the zygote (its replicas are stopped by the router, not by this)."""
        with contextlib.suppress(OSError):
            self.chan.close()
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


if __name__ == "__main__":
    sys.exit(main())
