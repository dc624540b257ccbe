"""Idle endpoints: --idle-ttl scales a local endpoint to zero (no replica left, event logged);
``nbscale idle`` lists what runs and what it costs per hour."""

from __future__ import annotations

import json

import numpy as np
import psutil
import pytest

from nbscale.backends.local.endpoints import ENDPOINT_ENV
from nbscale.backends.local.processes import tagged_processes
from nbscale.endpoints import deploy, endpoints
from nbscale.monitoring.idle import running_things
from nbscale.store import get_store
from nbscale.store.events import IDLE_TEARDOWN, list_events
from tests.support import wait_for
from tests.support.serving import mlp


@pytest.fixture
def cleanup():
    yield
    for ep in endpoints():
        ep.delete()


def test_idle_ttl_scales_a_local_endpoint_to_zero_and_the_next_request_brings_it_back(
    cleanup, tmp_path, nbscale_cli
):
    # Given an endpoint with a minimum of one replica, priced at $0.50 a node-hour, and an 8 s TTL
    (tmp_path / "nbscale.toml").write_text(
        '[backends.local]\ntype = "local"\nnode_hour_price = 0.5\n'
    )
    ep = deploy(mlp(), name="sleepy", replicas=(1, 2), idle_ttl=8)
    x = np.random.default_rng(0).random((2, 64), dtype=np.float32)
    ep.predict(x)
    listed = {t["name"]: t for t in running_things()}
    assert listed["sleepy"]["cost_per_hour"] == 0.5 and listed["sleepy"]["idle_ttl_s"] == 8
    assert listed["sleepy"]["idle_s"] is not None
    table = nbscale_cli("idle", check=True).stdout
    assert "sleepy" in table and "$0.50/h" in table and "running now: $0.50 per hour" in table
    # When no request comes for longer than the TTL
    wait_for(lambda: ep.refresh().status == "SCALED_TO_ZERO", 60, what="scale to zero")

    # Then only the router is left, the event is logged, and it costs nothing now
    def replicas() -> list:
        left = []
        for p in tagged_processes(ENDPOINT_ENV, "sleepy"):
            try:  # one that ends between the listing and this read is not left
                if "nbscale.backends.local.router" not in " ".join(p.cmdline()):
                    left.append(p)
            except psutil.NoSuchProcess:  # gone, or a zombie (ZombieProcess)
                continue
        return left

    wait_for(lambda: replicas() == [], 30, what="no replica process left")
    events = list_events(get_store(), kind="endpoint", ref="sleepy", types=[IDLE_TEARDOWN])
    assert len(events) == 1 and events[0]["data"]["idle_s"] >= 8
    out = json.loads(nbscale_cli("idle", "--json", check=True).stdout)
    assert [(t["name"], t["cost_per_hour"]) for t in out] == [("sleepy", 0.0)]
    # When a request arrives, a replica cold-starts and answers
    assert ep.predict(x).shape == (2, 10)
    assert ep.refresh().status == "READY" and ep.record.replicas >= 1
    assert [t["cost_per_hour"] for t in running_things()] == [0.5]


def test_nbscale_idle_with_nothing_running(nbscale_cli):
    assert "nothing is running" in nbscale_cli("idle", check=True).stdout
