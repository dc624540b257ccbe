"""Adaptive batching: requests queue per model and run together.

A batch is sent to the model as soon as the model is free, so one lone
request never waits. Under load requests pile up while the model works, and
those become the next batch; when the last batches held more than one
request, the batcher also waits up to ``max_batch_delay_ms`` to fill a batch.
The batch size limit moves with the measured batch latency, additive
increase and multiplicative decrease as in Clipper, so a batch's run time
stays under ``latency_target_ms``. The queue is bounded: beyond
``max_queue`` rows a request is refused with ``Overloaded`` (503 upstream).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..words import count

GAP_MIN_S = 0.0002  # never give up on a filling batch sooner than this
INLINE_BELOW_S = 0.002  # a thread hand-off costs ~50 us: tiny forwards run on the loop itself


class Overloaded(Exception):
    pass


class Batcher:
    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        max_batch_size: int = 32,
        max_batch_delay_ms: float = 2.0,
        max_queue: int = 1024,
        latency_target_ms: float = 25.0,
        on_batch: Callable[[int, float], None] | None = None,
    ):
        self.run = run
        self.max_batch_size = max(1, int(max_batch_size))
        self.max_delay = max(0.0, max_batch_delay_ms) / 1000
        self.max_queue = max(1, int(max_queue))
        self.target = latency_target_ms / 1000
        self.limit = self.max_batch_size
        self.on_batch = on_batch
        self.queue: deque[tuple[np.ndarray, asyncio.Future]] = deque()
        self.queued_rows = 0
        self.last_size = 1
        self.ewma_run = 0.0
        self.ewma_gap = 0.0
        self._last_arrival = 0.0
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._busy = False  # a batch is running (in the model thread, or awaiting it)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="nbscale-model")

    @property
    def depth(self) -> int:
        return self.queued_rows

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._worker = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._worker:
            self._worker.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def submit(self, rows: np.ndarray, alone: bool = False) -> np.ndarray:
        """Run ``rows`` (first axis: batch) with whatever else is queued; returns this request's rows.

        ``alone``: the server holds no other request (read and not answered), so there is
        nothing to batch this one with; a fast model then runs it at once, on the loop.
        """
        n = rows.shape[0]
        if self.queued_rows + n > self.max_queue:
            raise Overloaded(
                f"the request queue is full ({count(self.queued_rows, 'row')} waiting); retry shortly"
            )
        now = time.perf_counter()
        self.ewma_gap = 0.9 * self.ewma_gap + 0.1 * min(now - self._last_arrival, 0.01)
        self._last_arrival = now
        if (
            (alone or self.max_batch_size == 1)
            and not self.queue
            and not self._busy
            and 0 < self.ewma_run < INLINE_BELOW_S
        ):  # nothing to batch with and a fast model: no queue hop (two loop turns) for nothing
            return self._run_now(rows)
        fut = asyncio.get_running_loop().create_future()
        self.queue.append((rows, fut))
        self.queued_rows += n
        self._wake.set()
        return await fut

    def _run_now(self, rows: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        out = self.run(rows)
        elapsed = time.perf_counter() - start
        self._adapt(rows.shape[0], elapsed)
        if self.on_batch:
            self.on_batch(rows.shape[0], elapsed)
        if not isinstance(out, np.ndarray) or out.shape[:1] != rows.shape[:1]:
            raise RuntimeError(
                f"the model returned {getattr(out, 'shape', type(out).__name__)} for a batch of "
                f"{rows.shape[0]}; predict_fn must return one row per input row"
            )
        return out

    async def _fill(self) -> None:
        """Wait for more requests only when recent batches show concurrent callers.

        The batch waits (at most ``max_batch_delay_ms``) for as many rows as the
        previous batch had: closed-loop callers come back together, so a batch
        fills fast, and a batch never waits for callers that do not exist. It
        also stops once no request came for a few typical inter-arrival gaps,
        so one straggler does not hold the others for the whole delay.
        """
        await asyncio.sleep(0)  # lets requests already read off sockets join
        want = min(self.limit, self.last_size)
        if self.max_delay <= 0 or want <= 1:
            return
        deadline = time.perf_counter() + self.max_delay
        while self.queued_rows < want:
            left = deadline - time.perf_counter()
            if left <= 0:
                return
            gap = max(GAP_MIN_S, 4 * self.ewma_gap)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), min(left, gap))
            except TimeoutError:
                return

    def _take(self) -> list[tuple[np.ndarray, asyncio.Future]]:
        batch, rows = [], 0
        while self.queue:
            n = self.queue[0][0].shape[0]
            if batch and rows + n > self.limit:
                break
            item = self.queue.popleft()
            self.queued_rows -= n
            if item[1].cancelled():
                continue
            batch.append(item)
            rows += n
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._fill()
            batch = self._take()
            if not batch:
                continue
            arrays = [a for a, _ in batch]
            stacked = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
            start = time.perf_counter()
            self._busy = True
            try:
                if self.ewma_run < INLINE_BELOW_S:
                    out = self.run(stacked)
                else:
                    out = await loop.run_in_executor(self._pool, self.run, stacked)
            except Exception as exc:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            finally:
                self._busy = False
            elapsed = time.perf_counter() - start
            self._adapt(stacked.shape[0], elapsed)
            if self.on_batch:
                self.on_batch(stacked.shape[0], elapsed)
            if not isinstance(out, np.ndarray) or out.shape[:1] != stacked.shape[:1]:
                err = RuntimeError(
                    f"the model returned {getattr(out, 'shape', type(out).__name__)} for a batch of {stacked.shape[0]}; "
                    "predict_fn must return one row per input row"
                )
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(err)
                continue
            i = 0
            for a, fut in batch:
                n = a.shape[0]
                if not fut.done():
                    fut.set_result(out[i : i + n])
                i += n

    def _adapt(self, size: int, elapsed: float) -> None:
        self.last_size = size
        self.ewma_run = elapsed if self.ewma_run == 0 else 0.8 * self.ewma_run + 0.2 * elapsed
        if elapsed > self.target and self.limit > 1:
            self.limit = max(1, int(self.limit * 0.75))
        elif size >= self.limit and self.limit < self.max_batch_size:
            self.limit = min(self.max_batch_size, self.limit + max(1, self.limit // 8))
