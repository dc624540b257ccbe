"""The warm zygote: started ahead for a home, claimed by a deploy's router, gone after its TTL,
and never needed (a deploy works without it)."""

from __future__ import annotations

import os
import signal
import stat
import time

import numpy as np
import psutil
import pytest

from nbscale.backends.local.endpoints import ENDPOINT_ENV, TAG_ENV, endpoint_tag
from nbscale.backends.local.processes import tagged_processes
from nbscale.endpoints import deploy, endpoints, prewarm
from nbscale.serving import zygote as zmod
from tests.support import wait_for
from tests.support.serving import forward, make_artifact


def _warm_pid(run_dir) -> int | None:
    """The pid of the warm zygote listening in ``run_dir`` (None when none)."""
    sock, _ = zmod.warm_paths(run_dir)
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = p.info["cmdline"] or []
        if "--warm" in cmd and str(run_dir) in cmd:
            return p.pid
    return None


@pytest.fixture
def warm(monkeypatch):
    """Short TTLs; every warm zygote a test started is stopped after it (by its pid)."""
    monkeypatch.setenv("NBSCALE_WARM_TTL", "60")
    started: list[int] = []
    yield started
    for ep in endpoints():
        ep.delete()
    pid = _warm_pid(zmod.warm_dir())
    for p in {*started, *([pid] if pid else [])}:
        try:
            os.kill(p, signal.SIGTERM)
        except ProcessLookupError:
            continue


def _ready(run_dir) -> int:
    """Wait until the warm zygote of ``run_dir`` has preloaded; its pid."""
    wait_for(lambda: _warm_pid(run_dir), 30, what="the warm zygote to start")
    log = run_dir / "zygote.log"
    wait_for(lambda: "ready after" in log.read_text(), 120, what="the warm zygote to preload")
    return _warm_pid(run_dir)


def test_a_deploy_forks_its_zygote_from_the_warm_one_and_leaves_nothing_behind(tmp_path, warm):
    # Given a session that began to use nbscale: the home's warm zygote preloaded
    model_dir, model = make_artifact(tmp_path / "art")
    prewarm()
    run_dir = zmod.warm_dir()
    warm_pid = _ready(run_dir)
    # Then it listens only on a unix socket of this user's, in a folder only they can open
    sock, _ = zmod.warm_paths(run_dir)
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(run_dir).st_mode) == 0o700
    assert psutil.Process(warm_pid).net_connections(kind="inet") == []
    # When an endpoint is deployed
    ep = deploy(str(model_dir), name="warmed", replicas=(1, 1))
    x = np.random.default_rng(0).normal(size=(3, 64)).astype("float32")
    np.testing.assert_allclose(ep.predict(x), forward(model, x), rtol=1e-5, atol=1e-6)
    # Then its zygote was forked by the warm one, and carries the endpoint's tags as every
    # process of the endpoint does (undeploy finds it, and the replica it forked, by them)
    m = ep.metrics()
    assert m["zygote_claimed"] is True
    zygote = m["zygote_pid"]
    assert psutil.Process(zygote).ppid() == warm_pid
    env = psutil.Process(zygote).environ()
    assert env[ENDPOINT_ENV] == "warmed" and env[TAG_ENV] == endpoint_tag("warmed")
    replica = m["replica_list"][0]["pid"]
    assert psutil.Process(replica).environ()[TAG_ENV] == endpoint_tag("warmed")
    assert m["replica_list"][0]["started_by"] == "zygote"
    # And nothing of the endpoint listens beyond loopback
    for p in [zygote, replica, m["router_pid"]]:
        for c in psutil.Process(p).net_connections(kind="inet"):
            assert c.status != psutil.CONN_LISTEN or c.laddr.ip == "127.0.0.1", c
    # When it is deleted, Then no process of it is left; the warm zygote stays for the next one
    ep.delete()
    for pid in (zygote, replica):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert tagged_processes(ENDPOINT_ENV, "warmed") == []
    assert _warm_pid(run_dir) == warm_pid
    # And a second deploy claims from the same warm zygote
    ep = deploy(str(model_dir), name="again", replicas=(1, 1))
    assert psutil.Process(ep.metrics()["zygote_pid"]).ppid() == warm_pid


