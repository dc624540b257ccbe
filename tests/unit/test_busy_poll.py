"""Busy polling after an answer (``nbscale.serving.busypoll``), on a real event loop without a
socket: it polls only after a request that came quickly, stops at its window or as soon as a
request is in progress, and a bad window is refused before the runtime loads anything."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from nbscale.serving import busypoll
from nbscale.serving.busypoll import WINDOW_US, BusyPoll, window_us


class Server:
    """What BusyPoll reads of an HttpServer: the requests read and not answered yet."""

    def __init__(self):
        self.waiting = 0


def _run(coro):
    return asyncio.run(coro)


def _quick_request(poll: BusyPoll, loop) -> None:
    """An answer, the next request at once after it, and its answer: polling starts."""
    poll.answered_now(loop)
    poll.arrived()
    poll.answered_now(loop)


def test_after_a_quick_request_it_polls_for_its_window_then_the_loop_sleeps(monkeypatch):
    # (a turn that another process interrupts ends it: the last test; here none counts)
    monkeypatch.setattr(busypoll, "CONTENDED_S", math.inf)

    async def go():
        loop = asyncio.get_running_loop()
        poll, server = BusyPoll(0.02), Server()
        poll.add(server)
        poll.answered_now(loop)  # an answer; nothing came before it: no polling yet
        assert not poll.polling
        poll.arrived()  # the next request, at once after that answer
        assert poll.hot
        poll.answered_now(loop)
        assert poll.polling
        while poll.polling:
            await asyncio.sleep(0)
        stopped_at = time.perf_counter()
        turns = poll.turns
        await asyncio.sleep(0.05)  # past the window: nothing polls any more
        return stopped_at - poll.deadline, turns, poll.turns, poll.polling

    past_deadline, turns, later, polling = _run(go())
    assert turns > 0 and later == turns and not polling
    assert past_deadline >= 0  # it polled until its window ended, not for a turn or two


def test_a_request_slower_than_the_window_never_makes_it_poll():
    async def go():
        loop = asyncio.get_running_loop()
        poll = BusyPoll(0.005)
        poll.add(Server())
        poll.answered_now(loop)
        await asyncio.sleep(0.02)  # a notebook between cells: longer than the window
        poll.arrived()
        poll.answered_now(loop)
        await asyncio.sleep(0.02)
        return poll

    poll = _run(go())
    assert not poll.hot and poll.turns == 0 and not poll.polling


def test_a_request_in_progress_stops_the_polling_at_once(monkeypatch):
    monkeypatch.setattr(busypoll, "CONTENDED_S", math.inf)  # (a busy machine's yields: below)

    async def go():
        loop = asyncio.get_running_loop()
        poll, quiet, busy = BusyPoll(1.0), Server(), Server()
        poll.add(quiet)
        poll.add(busy)
        _quick_request(poll, loop)
        busy.waiting = 1  # a request read on the other server (the shared socket's)
        for _ in range(3):
            await asyncio.sleep(0)
        stopped = not poll.polling
        # a server that shut down no longer holds it back
        poll.remove(busy)
        poll.arrived()
        poll.answered_now(loop)
        for _ in range(3):
            await asyncio.sleep(0)
        return stopped, poll.turns, poll.polling

    stopped, turns, polling = _run(go())
    assert stopped and turns > 0 and polling


def test_every_turn_gives_the_cpu_to_other_runnable_processes(monkeypatch):
    yields: list[int] = []
    monkeypatch.setattr(busypoll, "_yield", lambda: yields.append(1))

    async def go():
        loop = asyncio.get_running_loop()
        poll = BusyPoll(0.01)
        poll.add(Server())
        _quick_request(poll, loop)
        while poll.polling:
            await asyncio.sleep(0)
        return poll.turns

    turns = _run(go())
    assert turns > 0 and len(yields) == turns


def test_the_window_setting_is_checked_and_says_what_to_set():
    assert window_us(None) == WINDOW_US
    assert window_us("  ") == WINDOW_US
    assert window_us("0") == 0.0
    assert window_us("250") == 250.0
    for bad in ("-1", "nan", "inf", "1e9", "fast"):
        with pytest.raises(ValueError, match="microseconds from 0 .off. to 10000"):
            window_us(bad)


def test_the_runtime_refuses_a_bad_window_before_it_loads_a_model(tmp_path, monkeypatch, capsys):
    from nbscale.serving import server

    loaded: list[str] = []
    monkeypatch.setattr(server, "ModelHandler", lambda d: loaded.append(d))
    args = ["--model-dir", str(tmp_path), "--insecure-no-auth", "--port", "0"]
    assert server.main([*args, "--busy-poll-us", "20000"]) == 2
    assert "--busy-poll-us='20000' is not a number of microseconds" in capsys.readouterr().err
    monkeypatch.setenv(busypoll.WINDOW_ENV, "soon")
    assert server.main(args) == 2
    assert "NBSCALE_BUSY_POLL_US='soon' is not a number of" in capsys.readouterr().err
    # the option, given, is the setting used (the environment's bad value is not read)
    assert server.main([*args, "--busy-poll-us", "-3"]) == 2
    assert "--busy-poll-us='-3'" in capsys.readouterr().err
    assert loaded == []


def test_what_waits_for_the_polling_runs_once_when_it_stops():
    async def go():
        loop = asyncio.get_running_loop()
        poll = BusyPoll(0.005)
        poll.add(Server())
        calls: list[bool] = []
        _quick_request(poll, loop)
        poll.defer(lambda: calls.append(poll.polling))
        assert calls == []
        while poll.polling:
            await asyncio.sleep(0)
        await asyncio.sleep(0.01)
        return calls, poll.deferred

    calls, left = _run(go())
    assert calls == [False] and left == []  # once, after the polling stopped


def test_a_turn_that_let_another_process_run_ends_the_polling(monkeypatch):
    # another process runnable on this CPU: the yield comes back only after it ran
    monkeypatch.setattr(busypoll, "_yield", lambda: time.sleep(0.002))

    async def go():
        loop = asyncio.get_running_loop()
        poll = BusyPoll(1.0)
        poll.add(Server())
        _quick_request(poll, loop)
        for _ in range(5):
            await asyncio.sleep(0)
        return poll

    poll = _run(go())
    # one turn, then it sleeps in epoll long before its window's end
    assert poll.turns == 1 and poll.contended == 1 and not poll.polling
