"""A local endpoint adds replicas for load only while they would get a CPU of their own."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from nbscale.backends.local.cpu_room import CpuRoom
from nbscale.endpoints import deploy, endpoint, endpoints
from nbscale.store import get_store
from nbscale.store.jobs import events
from tests.support import wait_for
from tests.support.cpus import one_cpu
from tests.support.serving import forward, make_artifact

SPIN = "while True: pass"
SLEEP = "import time; time.sleep(600)"


@pytest.fixture
def procs():
    started: list[subprocess.Popen] = []

    def start(code: str) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-c", code])
        started.append(p)
        return p

    yield start
    for p in started:
        p.kill()
        p.wait()


def _measure(room: CpuRoom, pids: list[int], seconds: float = 1.0) -> float:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        room.sample(time.monotonic(), pids)
        time.sleep(0.1)
    return room.used()


def test_cpu_room_counts_what_the_processes_use_from_their_first_sample(procs):
    # Given a process that spins and one that sleeps, on one CPU's worth of room
    spinner, sleeper = procs(SPIN), procs(SLEEP)
    time.sleep(1.0)  # the spinner has used about a CPU-second before it is first seen
    room = CpuRoom(cpus=1)
    assert room.used() is None and room.room() is None  # nothing measured yet
    # When the sleeper alone is measured, Then it uses next to nothing and leaves the room
    assert _measure(room, [sleeper.pid]) < 0.2
    assert room.room() > 0.8
    # When the spinner is measured too, Then its CPU counts from its first sample only (its
    # second of spinning before is not in the window) and fills the one CPU
    used = _measure(CpuRoom(cpus=1), [sleeper.pid, spinner.pid], 1.5)
    assert 0.4 < used < 1.2
    # And a process that exits keeps what it used in the window: the total never falls
    room = CpuRoom(cpus=2)
    _measure(room, [spinner.pid], 0.6)
    before = room.used()
    spinner.kill()
    spinner.wait()
    room.sample(time.monotonic(), [spinner.pid])
    assert room.used() is not None and room.used() > 0.0 and before > 0.2


@contextlib.contextmanager
def _load(name: str, clients: int):
    stop = threading.Event()
    errors: list[BaseException] = []

    def hammer():
        client = endpoint(name)
        try:
            while not stop.is_set():
                client.predict(np.zeros((1, 64), np.float32))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=hammer) for _ in range(clients)]
    for t in threads:
        t.start()
    try:
        yield errors
    finally:
        stop.set()
        for t in threads:
            t.join(30)


@pytest.fixture
def cleanup():
    yield
    for ep in endpoints():
        ep.delete()


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_on_one_cpu_a_busy_endpoint_keeps_one_replica_and_a_waiting_one_scales(cleanup, tmp_path):
    # Given two autoscaling endpoints (1 to 3 replicas, one request in flight each), both on
    # one CPU: one model keeps its CPU busy 20 ms a call, the other waits 50 ms
    busy_dir, model = make_artifact(tmp_path / "busy", name="spins", busy=True)
    slow_dir, _ = make_artifact(tmp_path / "slow", name="waits", slow=True)
    opts = dict(replicas=(1, 3), max_batch_size=1, target_concurrency=1, scale_down_delay_s=1)
    with one_cpu():
        busy = deploy(str(busy_dir), name="spins", **opts)
        slow = deploy(str(slow_dir), name="waits", **opts)
    assert busy.metrics()["cpu"]["cpus"] == 1
    # When four clients keep the busy one's CPU full
    with _load("spins", 4) as errors:
        wait_for(
            lambda: any(
                e["type"] == "scale_up_held" for e in events(get_store(), "spins", "endpoint")
            ),
            60,
            interval=0.2,
            what="the scale-up held",
        )
        time.sleep(2.0)  # several control ticks while the load asks for more
        m = busy.metrics()
    # Then it stays at one replica: a second would only share that CPU
    assert not errors, errors[:3]
    assert m["replicas"]["current"] == 1 and m["cpu"]["scale_up_held"] is True
    held = [e for e in events(get_store(), "spins", "endpoint") if e["type"] == "scale_up_held"]
    assert held[0]["data"]["cpus"] == 1 and held[0]["data"]["want"] >= 2
    assert held[0]["data"]["cpu_used"] > 0.5
    assert len(m["replica_list"]) == 1
    # When four clients call the one that waits, Then it scales up on the same one CPU
    with _load("waits", 4) as errors:
        wait_for(
            lambda: slow.metrics()["replicas"]["current"] >= 2, 60, interval=0.2, what="scale up"
        )
    assert not errors, errors[:3]
    assert slow.metrics()["cpu"]["scale_up_held"] is False
    # And the busy endpoint still answers correctly
    x = np.ones((2, 64), np.float32)
    np.testing.assert_allclose(busy.predict(x), forward(model, x), rtol=1e-5, atol=1e-6)