def test_the_warm_zygote_exits_after_its_idle_ttl(tmp_path, monkeypatch, warm):
    # Given a warm zygote with an idle TTL of 3 s
    monkeypatch.setenv("NBSCALE_WARM_TTL", "3")
    run_dir = zmod.warm_dir()
    warm.append(zmod.start_warm(run_dir))
    pid = _ready(run_dir)
    # When nobody claims it, Then it exits by itself and removes its socket
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie", 30)
    sock, _ = zmod.warm_paths(run_dir)
    assert not sock.exists()
    assert "exits" in (run_dir / "zygote.log").read_text()


def test_only_one_warm_zygote_per_home(warm):
    run_dir = zmod.warm_dir()
    warm.append(zmod.start_warm(run_dir))
    wait_for(lambda: zmod.warm_running(run_dir), 30, what="the warm zygote's lock")
    # When it is asked again while one runs, Then no second one starts
    assert zmod.start_warm(run_dir) is None


def test_a_deploy_works_when_the_warm_zygote_is_off_dead_or_stale(tmp_path, monkeypatch, warm):
    model_dir, model = make_artifact(tmp_path / "art")
    x = np.ones((2, 64), dtype="float32")
    # Off: the router starts a zygote of its own
    monkeypatch.setenv("NBSCALE_WARM_ZYGOTE", "0")
    ep = deploy(str(model_dir), name="off", replicas=(1, 1))
    np.testing.assert_allclose(ep.predict(x), forward(model, x), rtol=1e-5, atol=1e-6)
    m = ep.metrics()
    assert m["zygote_claimed"] is False and m["replica_list"][0]["started_by"] == "zygote"
    ep.delete()
    assert _warm_pid(zmod.warm_dir()) is None
    monkeypatch.setenv("NBSCALE_WARM_ZYGOTE", "1")
    # Dead: killed -9, its socket file left behind
    run_dir = zmod.warm_dir()
    warm.append(zmod.start_warm(run_dir))
    dead = _ready(run_dir)
    os.kill(dead, signal.SIGKILL)
    wait_for(lambda: not zmod.warm_running(run_dir), 10, what="the lock to be free")
    assert zmod.warm_paths(run_dir)[0].exists()
    ep = deploy(str(model_dir), name="dead", replicas=(1, 1))
    np.testing.assert_allclose(ep.predict(x), forward(model, x), rtol=1e-5, atol=1e-6)
    assert psutil.Process(ep.metrics()["zygote_pid"]).ppid() != dead
    ep.delete()
    # Stale: a warm zygote of another installation refuses the claim; nothing is forked
    _ready(run_dir)
    monkeypatch.setattr(zmod, "fingerprint", lambda: "0" * 12)
    z = zmod.claim_warm(run_dir, {ENDPOINT_ENV: "x"}, tmp_path / "z.log")
    assert z is None or not z.wait_ready(5)


def test_two_homes_never_share_a_warm_zygote(tmp_path, monkeypatch, warm):
    model_dir, _ = make_artifact(tmp_path / "art")
    first = zmod.warm_dir()
    warm.append(zmod.start_warm(first))
    a = _ready(first)
    # When a deploy is made in another home
    monkeypatch.setenv("NBSCALE_HOME", str(tmp_path / "other-home"))
    from nbscale import store

    store._stores.clear()
    second = zmod.warm_dir()
    assert second != first
    try:
        model_b, _ = make_artifact(tmp_path / "art-b")  # signed with the other home's key
        ep = deploy(str(model_b), name="b", replicas=(1, 1))
        # Then its zygote comes from that home's own warm zygote, never the first one's
        parent = psutil.Process(ep.metrics()["zygote_pid"]).ppid()
        assert parent != a and parent == _warm_pid(second)
        ep.delete()
    finally:
        pid = _warm_pid(second)
        if pid:
            os.kill(pid, signal.SIGTERM)
        time.sleep(0.1)


