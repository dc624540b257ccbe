"""Rendezvous and endpoint ports: never from the ephemeral range, never two jobs on one port.

A port taken from the ephemeral range (``bind(('127.0.0.1', 0))``) can be handed to any
outgoing connection before torchrun binds it; in a burst of jobs one job's ranks connecting to
their store took another job's rendezvous port, and that job failed with
``RendezvousConnectionError`` (seen in CI and in a loop of 25 bursts of 20 jobs).
"""

from __future__ import annotations

import socket
import threading
import time

from nbscale.backends.local import ports
from nbscale.backends.local.supervisor import claim_rendezvous_port
from nbscale.store import get_store
from nbscale.store.jobs import FAILED, PENDING, RUNNING, JobRecord, get_job, insert_job


def test_ports_come_from_outside_the_ephemeral_range_and_skip_the_taken():
    low, high = ports.ephemeral_range()
    taken = set(range(ports.LOWEST, low, 2))  # every other quiet port is held by someone
    for _ in range(50):
        port = ports.pick_port(taken)
        assert not low <= port <= high, (port, low, high)
        assert port not in taken and port >= ports.LOWEST


def test_a_port_in_use_is_never_chosen(monkeypatch):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        busy = server.getsockname()[1]
        # a quiet range of one port, held by a listening server: the kernel's choice instead
        monkeypatch.setattr(ports, "quiet_ranges", lambda: [range(busy, busy + 1)])
        assert ports.pick_port() != busy


def _job(job_id: str, status: str, port: int | None = None) -> JobRecord:
    return JobRecord(
        id=job_id,
        name=job_id,
        backend="local",
        backend_type="local",
        status=status,
        spec={},
        created=time.time(),
        info={"port": port} if port else {},
    )


def test_concurrent_claims_give_every_job_its_own_port_and_keep_running_jobs_ports(monkeypatch):
    store = get_store()
    # a narrow quiet range makes a collision likely if claims did not see each other
    low = 40000 if ports.ephemeral_range()[0] > 40100 else ports.LOWEST
    monkeypatch.setattr(ports, "quiet_ranges", lambda: [range(low, low + 24)])
    insert_job(store, _job("running", RUNNING, low))
    insert_job(store, _job("ended", FAILED, low + 1))  # an ended job's port is free again
    ids = [f"burst-{n}" for n in range(16)]
    for job_id in ids:
        insert_job(store, _job(job_id, PENDING))
    claimed: dict[str, int] = {}
    threads = [
        threading.Thread(target=lambda j=j: claimed.__setitem__(j, claim_rendezvous_port(store, j)))
        for j in ids
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(claimed) == 16 and len(set(claimed.values())) == 16, claimed
    assert low not in claimed.values()
    assert all(get_job(store, j).info["port"] == claimed[j] for j in ids)
