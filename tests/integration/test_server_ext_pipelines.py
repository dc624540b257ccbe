"""Pipeline runs over /nbscale/api/: why a step was cached, its error, and cancelling a run.

Real detached runs on real kernels; each pipeline is a few one-line cells so the kernels
are the only cost.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import psutil

from nbscale.store import get_store
from nbscale.store import pipelines as db
from tests.support.notebooks import code, write_notebook

pytest_plugins = ["pytest_jupyter.jupyter_server"]


def pipeline(root, name: str, make: str, use: str = "y = x + 1\nprint('y is', y)"):
    write_notebook(root / name, code(make, "step:make"), code(use, "step:use", "prev:make"))


async def wait_run(fetch, run_id, until, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code, run = await fetch("pipelines", run_id)
        assert code == 200, run
        if until(run):
            return run
        await asyncio.sleep(0.2)
    raise AssertionError(f"pipeline run {run_id} never got there; last: {run}")


def ended(run):
    return run["status"] not in ("PENDING", "RUNNING")


async def test_steps_say_why_they_were_cached_and_what_failed(fetch, jp_root_dir):
    pipeline(jp_root_dir, "flow.ipynb", "x = 20")
    code, first = await fetch("pipelines", method="POST", body={"path": "flow.ipynb"})
    assert code == 201, first
    first = await wait_run(fetch, first["id"], ended)
    assert first["status"] == "SUCCEEDED", (first["error"], first["steps"])
    for step in first["steps"]:
        assert step["cached"] is False and step["error"] is None and step["attempts"] == 1
        assert step["cache_reason"].startswith("miss:"), step

    # the same notebook again: both steps come from the cache, and say from which run
    code, again = await fetch("pipelines", method="POST", body={"path": "flow.ipynb"})
    assert code == 201, again
    again = await wait_run(fetch, again["id"], ended)
    assert again["status"] == "SUCCEEDED", (again["error"], again["steps"])
    for step in again["steps"]:
        assert step["cached"] is True and step["error"] is None, step
        assert step["cache_reason"] == f"hit: unchanged since run {first['id']}", step

    # the second step now fails: its error is in the step
    pipeline(jp_root_dir, "flow.ipynb", "x = 20", use="raise ValueError('use needs a y')")
    code, broken = await fetch("pipelines", method="POST", body={"path": "flow.ipynb"})
    assert code == 201, broken
    broken = await wait_run(fetch, broken["id"], ended)
    assert broken["status"] == "FAILED", (broken["error"], broken["steps"])
    make, use = broken["steps"]
    assert make["status"] in ("SUCCEEDED", "CACHED") and make["error"] is None, make
    assert use["status"] == "FAILED" and use["cached"] is False and use["attempts"] == 1
    assert "ValueError" in use["error"] and "use needs a y" in use["error"], use
    assert use["cache_reason"].startswith("miss:"), use

    # the list route carries the same fields
    code, body = await fetch("pipelines", params={"limit": 1})
    assert code == 200 and body["runs"][0]["steps"] == broken["steps"]


def gone(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_cancel_stops_a_running_pipeline_and_its_kernels(fetch, jp_root_dir):
    pipeline(jp_root_dir, "slow.ipynb", "import time\ntime.sleep(300)\nx = 1")
    code, run = await fetch("pipelines", method="POST", body={"path": "slow.ipynb"})
    assert code == 201, run
    runner = psutil.Process(db.get_run(get_store(), run["id"])["pid"])

    # wait until the first step runs in a kernel the runner started
    running = await wait_run(
        fetch, run["id"], lambda r: ended(r) or r["steps"][0]["status"] == "RUNNING"
    )
    assert running["status"] == "RUNNING", (running["error"], running["steps"])
    deadline = time.monotonic() + 120
    while not runner.children(recursive=True) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    spawned = runner.children(recursive=True)
    assert spawned, "the runner started no kernel"

    code, cancelled = await fetch("pipelines", run["id"], method="DELETE")
    assert code == 200, cancelled
    assert cancelled["status"] == "CANCELLED", cancelled
    assert [s["status"] for s in cancelled["steps"]] == ["CANCELLED", "CANCELLED"], cancelled
    code, again = await fetch("pipelines", run["id"])
    assert code == 200 and again["status"] == "CANCELLED"

    # nothing is left behind: the runner and every kernel it started are gone
    procs = [runner, *spawned]
    deadline = time.monotonic() + 30
    while not all(gone(p) for p in procs) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert all(gone(p) for p in procs), [p for p in procs if not gone(p)]

    # a second cancel is a conflict with the run's state, not a 500
    code, body = await fetch("pipelines", run["id"], method="DELETE")
    assert code == 409 and body["error"] == "conflict", body
    assert "already ended (CANCELLED)" in body["message"], body


async def test_cancel_an_unknown_run_is_404(fetch):
    code, body = await fetch("pipelines", "p-nope", method="DELETE")
    assert code == 404 and body["error"] == "not_found" and "p-nope" in body["message"], body


async def test_cancel_a_run_in_another_process_is_409(fetch, jp_root_dir, tmp_path):
    # a real detach=False run in its own Python process; its step waits for a file we write
    flag = tmp_path / "go"
    pipeline(
        jp_root_dir,
        "held.ipynb",
        f"import os, time\nwhile not os.path.exists({str(flag)!r}):\n    time.sleep(0.1)\nx = 1",
    )
    script = (
        "import sys\nfrom nbscale import pipelines\n"
        "run = pipelines.start_run(sys.argv[1], detach=False)\n"
        "print(run.error, [s['error'] for s in run.steps])\nprint(run.status)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(jp_root_dir / "held.ipynb")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ.copy(),
    )
    try:
        deadline = time.monotonic() + 120
        runs: list = []
        while not runs and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read()
            code, body = await fetch("pipelines")
            runs = [r for r in body["runs"] if r["steps"][0]["status"] == "RUNNING"]
            await asyncio.sleep(0.2)
        assert runs, "the in-process run never started its first step"

        code, body = await fetch("pipelines", runs[0]["id"], method="DELETE")
        assert code == 409 and body["error"] == "conflict", body
        assert "inside another process" in body["message"], body
        code, run = await fetch("pipelines", runs[0]["id"])
        assert run["status"] == "RUNNING", run
    finally:
        flag.touch()
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and out.strip().endswith("SUCCEEDED"), out