def test_a_bad_warm_ttl_is_refused_at_deploy_and_nothing_starts(tmp_path, monkeypatch):
    # Given a warm-zygote idle time that is not seconds from 1 to a day
    model_dir, _ = make_artifact(tmp_path / "art")
    for bad in ("soon", "0", "1e9"):
        monkeypatch.setenv("NBSCALE_WARM_TTL", bad)
        # When an endpoint is deployed, the deploy names the setting and what to give
        with pytest.raises(Exception, match=f"NBSCALE_WARM_TTL={bad!r} is not a number of seconds"):
            deploy(model_dir, name="ttl", replicas=(1, 1))
        # And no endpoint, router or warm zygote was started
        assert [ep.name for ep in endpoints()] == []
        assert _warm_pid(zmod.warm_dir()) is None
        # And prewarm (as %load_ext runs it, in the background) starts nothing either
        prewarm()
        assert _warm_pid(zmod.warm_dir()) is None


def test_a_warm_zygote_whose_environment_changed_exits_without_waiting_for_its_ttl(tmp_path, warm):
    # a warm zygote of its own copy of nbscale (its PYTHONPATH), so only its files change
    import shutil
    from pathlib import Path

    import nbscale

    copy = tmp_path / "site"
    shutil.copytree(
        Path(nbscale.__file__).parent,
        copy / "nbscale",
        ignore=shutil.ignore_patterns("__pycache__", "labextension"),
    )
    run_dir = zmod.warm_dir()
    env = {**os.environ, "PYTHONPATH": str(copy)}
    pid = zmod.start_warm(run_dir, env)
    assert pid is not None
    warm.append(pid)
    log = run_dir / "zygote.log"
    wait_for(lambda: "ready after" in log.read_text(), 120, what="the warm zygote to preload")
    time.sleep(zmod.STALE_CHECK_S + 1)  # an unchanged environment: still there (TTL is 60 s)
    assert psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    changed = copy / "nbscale" / "serving" / "app.py"
    changed.write_text(changed.read_text() + "\n# upgraded\n")

    def exited() -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_for(
        exited,
        3 * zmod.STALE_CHECK_S,
        what="the stale warm zygote to exit",
    )
    assert "stale (its environment changed)" in log.read_text()


def test_a_deploy_does_not_wait_on_a_stopped_warm_zygote(tmp_path, warm):
    # Given the home's warm zygote, preloaded and then stopped (SIGSTOP, as a debugger would)
    model_dir, model = make_artifact(tmp_path / "art")
    run_dir = zmod.warm_dir()
    warm.append(zmod.start_warm(run_dir))
    stopped = _ready(run_dir)
    os.kill(stopped, signal.SIGSTOP)
    try:
        # When an endpoint is deployed
        ep = deploy(str(model_dir), name="past-stopped", replicas=(1, 1))
        x = np.ones((2, 64), dtype="float32")
        np.testing.assert_allclose(ep.predict(x), forward(model, x), rtol=1e-5, atol=1e-6)
        # Then its router gave up the claim at once and started a zygote of its own
        m = ep.metrics()
        assert m["zygote_claimed"] is False
        assert psutil.Process(m["zygote_pid"]).ppid() != stopped
        assert m["replica_list"][0]["started_by"] == "zygote"
        from nbscale.store import get_store
        from nbscale.store.jobs import events

        skipped = [
            e
            for e in events(get_store(), "past-stopped", "endpoint")
            if e["type"] == "warm_zygote_skipped"
        ]
        assert len(skipped) == 1 and f"{stopped} is stopped" in skipped[0]["data"]["why"]
    finally:
        os.kill(stopped, signal.SIGCONT)  # the fixture's SIGTERM would wait on a stopped one


def test_a_claim_nobody_answers_is_given_up_after_its_patience(tmp_path, monkeypatch):
    # Given a socket where a warm zygote should be, accepting claims and never answering
    import socket

    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    sock_path, _ = zmod.warm_paths(run_dir)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(str(sock_path))
    listener.listen(1)
    try:
        z = zmod.claim_warm(run_dir, {ENDPOINT_ENV: "x"}, tmp_path / "z.log")
        assert z is not None and z.warm_pid == os.getpid()
        # While its patience lasts the claim may still be answered
        monkeypatch.setattr(zmod, "CLAIM_PATIENCE_S", 0.3)
        assert z.claim_stuck() is None
        # Then it is given up, with the reason
        time.sleep(0.4)
        assert "did not answer the claim within 0.3 s" in z.claim_stuck()
        z.close(timeout=1)
    finally:
        listener.close()
