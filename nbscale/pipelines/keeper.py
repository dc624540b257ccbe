"""``python -m nbscale.pipelines.keeper KEY KERNEL_NAME``: keeps one fresh kernel warm for KEY.

Started by a run's end (``warm.WarmKernels.finish``) in its own session, in the kernel's
folder and with exactly the kernel's environment. It keeps one kernel of KEY starting or ready
while no run of KEY is going on and the pool has room; hands nothing out itself (runs claim
kernels in the registry); reaps the kernels runs took once they kill them, and kills one
whose run died; shuts its kernels down and exits when KEY was not used for the TTL, when the
home's pool folder is removed, or on SIGTERM (after the kernels runs took are done).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
import uuid
from typing import Any

from . import warm

POLL = 0.2
# seconds after a run of the key ends before its replacement starts: a run started at once
# (an unchanged re-run, all from the cache, takes a few tenths) keeps the cores to itself
SETTLE = 1.0
MAX_FAILURES = 3


def _say(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} keeper {os.getpid()}: {message}", flush=True)


class Keeper:
    def __init__(self, key: str, kernel_name: str):
        self.key = key
        self.kernel_name = kernel_name
        _, self.size, self.ttl = warm.settings()
        self.folder = warm.pool_dir()
        self.me = warm.me()
        self.mine: dict[str, Any] = {}  # id -> PooledKernel (this process's children)
        self.stop = threading.Event()
        self.failures = 0

    # -- kernels -------------------------------------------------------------------------------
    def _reap(self) -> list[str]:
        """Kernels of this process that exited (killed by the run that took them, or died):
        reaped, their folders removed; returns their ids."""
        gone = []
        for kid, kernel in list(self.mine.items()):
            if not kernel.ready.is_set():
                continue
            process = getattr(getattr(kernel.km, "provisioner", None), "process", None)
            if kernel.error is not None or process is None or process.poll() is not None:
                kernel._cleanup()
                del self.mine[kid]
                gone.append(kid)
                if kernel.error is not None:
                    self.failures += 1
                    _say(f"a kernel did not start: {kernel.error}")
        return gone

    # -- the loop ------------------------------------------------------------------------------
    def register(self) -> bool:
        with warm.registry(self.folder) as state:
            entry = state["keys"].setdefault(self.key, {"last_used": time.time(), "holders": []})
            if warm.exists(entry.get("keeper")) and entry["keeper"][0] != self.me[0]:
                return False  # another keeper has this key
            entry["keeper"] = self.me
        return True

    def tick(self) -> bool:
        """One look at the registry; False when this keeper is done."""
        gone = self._reap()
        if not self.folder.is_dir():
            self.stop.set()
        start = False
        with warm.registry(self.folder) as state:
            for kid in gone:
                state["kernels"].pop(kid, None)
            entry = state["keys"].setdefault(self.key, {"last_used": time.time(), "holders": []})
            holders = warm.prune_holders(entry)
            if entry.get("keeper") and entry["keeper"][0] != self.me[0]:
                self.stop.set()  # another keeper took this key over (this one was stopped)
            now = time.time()
            expired = not holders and now - float(entry.get("last_used") or 0) > self.ttl
            mine = {k: v for k, v in state["kernels"].items() if k in self.mine}
            waiting = [k for k, v in mine.items() if v.get("state") in ("starting", "ready")]
            for kid, entry_k in mine.items():  # a kernel whose run died before killing it
                if entry_k.get("state") == "taken" and not warm.exists(entry_k.get("taker")):
                    self.mine[kid].kill()
            for kid in list(self.mine):  # evicted by a more recently used key
                if kid not in state["kernels"]:
                    self.mine[kid].kill()
            if self.stop.is_set() or expired or self.failures >= MAX_FAILURES:
                for kid in waiting:
                    self.mine[kid].kill()
                    state["kernels"].pop(kid, None)
                if not self.mine:
                    if entry.get("keeper") and entry["keeper"][0] == self.me[0]:
                        entry["keeper"] = None
                    if expired:
                        state["keys"].pop(self.key, None)
                    return False
                return True
            settled = now - float(entry.get("last_used") or 0) >= SETTLE
            if not holders and not waiting and settled:
                counted = [
                    (k, v)
                    for k, v in state["kernels"].items()
                    if v.get("state") in ("starting", "ready")
                ]
                if len(counted) >= self.size:
                    mine_used = float(entry.get("last_used") or 0)
                    older = sorted(
                        (
                            (float(state["keys"].get(v.get("key"), {}).get("last_used") or 0), k, v)
                            for k, v in counted
                            if v.get("state") == "ready" and v.get("key") != self.key
                        ),
                        key=lambda t: t[0],
                    )
                    if older and older[0][0] < mine_used:
                        _, victim, v = older[0]
                        with contextlib.suppress(OSError):
                            if warm.process_state(v.get("pid"), v.get("started")) != "gone":
                                os.kill(int(v["pid"]), signal.SIGKILL)
                        del state["kernels"][victim]
                        counted = [c for c in counted if c[0] != victim]
                if len(counted) < self.size:
                    start = True
                elif not self.mine:
                    if entry.get("keeper") and entry["keeper"][0] == self.me[0]:
                        entry["keeper"] = None
                    return False  # no room for this key: the keys used later keep theirs
            if start:
                kid = uuid.uuid4().hex[:12]
                state["kernels"][kid] = {"key": self.key, "state": "starting", "owner": self.me}
        if start:
            self._boot(kid)
        return True

    def _boot(self, kid: str) -> None:
        from .kernels import KernelPool, PooledKernel

        KernelPool.import_client()  # here, not at the start: see SETTLE

        kernel = PooledKernel(self.kernel_name, os.getcwd(), dict(os.environ))
        self.mine[kid] = kernel

        def boot() -> None:
            import psutil

            kernel.start()
            with warm.registry(self.folder) as state:
                entry = state["kernels"].get(kid)
                started = None
                with contextlib.suppress(psutil.Error, TypeError, ValueError):
                    started = psutil.Process(kernel.pid).create_time()
                if entry is None or kernel.error is not None or started is None:
                    state["kernels"].pop(kid, None)
                    if kernel.error is None:
                        kernel.kill()
                    return
                entry.update(
                    state="ready",
                    pid=kernel.pid,
                    started=started,
                    connection=kernel.km.connection_file,
                    folder=kernel._sockets.folder,
                    ready_at=time.time(),
                )
            self.failures = 0

        threading.Thread(target=boot, name="nbscale-keeper-boot", daemon=True).start()

    def run(self) -> int:
        if not self.register():
            return 0
        _say(
            f"keeping a kernel warm for key {self.key[:12]} (size {self.size}, ttl {self.ttl:g} s)"
        )
        try:
            while True:
                try:
                    if not self.tick():
                        break
                except FileNotFoundError:
                    self.stop.set()  # the home was removed
                    for kernel in self.mine.values():
                        kernel.kill()
                    if not self._reap() and not self.mine:
                        break
                time.sleep(POLL)
        finally:
            for kernel in self.mine.values():
                with contextlib.suppress(Exception):
                    kernel.close()
        _say("done")
        return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    keeper = Keeper(argv[0], argv[1] if len(argv) > 1 else "python3")

    def terminate(signum: int, frame: Any) -> None:
        keeper.stop.set()

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)
    return keeper.run()


if __name__ == "__main__":
    sys.exit(main())
