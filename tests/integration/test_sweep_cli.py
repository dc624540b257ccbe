"""``nbscale sweep | sweeps | sweep-status | sweep-cancel``, run as real subprocesses whose
trials are real local jobs.

The planted objective: ``val_loss = (log10(lr) + 2)^2 + 0.1/(step+1)``, smallest at
``lr = 0.01``; each trial logs three steps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from nbscale import paths
from nbscale.backends.local.processes import job_processes
from nbscale.store import get_store
from nbscale.store.jobs import list_jobs
from tests.support import wait_for

pytestmark = pytest.mark.timeout(300)

PLANTED = textwrap.dedent(
    """
    import math, os, time
    import nbscale

    lr = nbscale.param("lr", 0.01)
    pause = float(os.environ.get("PAUSE", "0"))
    for step in range(3):
        nbscale.log_metric("val_loss", (math.log10(lr) + 2) ** 2 + 0.1 / (step + 1), step=step)
        time.sleep(pause)
    """
)
SPACE = ["--sweep", "lr=loguniform(1e-4, 1e-1)", "--objective", "val_loss:min"]


@pytest.fixture
def planted(write_script):
    return write_script("planted.py", PLANTED)


def sweep_jobs(sweep_id: str) -> list:
    return [
        r
        for r in list_jobs(get_store(), limit=1000)[0]
        if r.spec.get("tags", {}).get("nbscale-sweep") == sweep_id
    ]


def status(nbscale_cli, sweep_id: str) -> dict:
    return json.loads(nbscale_cli("sweep-status", sweep_id, "--json", check=True).stdout)


def test_a_sweep_runs_to_the_end_and_its_table_names_the_best_trial(nbscale_cli, planted):
    args = ["sweep", str(planted), *SPACE, "--trials", "4", "--parallel", "2", "--pruner", "none"]
    proc = nbscale_cli(*args, "--seed", "3", "--tag", "team=vision")
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(nbscale_cli("sweeps", "--json", check=True).stdout)
    assert len(listed) == 1 and listed[0]["status"] == "SUCCEEDED"
    sweep_id = listed[0]["id"]
    shown = status(nbscale_cli, sweep_id)
    values = {t["number"]: t["value"] for t in shown["trials"]}
    assert len(values) == 4 and None not in values.values()
    best = min(values, key=values.get)
    assert shown["best"]["number"] == best
    # the table: its summary names the best trial, and that row is marked and first
    lines = proc.stdout.splitlines()
    assert (
        f"SUCCEEDED, 4/4 trials done; best val_loss {values[best]:.4g} (trial {best}:" in lines[0]
    )
    assert lines[1].split()[:3] == ["trial", "status", "lr"]
    assert lines[2].split()[:3] == [str(best), "*", "SUCCEEDED"]
    # live lines on stderr: one per change, not one per poll
    live = [line for line in proc.stderr.splitlines() if f"sweep {sweep_id} on local" in line]
    assert 2 <= len(live) <= 10 and len(set(live)) == len(live)
    # the trials are ordinary jobs, tagged with their sweep (and the user's own tags)
    jobs = sweep_jobs(sweep_id)
    assert len(jobs) == 4 and all(j.status == "SUCCEEDED" for j in jobs)
    assert all(j.spec["tags"]["team"] == "vision" for j in jobs)
    assert {t["job_id"] for t in shown["trials"]} == {j.id for j in jobs}
    listing = nbscale_cli("sweeps", check=True).stdout
    assert sweep_id in listing and "4/4" in listing and f"(trial {best})" in listing
    text = nbscale_cli("sweep-status", sweep_id, check=True).stdout
    assert text.splitlines()[0] == lines[0]


def test_dry_run_prints_only_what_would_run_and_stores_nothing(nbscale_cli, planted):
    proc = nbscale_cli("sweep", str(planted), *SPACE, "--trials", "5", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    sent = json.loads(proc.stdout)  # stdout is one JSON document, nothing else
    assert sent["objective"] == "val_loss:min" and sent["trials"] == 5
    assert sent["space"] == [{"name": "lr", "kind": "float", "low": 1e-4, "high": 0.1, "log": True}]
    assert sent["job"]["entry"]["target"].endswith("planted.py")
    assert "dry run: nothing started" in proc.stderr and "Optuna tpe" in proc.stderr
    assert json.loads(nbscale_cli("sweeps", "--json", check=True).stdout) == []
    assert list_jobs(get_store())[0] == []


@pytest.mark.parametrize(
    ("space", "objective", "says"),
    [
        ("lr=loguniform(1e-1, 1e-4)", "val_loss:min", "the range is empty"),
        ("lr=gauss(0, 1)", "val_loss:min", "unknown distribution 'gauss'"),
        ("lr=loguniform(0, 1)", "val_loss:min", "a log scale needs low > 0"),
        ("lr=loguniform(1e-4, 1e-1)", "accuracy:max", "the code never logs 'accuracy'"),
        ("lr=loguniform(1e-4, 1e-1)", "val_loss", "says neither min nor max"),
    ],
)
def test_bad_input_is_one_message_exit_2_and_nothing_stored(
    nbscale_cli, planted, space, objective, says
):
    proc = nbscale_cli("sweep", str(planted), "--sweep", space, "--objective", objective)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("nbscale: error: ")
    assert says in proc.stderr
    assert json.loads(nbscale_cli("sweeps", "--json", check=True).stdout) == []
    assert list_jobs(get_store())[0] == []


def _start(planted, *extra: str, pause: str = "1.5") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "nbscale", "sweep", str(planted), *SPACE, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PAUSE": pause},
    )


def _sweep_id(nbscale_cli) -> str:
    listed = wait_for(
        lambda: json.loads(nbscale_cli("sweeps", "--json").stdout or "[]"), 60, interval=0.3
    )
    return listed[0]["id"]


def test_cancel_stops_the_sweep_and_its_running_trials(nbscale_cli, planted):
    proc = _start(planted, "--trials", "6", "--parallel", "2", "--pruner", "none", pause="20")
    try:
        sweep_id = _sweep_id(nbscale_cli)
        wait_for(
            lambda: status(nbscale_cli, sweep_id)["counts"].get("RUNNING") == 2,
            120,
            interval=0.5,
            what="two running trials",
        )
        wait_for(lambda: all(job_processes(j.id) for j in sweep_jobs(sweep_id)), 60)
        cancelled = nbscale_cli("sweep-cancel", sweep_id, check=True)
        assert cancelled.stdout.strip() == f"sweep {sweep_id}: CANCELLED"
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    shown = status(nbscale_cli, sweep_id)
    assert shown["status"] == "CANCELLED" and shown["counts"] == {"CANCELLED": 2}
    jobs = sweep_jobs(sweep_id)
    assert len(jobs) == 2 and all(j.status == "CANCELLED" for j in jobs)
    assert all(job_processes(j.id) == [] for j in jobs)


def test_ctrl_c_leaves_the_trials_running_and_the_same_command_resumes(nbscale_cli, planted):
    extra = ["--trials", "4", "--parallel", "2", "--pruner", "none", "--seed", "5"]
    # trials of 9 s or more, and the store read in this process, not through a CLI whose own
    # start took seconds on a loaded machine: the Ctrl-C lands while trials are left
    proc = _start(planted, *extra, pause="3")
    try:
        sweep_id = _sweep_id(nbscale_cli)
        wait_for(
            lambda: any(j.status == "SUCCEEDED" for j in sweep_jobs(sweep_id)),
            120,
            interval=0.1,
            what="a finished trial",
        )
        ended = {j.id for j in sweep_jobs(sweep_id) if j.status == "SUCCEEDED"}
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert f"stopped following sweep {sweep_id}. Its running trials go on" in err
    assert f"nbscale sweep-cancel {sweep_id}" in err
    before = status(nbscale_cli, sweep_id)
    assert before["status"] == "STOPPED"
    kept = {t["number"]: t["job_id"] for t in before["trials"] if t["status"] == "SUCCEEDED"}
    # a trial whose job had ended when Ctrl-C came shows as ended, though the driver's
    # poll had not seen it yet: the interrupted driver records it on its way out
    assert ended and ended <= set(kept.values())
    again = nbscale_cli("sweep", str(planted), *SPACE, *extra, env={"PAUSE": "0"})
    assert again.returncode == 0, again.stderr
    after = status(nbscale_cli, sweep_id)
    assert after["status"] == "SUCCEEDED" and after["counts"] == {"SUCCEEDED": 4}
    assert {
        n: j for n, j in ((t["number"], t["job_id"]) for t in after["trials"]) if n in kept
    } == kept
    assert len(sweep_jobs(sweep_id)) == 4  # no finished trial ran again


def test_too_many_failed_trials_fail_the_sweep_with_exit_1(nbscale_cli, write_script):
    script = write_script(
        "broken.py",
        "import nbscale\nnbscale.log_metric('val_loss', 1.0)\nraise RuntimeError('planted failure')\n",
    )
    proc = nbscale_cli(
        "sweep", str(script), *SPACE, "--trials", "3", "--max-failed", "1", "--pruner", "none"
    )
    assert proc.returncode == 1, proc.stderr
    live = [line for line in proc.stderr.splitlines() if "] trial " in line]
    assert [line.split("] ")[1] for line in live] == [
        "trial 0 failed: rank 0: RuntimeError: planted failure",
        "trial 1 failed: rank 0: RuntimeError: planted failure",
    ]
    last = proc.stderr.splitlines()[-1]
    assert (
        last.startswith("nbscale: sweep broken-") and " failed: 2 trials failed, more than " in last
    )
    assert proc.stdout.splitlines()[0].split(": ")[1].startswith("FAILED, 0/3 trials done")
    # a failed trial is counted and not scored: its value stays empty, never 0
    trials = json.loads(nbscale_cli("sweeps", "--json", check=True).stdout)
    shown = status(nbscale_cli, trials[0]["id"])
    assert shown["counts"]["FAILED"] == 2 and shown["best"] is None
    assert all(t["value"] is None for t in shown["trials"])


def _driver(sweep_id: str) -> tuple[int | None, float | None]:
    from nbscale.store.sweeps import get_sweep

    info = get_sweep(get_store(), sweep_id).info
    return info.get("driver_pid"), info.get("driver_started")


def _kill_driver(pid: int | None, started: float | None) -> None:
    """A driver a failed test left behind (the same process: its start time matches)."""
    from nbscale.backends.local.processes import alive

    if pid and alive(pid, started):
        os.kill(pid, signal.SIGKILL)


def test_detach_leaves_a_background_driver_that_the_same_command_follows(nbscale_cli, planted):
    from nbscale.backends.local.processes import alive

    extra = ["--trials", "3", "--parallel", "2", "--pruner", "none", "--seed", "2"]
    detached = nbscale_cli(
        "sweep", str(planted), *SPACE, *extra, "--detach", env={"PAUSE": "1"}, check=True
    )
    sweep_id = detached.stdout.strip()
    assert sweep_id.startswith("planted-") and "\n" not in sweep_id
    pid, started = _driver(sweep_id)
    try:
        assert pid and alive(pid, started)  # held by a process that is not the command
        assert status(nbscale_cli, sweep_id)["status"] == "RUNNING"
        # the same command again follows that driver to the end instead of driving it twice
        again = nbscale_cli("sweep", str(planted), *SPACE, *extra, env={"PAUSE": "1"})
        assert again.returncode == 0, again.stderr
        shown = status(nbscale_cli, sweep_id)
        assert shown["status"] == "SUCCEEDED" and shown["counts"] == {"SUCCEEDED": 3}
        assert len(sweep_jobs(sweep_id)) == 3
        wait_for(lambda: not alive(pid, started), 30, what="the background driver to end")
        log = paths.home() / "sweeps" / f"{sweep_id}.driver.log"
        assert f"sweep {sweep_id}: SUCCEEDED" in log.read_text()
    finally:
        _kill_driver(pid, started)


def test_a_detached_sweep_cancelled_ends_its_driver_and_trials(nbscale_cli, planted):
    from nbscale.backends.local.processes import alive

    args = ["--trials", "6", "--parallel", "2", "--pruner", "none", "--detach"]
    sweep_id = nbscale_cli(
        "sweep", str(planted), *SPACE, *args, env={"PAUSE": "20"}, check=True
    ).stdout.strip()
    pid, started = _driver(sweep_id)
    try:
        wait_for(
            lambda: status(nbscale_cli, sweep_id)["counts"].get("RUNNING") == 2,
            120,
            interval=0.5,
            what="two running trials",
        )
        wait_for(lambda: all(job_processes(j.id) for j in sweep_jobs(sweep_id)), 60)
        cancelled = nbscale_cli("sweep-cancel", sweep_id, check=True)
        assert cancelled.stdout.strip() == f"sweep {sweep_id}: CANCELLED"
        wait_for(lambda: not alive(pid, started), 60, what="the background driver to end")
    finally:
        _kill_driver(pid, started)
    shown = status(nbscale_cli, sweep_id)
    assert shown["status"] == "CANCELLED" and shown["counts"] == {"CANCELLED": 2}
    jobs = sweep_jobs(sweep_id)
    assert len(jobs) == 2 and all(j.status == "CANCELLED" for j in jobs)
    assert all(job_processes(j.id) == [] for j in jobs)
