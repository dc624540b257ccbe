"""Local sweeps: Optuna samples and prunes, every trial is a real torchrun job.

The planted objective is SGD on ``c/2 (w-1)^2`` with ``c = 100`` in a tiny torch loop:
it converges in one step at ``lr = 1/c = 0.01``, slowly below it and diverges above
``2/c``, so the loss after a few steps has its minimum's basin around ``lr = 0.01``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

import nbscale
from nbscale import sweep_runs
from nbscale.cpus import allowed_cpus
from nbscale.errors import SpecError
from nbscale.jobs import jobs as job_handles
from nbscale.store import get_store
from nbscale.store.sweeps import list_sweeps
from tests.support import wait_for

PLANTED = textwrap.dedent(
    """
    import os, time
    import torch
    import nbscale

    lr = nbscale.param("lr", 0.01)
    steps = int(os.environ.get("STEPS", "5"))
    pause = float(os.environ.get("PAUSE", "0.05"))
    if nbscale.param("explode", 0) == 1:
        raise RuntimeError("this trial's values make it fail")
    w = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([w], lr=lr)
    noise = torch.Generator().manual_seed(int(lr * 1e9) % 2**31)
    for step in range(steps):
        opt.zero_grad()
        loss = 50.0 * (w - 1).pow(2).sum()
        loss.backward()
        opt.step()
        with torch.no_grad():
            val = 50.0 * (w - 1).pow(2).sum().item()
        val += 1e-3 * torch.rand(1, generator=noise).item()
        nbscale.log_metric("val_loss", min(val, 1e6), step=step)
        time.sleep(pause)
    """
)


@pytest.fixture
def planted(write_script):
    return write_script("planted.py", PLANTED)


def job(path, **env) -> nbscale.JobSpec:
    return nbscale.JobSpec(entry=nbscale.Entry.from_path(str(path)), env=env)


def overlap(records) -> int:
    """The most trials that ran at the same time."""
    marks = sorted(
        [(r.started, 1) for r in records if r.started] + [(r.ended, -1) for r in records if r.ended]
    )
    most = now = 0
    for _, step in marks:
        now += step
        most = max(most, now)
    return most


@pytest.mark.timeout(600)
def test_sixteen_trials_four_asked_in_parallel_find_the_basin(planted):
    updates = []
    sweep = nbscale.sweep(
        job(planted),
        "lr=loguniform(1e-4,1e-1)",
        "val_loss:min",
        trials=16,
        parallel=4,
        pruner="none",
        seed=3,
        on_update=updates.append,
    )
    view = sweep.view()
    assert view.status == "SUCCEEDED", sweep.to_dict()
    assert view.counts() == {"SUCCEEDED": 16}
    assert 0.003 <= sweep.best_params["lr"] <= 0.017, sweep.trials
    assert sweep.best.value < 0.05
    # every trial is an ordinary job, tagged with its sweep
    records = [j.record for j in job_handles(limit=100)]
    assert len(records) == 16 and all(r.spec["tags"]["nbscale-sweep"] == sweep.id for r in records)
    limit = min(4, allowed_cpus())
    assert overlap(records) <= limit
    if limit < 4:
        assert any("4 asked" in n for n in view.notes), view.notes
    table = sweep.trials
    assert list(table["trial"])[0] == sweep.best.number and len(table) == 16
    assert sweep.best_job.logs()  # the best trial's job: logs, outputs and metrics as a job's
    assert updates and updates[-1].status == "SUCCEEDED"
    assert [r.id for r in list_sweeps(get_store())] == [sweep.id]


@pytest.mark.timeout(600)
def test_the_median_pruner_stops_most_steps_of_bad_trials(planted):
    steps = 8
    sweep = nbscale.sweep(
        job(planted, STEPS=str(steps), PAUSE="0.4"),
        "lr=loguniform(1e-5,1e-1)",  # most of this range converges far too slowly or diverges
        "val_loss:min",
        trials=12,
        parallel=2,
        pruner="median",
        seed=1,
        settings={"startup_trials": 2, "warmup_steps": 1},
    )
    view = sweep.view()
    assert view.status == "SUCCEEDED", sweep.to_dict()
    pruned = [t for t in view.trials if t.status == "PRUNED"]
    assert pruned and all(t.value is None for t in pruned)
    # the steps the trials really ran (their logged values), against 12 unpruned trials
    ran = sum(len(nbscale.job(t.job_id).metrics()) for t in view.trials)
    saved = 1 - ran / (12 * steps)
    assert saved >= 0.4, (saved, sweep.trials)
    for t in pruned:  # a pruned trial's job was stopped, not failed
        assert nbscale.job(t.job_id).record.status == "CANCELLED"


DRIVER = textwrap.dedent(
    """
    import sys, nbscale
    spec = nbscale.JobSpec(entry=nbscale.Entry.from_path(sys.argv[1]), env={"PAUSE": "0.5"})
    nbscale.sweep(spec, "lr=loguniform(1e-4,1e-1)", "val_loss:min", trials=6, parallel=2,
                  pruner="none", seed=5)
    """
)


@pytest.mark.timeout(600)
def test_a_killed_driver_resumes_without_rerunning_finished_trials(planted, write_script):
    driver = write_script("driver.py", DRIVER)
    proc = subprocess.Popen([sys.executable, str(driver), str(planted)])
    try:
        (record,) = wait_for(lambda: list_sweeps(get_store()), 120, what="the sweep's row")
        handle = sweep_runs.get(record.id)
        wait_for(
            lambda: handle.view().counts().get("SUCCEEDED", 0) >= 2, 240, what="2 finished trials"
        )
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # as a dying kernel: no finally, no handler
        proc.wait()
    before = handle.view()
    assert before.status == "STOPPED", before.to_dict()  # its driver is gone
    finished = {t.number: t.job_id for t in before.trials if t.status == "SUCCEEDED"}
    spec = nbscale.JobSpec(entry=nbscale.Entry.from_path(str(planted)), env={"PAUSE": "0.5"})
    again = nbscale.sweep(
        spec,
        "lr=loguniform(1e-4,1e-1)",
        "val_loss:min",
        trials=6,
        parallel=2,
        pruner="none",
        seed=5,
    )
    view = again.view()
    assert again.id == record.id and view.status == "SUCCEEDED"
    counts = view.counts()
    assert counts["SUCCEEDED"] == 6 and "FAILED" not in counts, view.to_dict()
    # a trial the kill caught between sampling and submitting never ran: shown, not counted
    never = [t for t in view.trials if t.status == "CANCELLED"]
    assert all(t.job_id is None and "never started" in t.error for t in never)
    after = {t.number: t.job_id for t in view.trials}
    assert all(after[n] == job_id for n, job_id in finished.items())  # kept, not run again
    # one job per trial: the ones running at the kill were followed again, not restarted
    tagged = [
        j for j in job_handles(limit=100) if j.record.spec["tags"].get("nbscale-sweep") == again.id
    ]
    assert len(tagged) == 6


@pytest.mark.timeout(600)
def test_a_failing_trial_is_failed_and_counted_not_scored(planted):
    sweep = nbscale.sweep(
        job(planted),
        "lr=loguniform(1e-3,1e-1) explode=choice(0,1)",
        "val_loss:min",
        trials=4,
        parallel=2,
        pruner="none",
        algorithm="random",
        seed=11,
        max_failed=1,
    )
    view = sweep.view()
    failed = [t for t in view.trials if t.status == "FAILED"]
    assert failed, sweep.to_dict()
    assert all(t.value is None and t.params["explode"] == 1 for t in failed)
    assert all("this trial's values make it fail" in t.error for t in failed)
    assert view.best is None or view.best.params["explode"] == 0
    if len(failed) > 1:  # more than --max-failed: the sweep stopped, saying why
        assert view.status == "FAILED" and "--max-failed 1" in view.error
        assert "this trial's values make it fail" in view.error
    else:
        assert view.status == "SUCCEEDED"


@pytest.mark.timeout(300)
def test_a_grid_runs_each_point_once(planted):
    sweep = nbscale.sweep(
        job(planted),
        "lr=choice(0.001,0.01,0.05)",
        "val_loss:min",
        algorithm="grid",
        trials=10,
        parallel=2,
        pruner="none",
    )
    view = sweep.view()
    assert view.status == "SUCCEEDED" and view.planned == 3, sweep.to_dict()
    assert sorted(t.params["lr"] for t in view.trials) == [0.001, 0.01, 0.05]
    assert sweep.best_params == {"lr": 0.01}


def test_an_objective_the_code_never_logs_is_refused_before_anything_runs(planted, write_script):
    with pytest.raises(SpecError) as err:
        nbscale.sweep(job(planted), "lr=loguniform(1e-4,1e-1)", "accuracy:max", trials=2)
    assert "never logs 'accuracy' (it logs val_loss)" in str(err.value)
    silent = write_script("silent.py", "print('no metrics')\n")
    with pytest.raises(SpecError, match="it calls log_metric nowhere"):
        nbscale.sweep(job(silent), "lr=loguniform(1e-4,1e-1)", "val_loss:min", trials=2)
    assert list_sweeps(get_store()) == [] and job_handles() == []


def test_a_sweep_over_its_budget_is_refused_up_front(planted, tmp_path):
    (tmp_path / "nbscale.toml").write_text(
        '[backends.priced]\ntype = "local"\nprice_per_node_hour = 36.0\n'
    )
    spec = nbscale.JobSpec(
        entry=nbscale.Entry.from_path(str(planted)), backend="priced", max_runtime=60
    )
    with pytest.raises(SpecError) as err:  # 16 x $0.60 = $9.60
        nbscale.sweep(spec, "lr=loguniform(1e-4,1e-1)", "val_loss:min", trials=16, max_cost=5)
    assert "16 trials x $0.60" in str(err.value) and "$9.60" in str(err.value)
    assert list_sweeps(get_store()) == []


@pytest.mark.timeout(300)
def test_the_budget_stops_starting_trials_once_the_spend_reaches_it(planted, tmp_path):
    # $1 per second of a trial's node: two trials of a few seconds each spend the $3 cap
    (tmp_path / "nbscale.toml").write_text(
        '[backends.priced]\ntype = "local"\nprice_per_node_hour = 3600.0\n'
    )
    spec = nbscale.JobSpec(
        entry=nbscale.Entry.from_path(str(planted)), backend="priced", env={"PAUSE": "0.5"}
    )
    sweep = nbscale.sweep(
        spec,
        "lr=loguniform(1e-4,1e-1)",
        "val_loss:min",
        trials=8,
        parallel=1,
        pruner="none",
        max_cost=3,
    )
    view = sweep.view()
    assert view.status == "SUCCEEDED", view.to_dict()
    ran = [t for t in view.trials if t.job_id]
    assert 1 <= len(ran) < 8  # stopped early, said why
    assert sum(t.cost for t in ran) >= 3
    assert sum(t.cost for t in ran[:-1]) < 3  # the last trial started while under the cap
    assert any("--max-cost $3.00 is reached" in n for n in view.notes), view.notes
    assert any("no --max-runtime bounds a trial" in n for n in view.notes)
