"""Kernels kept warm between pipeline runs, so a run's first step does not wait for a boot.

A run's own pool (``kernels.KernelPool``) starts kernels while earlier steps run; nothing
runs before the first step, so without this it waits for a kernel's boot. Here:

- a **keeper** (``python -m nbscale.pipelines.keeper KEY``, its own session) keeps one
  fresh, never used kernel ready for an *environment key*: everything that makes the
  kernel's environment (the kernelspec and its file, this interpreter, every variable of the
  environment the kernel gets, its working directory, the nbscale version, the site folders'
  and the warm-up modules' times). A keeper is started with exactly that environment and
  folder, so nothing about it is written anywhere; one keeper per key and home.
- a run **claims** a ready kernel of its first step's key; only that key's kernel can be
  claimed, so a run with another environment never gets it. The kernel serves that one step
  and is killed after it, like every pooled kernel; it is never returned.
- when a run that used a key ends, the key's keeper starts a replacement (never while a run
  of that key is going on, so it does not take the cores from it), or is started for it.
- the pool is bounded per ``$NBSCALE_HOME`` (``NBSCALE_KERNEL_POOL_SIZE``, default 2,
  kernels starting or ready, all keys together; the key used longest ago gives way), and a
  key nobody used for ``NBSCALE_KERNEL_POOL_TTL`` seconds (default 300) has its kernel shut
  down and its keeper exits. ``NBSCALE_KERNEL_POOL=0`` turns all of it off.
- the registry is ``$NBSCALE_HOME/pipelines/kernel-pool/state.json`` (0600, in a 0700
  folder, changed only under ``flock``): keys, keepers, kernels' pids and start times and the
  path of each kernel's connection file (in the kernel's own 0700 folder). A kernel whose
  process is gone, or whose pid now belongs to another process, is skipped and dropped.
- warm kernels are the keeper's children and exit when it does (ipykernel's parent poller),
  so a keeper killed outright leaves no kernel behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .. import file_lock, paths

ENABLE_ENV = "NBSCALE_KERNEL_POOL"
SIZE_ENV = "NBSCALE_KERNEL_POOL_SIZE"
TTL_ENV = "NBSCALE_KERNEL_POOL_TTL"
DEFAULT_SIZE = 2
DEFAULT_TTL = 300.0
MAX_SIZE = 16  # an idle kernel holds about 100 MiB
MAX_TTL = 86_400.0  # a day
KEEPER_MODULE = "nbscale.pipelines.keeper"
# what every pooled kernel imports while nobody waits (``kernels.WARMUP``); their files are in
# the environment key, so a warm kernel never holds a module older than its file
WARMUP_MODULES = ("nbscale.pipelines.artifacts", "numpy", "cloudpickle")


# -- settings ----------------------------------------------------------------------------------
def settings(env: dict[str, str] | None = None) -> tuple[bool, int, float]:
    """(enabled, size, ttl) from the environment; a bad value is a ``SpecError`` saying so."""
    from ..errors import SpecError

    env = os.environ if env is None else env
    raw = env.get(ENABLE_ENV, "1").strip().lower()
    if raw not in ("0", "1", "false", "true", "no", "yes", "off", "on", ""):
        raise SpecError(ENABLE_ENV, f"is {raw!r}, not on or off", f"set {ENABLE_ENV}=0 or =1")
    enabled = raw not in ("0", "false", "no", "off")
    try:
        size = int(env.get(SIZE_ENV) or DEFAULT_SIZE)
        if not 0 <= size <= MAX_SIZE:
            raise ValueError
    except ValueError:
        raise SpecError(
            SIZE_ENV,
            f"is {env.get(SIZE_ENV)!r}, not a count of kernels from 0 to {MAX_SIZE}",
            f"set it to a whole number like {DEFAULT_SIZE} (0 turns the pool off), or unset it",
        ) from None
    try:
        ttl = float(env.get(TTL_ENV) or DEFAULT_TTL)
        if not 0 < ttl <= MAX_TTL:
            raise ValueError
    except ValueError:
        raise SpecError(
            TTL_ENV,
            f"is {env.get(TTL_ENV)!r}, not a number of seconds above 0 and up to {MAX_TTL:.0f}",
            f"set it to seconds, like {DEFAULT_TTL:g}, or unset it",
        ) from None
    return enabled and size > 0 and os.name == "posix", size, ttl


# -- the environment key -----------------------------------------------------------------------
def _stat(path: str | None) -> list[int] | None:
    try:
        st = os.stat(path) if path else None
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_size] if st else None


def _kernelspec(kernel_name: str) -> dict[str, Any]:
    from jupyter_client.kernelspec import NoSuchKernel

    from ..kernel_transport import spec_manager

    try:
        spec = spec_manager(kernel_name).get_kernel_spec(kernel_name)
    except NoSuchKernel:
        return {"missing": kernel_name}
    file = os.path.join(spec.resource_dir, "kernel.json")
    return {"dir": spec.resource_dir, "argv": spec.argv, "env": spec.env, "file": _stat(file)}


def _site_folders() -> list[str]:
    import site

    folders = list(site.getsitepackages()) if hasattr(site, "getsitepackages") else []
    with contextlib.suppress(Exception):
        folders.append(site.getusersitepackages())
    return folders


def environment_key(kernel_name: str, cwd: str, env: dict[str, str]) -> str:
    """The key of a kernel's environment: two runs share warm kernels only when it is equal."""
    import importlib.util

    from ..version import __version__

    warm = {}
    for module in WARMUP_MODULES:
        with contextlib.suppress(Exception):
            spec = importlib.util.find_spec(module)
            warm[module] = _stat(spec.origin if spec else None)
    parts = {
        "kernel": kernel_name,
        "spec": _kernelspec(kernel_name),
        "python": sys.executable,
        "cwd": os.path.realpath(cwd),
        "env": sorted(env.items()),
        "nbscale": __version__,
        "site": [(f, _stat(f)) for f in _site_folders()],
        "warm": warm,
        "uid": os.getuid() if hasattr(os, "getuid") else None,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


# -- the registry ------------------------------------------------------------------------------
def pool_dir(create: bool = True) -> Path:
    path = paths.home() / "pipelines" / "kernel-pool"
    if create:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def _empty() -> dict[str, Any]:
    return {"keys": {}, "kernels": {}}


@contextlib.contextmanager
def registry(folder: Path | None = None) -> Iterator[dict[str, Any]]:
    """The registry, locked; what the block leaves in it is written back (0600)."""
    folder = folder or pool_dir()
    # POSIX: the pool is not offered elsewhere (see settings)
    with file_lock.exclusive(folder / "state.lock"):
        path = folder / "state.json"
        try:
            state = json.loads(path.read_text())
            if not isinstance(state, dict) or set(state) != {"keys", "kernels"}:
                state = _empty()
        except (OSError, ValueError):
            state = _empty()
        before = json.dumps(state, sort_keys=True)
        yield state
        after = json.dumps(state, sort_keys=True)
        if after != before:
            tmp = folder / f"state.json.{os.getpid()}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(after)
            os.replace(tmp, path)


def me() -> list[float]:
    """This process as [pid, start time], as the registry names processes."""
    import psutil

    return [os.getpid(), psutil.Process().create_time()]


def process_state(pid: int | None, started: float | None) -> str:
    """'alive', 'stopped' (SIGSTOP) or 'gone' (no process, a zombie, or another process
    that got the pid since)."""
    import psutil

    if not pid:
        return "gone"
    try:
        proc = psutil.Process(int(pid))
        if started is not None and abs(proc.create_time() - float(started)) > 0.5:
            return "gone"
        status = proc.status()
    except psutil.Error:
        return "gone"
    if status == psutil.STATUS_ZOMBIE:
        return "gone"
    return "stopped" if status in (psutil.STATUS_STOPPED, "tracing-stop") else "alive"


def alive(who: list[float] | None) -> bool:
    return bool(who) and process_state(who[0], who[1]) == "alive"  # type: ignore[index]


def exists(who: list[float] | None) -> bool:
    """The process still exists (running or stopped)."""
    return bool(who) and process_state(who[0], who[1]) != "gone"  # type: ignore[index]


def prune_holders(entry: dict[str, Any]) -> list[list[float]]:
    entry["holders"] = [h for h in entry.get("holders", []) if exists(h)]
    return entry["holders"]


# -- a run's side ------------------------------------------------------------------------------
class WarmKernels:
    """What one run does with the pool: claim its first step's kernel, and at its end ask for
    the next run's."""

    def __init__(self, kernel_name: str, env: dict[str, str]):
        self.kernel_name = kernel_name
        self.env = env
        self.enabled, self.size, self.ttl = settings(env)
        self.keys: dict[str, str] = {}  # cwd -> key, the keys this run holds
        self.claimed = 0

    def key(self, cwd: str) -> str:
        if cwd not in self.keys:
            self.keys[cwd] = environment_key(self.kernel_name, cwd, self.env)
        return self.keys[cwd]

    def claim(self, cwd: str) -> dict[str, Any] | None:
        """A ready warm kernel for ``cwd`` in this run's environment, now this run's; None if
        there is none. Kernels whose process is gone are dropped from the registry."""
        if not self.enabled:
            return None
        try:
            return self._claim(cwd)
        except OSError as exc:  # the registry cannot be read or written: the run starts its own
            print(f"nbscale: no warm kernel ({exc})", file=sys.stderr, flush=True)
            return None

    def _claim(self, cwd: str) -> dict[str, Any] | None:
        key = self.key(cwd)
        mine = me()
        found = None
        with registry() as state:
            entry = state["keys"].setdefault(key, {"last_used": time.time(), "holders": []})
            prune_holders(entry)
            entry["holders"].append(mine)  # the keeper starts no replacement while this runs
            for kid, kernel in list(state["kernels"].items()):
                if kernel.get("key") != key or kernel.get("state") != "ready":
                    continue
                health = process_state(kernel.get("pid"), kernel.get("started"))
                connection = kernel.get("connection")
                if health == "gone" or not connection or not os.path.exists(connection):
                    del state["kernels"][kid]  # stale: killed, its files left behind
                    continue
                if health != "alive":
                    continue  # stopped: not usable now, its keeper decides
                kernel["state"], kernel["taker"] = "taken", mine
                found = {"id": kid, **kernel}
                break
        if found is not None:
            self.claimed += 1
        return found

    def finish(self, start_keepers: bool = True) -> None:
        """The run ended: its keys were just used; their keepers start replacements (and are
        started here where none runs)."""
        if not self.enabled or not self.keys:
            return
        mine = me()
        spawn = []
        with contextlib.suppress(OSError), registry() as state:
            now = time.time()
            for key in set(self.keys.values()):
                entry = state["keys"].setdefault(key, {"holders": []})
                entry["holders"] = [h for h in prune_holders(entry) if h[:2] != mine[:2]]
                entry["last_used"] = now
                if start_keepers and not exists(entry.get("keeper")):
                    entry["keeper"] = None
                    spawn.append(key)
        for cwd, key in self.keys.items():
            if key in spawn:
                spawn.remove(key)
                with contextlib.suppress(OSError):
                    start_keeper(key, self.kernel_name, cwd, self.env)


def start_keeper(key: str, kernel_name: str, cwd: str, env: dict[str, str]) -> int:
    """The key's keeper, in its own session, with exactly the kernel's environment and folder."""
    import subprocess

    log = pool_dir() / f"keeper-{key[:12]}.log"
    with open(log, "ab") as out:
        os.chmod(log, 0o600)
        proc = subprocess.Popen(
            [sys.executable, "-m", KEEPER_MODULE, key, kernel_name],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(env),
            cwd=cwd,
        )
    return proc.pid


def kernels(folder: Path | None = None) -> list[dict[str, Any]]:
    """The registry's kernels (id, key, state, pid, started), for tests and status."""
    folder = folder or pool_dir()
    if not (folder / "state.json").exists():
        return []
    with registry(folder) as state:
        return [{"id": k, **v} for k, v in state["kernels"].items()]


def keepers(folder: Path | None = None) -> list[list[float]]:
    folder = folder or pool_dir()
    if not (folder / "state.json").exists():
        return []
    with registry(folder) as state:
        return [e["keeper"] for e in state["keys"].values() if exists(e.get("keeper"))]


def shutdown(timeout: float = 30.0, folder: Path | None = None) -> bool:
    """Stop every keeper of this home (SIGTERM: each kills its warm kernels and exits once the
    kernels runs took are done). True when all are gone within ``timeout``."""
    import signal

    running = keepers(folder)
    for pid, _ in running:
        with contextlib.suppress(OSError):
            os.kill(int(pid), signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(exists(k) for k in running):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


# -- adopting a kernel another process started --------------------------------------------------
def adopted_manager(entry: dict[str, Any], kernel_name: str) -> Any:
    """An ``AsyncKernelManager`` for a kernel the keeper started: connected by its connection
    file, alive while its process is, killed by pid. jupyter_client's provisioner interface
    is what a manager asks about its kernel's process; this one answers from the pid."""
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_client.provisioning.provisioner_base import KernelProvisionerBase

    pid, started = int(entry["pid"]), float(entry["started"])

    class AdoptedProvisioner(KernelProvisionerBase):
        """A kernel process this one did not start (not its child: its keeper reaps it)."""

        @property
        def has_process(self) -> bool:
            return process_state(pid, started) != "gone"

        async def poll(self) -> int | None:
            return None if self.has_process else 0

        async def wait(self) -> int | None:
            import asyncio

            while self.has_process:
                await asyncio.sleep(0.05)
            return 0

        async def send_signal(self, signum: int) -> None:
            if self.has_process:
                with contextlib.suppress(OSError):
                    os.kill(pid, signum)

        async def kill(self, restart: bool = False) -> None:
            import signal

            await self.send_signal(signal.SIGKILL)

        async def terminate(self, restart: bool = False) -> None:
            import signal

            await self.send_signal(signal.SIGTERM)

        async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> Any:
            raise RuntimeError("an adopted kernel is already running; it is never launched")

        async def cleanup(self, restart: bool = False) -> None:
            return None

    km = AsyncKernelManager(kernel_name=kernel_name, connection_file=entry["connection"])
    km.load_connection_file()
    km.provisioner = AdoptedProvisioner(kernel_id=entry.get("id"), parent=km)
    km.provisioner.pid = pid  # as LocalProvisioner names it: PooledKernel.kill reads it
    return km
