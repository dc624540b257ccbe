"""Busy polling after an answer: the next request is read without waking a sleeping process.

A server that has answered and has nothing else to do sleeps in ``epoll_wait``; the next
request then has to wake it (an interrupt, the scheduler, on a virtual machine an exit to the
hypervisor), and at one connection that wake-up is a large part of every round trip. Linux's
``busy_poll`` socket option, Seastar and DPDK servers and Go's scheduler all answer it the same
way: poll for a short while before sleeping. ``BusyPoll`` does that on the event loop: after an
answer, while no request is in progress on the servers it serves, it keeps one callback in the
loop's ready queue, so the loop polls ``epoll`` without a timeout instead of sleeping, for at
most ``window_s``.

It spends CPU only where that pays: it polls only when the request before came within the
window of the answer before it (a client that waits longer, like a notebook between cells,
never makes it poll), it stops as soon as a request is in progress, and every turn gives the
CPU to any other runnable process first (``sched_yield``). A turn whose yield let another
process run (it took longer than ``CONTENDED_S``) ends the polling: the router, another
replica or the user's kernel wants this CPU, and a process that polls beside them only adds
context switches and loses the scheduler's preference for a task it wakes. Two replicas of a
direct endpoint sharing one CPU served a fifth fewer requests at 32 connections before this
rule (``bench_serving``, 2026-12-07 06:59). The CPU it fills would otherwise be idle
for less than the window; the process's CPU time counts it (``bench_serving`` reports CPU per
request with it on).

A listening socket that other processes accept on too (the endpoint's socket, shared by the
replicas that serve it) is not accepted from while polling (``defer``): a polling process sees
every new connection first, and would take all of them from the replicas the kernel woke for
them (the connections of a direct endpoint would no longer spread over its replicas). Its
accept waits until the polling stops, at most the window.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Callable

from ..number_settings import number_setting

WINDOW_ENV = "NBSCALE_BUSY_POLL_US"
WINDOW_US = 100.0  # longer than a closed-loop client's turn around, short enough to cost little
WINDOW_MAX_US = 10_000.0
CONTENDED_S = 20e-6  # a yield with no one else to run returns in about a microsecond

_yield: Callable[[], None] = getattr(os, "sched_yield", lambda: None)
_now = time.perf_counter


def window_us(raw: str | None, source: str = WINDOW_ENV) -> float:
    """A window in microseconds from the setting ``source`` (``None`` or empty: the default;
    0: off); a ``ValueError`` that names the setting and says what to set."""
    return number_setting(
        raw,
        WINDOW_US,
        lambda us: 0.0 <= us <= WINDOW_MAX_US,
        f"{source}={raw!r} is not a number of microseconds from 0 (off) to "
        f"{WINDOW_MAX_US:g}: set it like {WINDOW_US:g}, or 0 to sleep in epoll at once",
    )


class BusyPoll:
    """One process's busy polling, shared by the servers it answers on (``add``)."""

    __slots__ = (
        "window",
        "servers",
        "answered",
        "hot",
        "deadline",
        "polling",
        "loop",
        "turns",
        "deferred",
        "contended",
    )

    def __init__(self, window_s: float):
        self.window = window_s
        self.servers: list = []  # HttpServer: their ``waiting`` requests stop the polling
        self.answered = -math.inf  # when the last answer was written
        self.hot = False  # the last request came within the window of the answer before it
        self.deadline = 0.0
        self.polling = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.turns = 0  # loop turns spent polling (for tests and the curious)
        self.deferred: list[Callable[[], None]] = []
        self.contended = 0  # pollings ended because another process wanted the CPU

    def add(self, server) -> None:
        self.servers.append(server)

    def remove(self, server) -> None:
        if server in self.servers:
            self.servers.remove(server)

    def defer(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the polling stops (a shared socket's accept)."""
        self.deferred.append(callback)

    def arrived(self) -> None:
        """A request began: was it quick after the last answer?"""
        self.hot = _now() - self.answered < self.window

    def answered_now(self, loop: asyncio.AbstractEventLoop) -> None:
        """An answer was written and its connection has nothing else to answer."""
        now = self.answered = _now()
        if not self.hot:
            return
        self.deadline = now + self.window
        if not self.polling:
            self.polling = True
            self.loop = loop
            loop.call_soon(self._turn)

    def _turn(self) -> None:
        now = _now()
        if now < self.deadline and not any(s.waiting for s in self.servers):
            self.turns += 1
            _yield()
            if _now() - now < CONTENDED_S:
                self.loop.call_soon(self._turn)
                return
            self.contended += 1  # another process ran: this CPU is wanted, sleep in epoll
        self.polling = False
        if self.deferred:
            deferred, self.deferred = self.deferred, []
            for callback in deferred:
                callback()
