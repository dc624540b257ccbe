"""R1b: the local supervisor killed with SIGKILL. The job keeps running, a look at it
starts a supervisor that adopts the running agents, and the true outcome is recorded:
also for a job that ended while nobody supervised it."""

from __future__ import annotations

import os
import signal
import textwrap

import pytest

import nbscale
from nbscale.backends.local.processes import alive, job_processes
from nbscale.store import get_store
from nbscale.store.jobs import events, get_job
from tests.support import wait_for

pytestmark = pytest.mark.timeout(240)

# rank 1 waits for a file the test creates, so the test decides when the job ends
WORKER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    import torch, torch.distributed as dist
    from nbscale import distributed
    distributed.init()
    print("started", flush=True)
    go = Path(sys.argv[1])
    while not go.exists():
        time.sleep(0.05)
    t = torch.ones(1)
    dist.all_reduce(t)
    if sys.argv[2] == "fail" and dist.get_rank() == 1:
        raise ValueError("bad batch 7")
    print(f"done sum={t.item()}", flush=True)
    dist.destroy_process_group()
""")


def _start(write_script, tmp_path, mode: str):
    script = write_script("job.py", WORKER)
    go = tmp_path / f"go-{mode}"
    job = nbscale.submit(
        nbscale.JobSpec(
            entry=nbscale.Entry.from_path(str(script)), procs_per_node=2, args=(str(go), mode)
        )
    )
    wait_for(lambda: len(job.ranks()) == 2 and "started" in job.logs(1), 120, what="start")
    record = job.refresh()
    os.kill(record.info["supervisor_pid"], signal.SIGKILL)
    wait_for(lambda: not alive(record.info["supervisor_pid"]), what="supervisor gone")
    return job, go, record


def _row(job):
    return get_job(get_store(), job.id)  # the row as stored, without a backend look


def test_a_look_while_unsupervised_keeps_the_job_and_a_new_supervisor_records_its_end(
    write_script, tmp_path
):
    job, go, before = _start(write_script, tmp_path, "ok")
    workers = job_processes(job.id)
    looked = job.refresh()  # the look that used to kill a healthy run
    assert looked.status == "RUNNING"
    assert all(p.is_running() for p in workers)
    new_pid = wait_for(
        lambda: (
            (pid := _row(job).info.get("supervisor_pid")) != before.info["supervisor_pid"] and pid
        ),
        what="a supervisor adopting the job",
    )
    assert alive(new_pid)
    go.touch()
    # the adopting supervisor records the end by itself: read the row, do not look
    ended = wait_for(lambda: (r := _row(job)).terminal and r, 120, what="the end recorded")
    assert ended.status == "SUCCEEDED" and ended.exit_code == 0
    assert "done sum=2.0" in job.logs(0) and "done sum=2.0" in job.logs(1)
    wait_for(lambda: job_processes(job.id) == [], 30, what="the supervisor exiting")


@pytest.mark.parametrize("mode", ["ok", "fail"])
def test_a_job_that_ended_unsupervised_reads_its_true_outcome(write_script, tmp_path, mode):
    job, go, _ = _start(write_script, tmp_path, mode)
    go.touch()
    wait_for(lambda: job_processes(job.id) == [], 120, what="the job's processes ending")
    assert _row(job).status == "RUNNING"  # nobody recorded anything yet
    record = job.refresh()
    if mode == "ok":
        assert record.status == "SUCCEEDED" and record.exit_code == 0, record.error
    else:
        assert record.status == "FAILED" and record.failed_rank == 1
        assert "ValueError: bad batch 7" in record.error
    assert "recorded-without-supervisor" in [e["type"] for e in events(get_store(), job.id)]


def test_a_queued_job_whose_supervisor_died_is_queued_again_and_runs(write_script, monkeypatch):
    from nbscale.store.jobs import JobRecord, insert_job, update_job

    monkeypatch.setenv("NBSCALE_GPUS", "0")  # one (pretend) GPU, held by another job
    store = get_store()
    insert_job(
        store,
        JobRecord(
            id="holder",
            name="holder",
            backend="local",
            backend_type="local",
            status="RUNNING",
            spec={},
            created=0.0,
            info={"gpus": [0]},
        ),
    )
    script = write_script("gpu.py", "import os\nprint('gpu', os.environ['CUDA_VISIBLE_DEVICES'])\n")
    job = nbscale.submit(
        nbscale.JobSpec(entry=nbscale.Entry.from_path(str(script)), gpus_per_proc=1)
    )
    first = wait_for(lambda: _row(job).info.get("supervisor_pid"), what="the supervisor")
    assert _row(job).status == "PENDING"
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: not alive(first), what="supervisor gone")
    assert job.refresh().status == "PENDING"  # queued again, not LOST
    wait_for(
        lambda: _row(job).info.get("supervisor_pid") not in (None, first), what="a new supervisor"
    )
    update_job(store, "holder", status="SUCCEEDED")  # the GPU is free now
    record = job.wait(timeout=120)
    assert record.status == "SUCCEEDED" and "gpu 0" in job.logs(0)
