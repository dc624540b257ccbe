"""``python -m nbscale.monitoring.idle_watch NAME``: deletes a cloud endpoint once idle.

Started detached by ``deploy(..., idle_ttl=...)`` for endpoints on a cloud
backend (a local endpoint's router does this itself). It looks every quarter
TTL (between 5 s and 5 min) and exits when the endpoint is gone, deleted by it
or by anyone else, or after 24 failed looks in a row (an ``idle_watch_stopped``
event says why).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from ..errors import NotFound
from ..store import get_store
from ..store.endpoints import get_endpoint
from .idle import idle_teardown

WATCH_ENV = "NBSCALE_IDLE_WATCH"
MAX_FAILURES = 24  # consecutive failed looks before the watcher gives up (and says so)
log = logging.getLogger("nbscale.monitoring.idle_watch")


def start_idle_watch(name: str, log_path: str | os.PathLike | None = None) -> None:
    """Start the watcher in a session of its own, forked once more so nobody has to wait for it."""
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - the child's
    proc = subprocess.Popen(
        [sys.executable, "-m", "nbscale.monitoring.idle_watch", name, "--daemonize"],
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, WATCH_ENV: name},
        start_new_session=True,
    )
    if log_path:
        out.close()
    proc.wait(timeout=30)  # the intermediate exits at once; the watcher lives on


def watch(name: str) -> int:
    store = get_store()
    failures = 0
    while True:
        try:
            rec = get_endpoint(store, name)
        except NotFound:
            return 0  # undeployed by someone else
        ttl = float((rec.config or {}).get("idle_ttl_s") or 0)
        if not ttl:
            return 0
        try:
            if idle_teardown(name):
                log.warning("endpoint %s: no invocation for %.0f s, deleted", name, ttl)
                return 0
            failures = 0
        except Exception as exc:  # the platform did not answer: look again later
            failures += 1
            log.warning("endpoint %s: idle check failed (%d in a row): %s", name, failures, exc)
            if failures >= MAX_FAILURES:  # credentials gone, region down: say so, stop watching
                from ..store.events import record_event

                record_event(
                    store, "endpoint", name, "idle_watch_stopped", {"error": str(exc)[:500]}
                )
                return 1
        time.sleep(min(300.0, max(5.0, ttl / 4)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nbscale.monitoring.idle_watch")
    p.add_argument("name")
    p.add_argument("--daemonize", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.daemonize and os.fork():
        os._exit(0)  # re-parented to init: it outlives the kernel or CLI that deployed
    return watch(args.name)


if __name__ == "__main__":
    sys.exit(main())
