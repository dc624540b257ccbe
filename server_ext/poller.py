"""Keeps active jobs' status fresh in the store while the server runs.

It asks each backend about PENDING and RUNNING jobs every ``interval``
seconds, on the extension's thread pool, so the list route can answer from
the store alone. Started and stopped by the extension's hooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from nbscale.config import Config
from nbscale.jobs import jobs as list_job_handles
from nbscale.store.jobs import ACTIVE


def refresh_active(config: Config) -> int:
    """Refresh every active job once; returns how many were looked at."""
    seen = 0
    for status in ACTIVE:
        seen += len(list_job_handles(status=status, limit=500, refresh=True, config=config))
    return seen


class Poller:
    def __init__(
        self,
        run_blocking: Callable[[Callable[[], Any]], Awaitable[Any]],
        load_config: Callable[[], Config],
        on_config: Callable[[Config], None],
        interval: float,
        log: logging.Logger,
    ):
        self._run_blocking = run_blocking
        self._load_config = load_config
        self._on_config = on_config
        self.interval = interval
        self.log = log
        self._task: asyncio.Task | None = None
        self.ticks = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="nbscale-poller")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def tick(self) -> None:
        config = await self._run_blocking(self._load_config)
        self._on_config(config)
        await self._run_blocking(lambda: refresh_active(config))
        self.ticks += 1

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a broken config or backend must not stop polling
                self.log.warning("nbscale: refreshing jobs failed: %s", exc)
            await asyncio.sleep(self.interval)
