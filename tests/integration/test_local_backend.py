"""The local backend runs real torchrun processes; these tests start real jobs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import psutil

import nbscale
from nbscale.backends.local.processes import alive, job_processes
from nbscale.jobs import jobs as job_handles
from nbscale.store import get_store
from nbscale.store.jobs import get_job, list_jobs
from tests.support import wait_for

ALLREDUCE = textwrap.dedent(
    """
    import os, torch, torch.distributed as dist
    from nbscale import distributed
    distributed.init()
    t = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(t)
    print(f"rank={dist.get_rank()} world={dist.get_world_size()} local={os.environ['LOCAL_RANK']} sum={t.item()}")
    dist.destroy_process_group()
    """
)


def spec(path, **kw):
    return nbscale.JobSpec(entry=nbscale.Entry.from_path(str(path)), **kw)


def test_two_process_allreduce_both_ranks_see_the_sum(write_script):
    # Given a script that all-reduces each rank's (rank + 1)
    script = write_script("allreduce.py", ALLREDUCE)
    # When it runs as a 2-process job
    job = nbscale.submit(spec(script, procs_per_node=2))
    record = job.wait(timeout=120)
    # Then both ranks saw 1 + 2 and their logs are kept apart
    assert record.status == "SUCCEEDED", job.logs()
    assert record.exit_code == 0
    assert job.ranks() == [0, 1]
    assert "rank=0 world=2 local=0 sum=3.0" in job.logs(0)
    assert "rank=1 world=2 local=1 sum=3.0" in job.logs(1)
    assert "[rank 1] rank=1" in job.logs()


def test_two_simulated_nodes_join_one_rendezvous(write_script):
    script = write_script("allreduce.py", ALLREDUCE)
    job = nbscale.submit(spec(script, nodes=2, procs_per_node=1))
    record = job.wait(timeout=120)
    assert record.status == "SUCCEEDED", job.logs()
    sums = sorted(line for r in (0, 1) for line in job.logs(r).splitlines() if "sum=" in line)
    assert len(sums) == 2 and all("world=2" in s and "sum=3.0" in s for s in sums)


def test_failure_in_rank_1_names_rank_and_exception(write_script):
    script = write_script(
        "fails.py",
        textwrap.dedent(
            """
            import os, time
            if os.environ["RANK"] == "1":
                raise ValueError("bad batch on rank one")
            time.sleep(30)
            """
        ),
    )
    job = nbscale.submit(spec(script, procs_per_node=2))
    record = job.wait(timeout=120)
    assert record.status == "FAILED"
    assert record.failed_rank == 1
    assert "ValueError: bad batch on rank one" in record.error
    assert record.exit_code not in (None, 0)
    tb = record.info["traceback"]
    assert 'fails.py", line 4' in tb and "nbscale/runtime/worker.py" not in tb
    assert "ValueError: bad batch on rank one" in job.logs(1)


def test_cancel_leaves_no_process_of_the_job(write_script):
    script = write_script(
        "sleeps.py", "import time\nprint('started', flush=True)\ntime.sleep(600)\n"
    )
    job = nbscale.submit(spec(script, procs_per_node=2))
    wait_for(
        lambda: all("started" in job.logs(r) for r in (0, 1)) and len(job.ranks()) == 2,
        120,
        what="start",
    )
    pids = [p.pid for p in job_processes(job.id)]
    assert len(pids) >= 4  # supervisor, torchrun agent, two workers
    record = job.cancel()
    assert record.status == "CANCELLED"
    survivors = [
        pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"
    ]
    assert survivors == []
    assert job_processes(job.id) == []


def test_three_jobs_at_once_each_get_their_own_rendezvous(write_script):
    script = write_script("allreduce.py", ALLREDUCE)
    jobs = [nbscale.submit(spec(script, procs_per_node=2, name=f"par-{i}")) for i in range(3)]
    records = [j.wait(timeout=240) for j in jobs]
    assert [r.status for r in records] == ["SUCCEEDED"] * 3, [j.logs() for j in jobs]
    ports = {r.info["port"] for r in records}
    assert len(ports) == 3


SUBMITTER = textwrap.dedent(
    """
    import sys, nbscale
    for i in range(5):
        nbscale.submit(nbscale.JobSpec(entry=nbscale.Entry.from_path(sys.argv[1]), name=f"burst-{sys.argv[2]}-{i}"))
    print("ok")
    """
)


def test_twenty_submissions_from_four_processes(write_script):
    script = write_script("quick.py", "print('hi')\n")
    submitter = write_script("submitter.py", SUBMITTER)
    procs = [
        subprocess.Popen(
            [sys.executable, str(submitter), str(script), str(n)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    outs = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    records, total = list_jobs(get_store(), limit=100)
    assert total == 20 and len({r.id for r in records}) == 20
    # nbscale.jobs is the module once nbscale.jobs was imported (lazy nbscale/__init__)
    for job in job_handles(limit=100):
        record = job.wait(timeout=300)
        assert record.status == "SUCCEEDED", (record.error, job.logs())


def test_supervisor_and_agents_killed_marks_job_lost_and_stops_workers(write_script):
    script = write_script(
        "sleeps.py", "import time\nprint('started', flush=True)\ntime.sleep(600)\n"
    )
    job = nbscale.submit(spec(script, procs_per_node=2))
    wait_for(lambda: len(job.ranks()) == 2 and "started" in job.logs(1), 120, what="start")
    info = job.refresh().info
    os.kill(info["supervisor_pid"], signal.SIGKILL)
    for pid, _ in info["agents"]:
        os.kill(pid, signal.SIGKILL)  # nothing is left to record how the job ended
    gone = [info["supervisor_pid"], *(pid for pid, _ in info["agents"])]
    wait_for(lambda: not any(alive(pid) for pid in gone), 30, what="the kills to land")
    record = wait_for(lambda: (r := job.refresh()).terminal and r, 30, what="LOST")
    assert record.status == "LOST"
    assert "vanished" in record.error
    wait_for(lambda: job_processes(job.id) == [], 60, what="workers stopped")


def test_max_restarts_restarts_and_counts(write_script, tmp_path):
    marker = tmp_path / "crashed-once"
    script = write_script(
        "flaky.py",
        textwrap.dedent(
            f"""
            import os, pathlib
            marker = pathlib.Path({str(marker)!r})
            if os.environ["RANK"] == "0" and not marker.exists():
                marker.write_text("x")
                raise RuntimeError("first attempt dies")
            print("attempt", os.environ["TORCHELASTIC_RESTART_COUNT"], flush=True)
            """
        ),
    )
    job = nbscale.submit(spec(script, max_restarts=2))
    record = job.wait(timeout=120)
    assert record.status == "SUCCEEDED", job.logs()
    assert record.restarts == 1
    assert "--- restart 1 ---" in job.logs(0)


def test_max_runtime_stops_the_job(write_script):
    script = write_script("sleeps.py", "import time\ntime.sleep(600)\n")
    job = nbscale.submit(spec(script, max_runtime=2))
    record = job.wait(timeout=120)
    assert record.status == "FAILED"
    assert "max runtime of 2 s" in record.error
    wait_for(lambda: job_processes(job.id) == [], 30, what="processes stopped")


def test_metrics_are_readable_while_the_job_runs(write_script):
    script = write_script(
        "metrics.py",
        textwrap.dedent(
            """
            import time, nbscale
            for step in range(3):
                nbscale.log_metric("loss", 1.0 / (step + 1), step=step)
            time.sleep(600)
            """
        ),
    )
    job = nbscale.submit(spec(script, procs_per_node=2))
    metrics = wait_for(lambda: len(job.metrics()) == 6 and job.metrics(), 120, what="metrics")
    assert job.refresh().status == "RUNNING"
    assert {(m["rank"], m["step"]) for m in metrics} == {(r, s) for r in (0, 1) for s in range(3)}
    assert json.loads(json.dumps(metrics))[0]["name"] == "loss"
    job.cancel()


def test_notebook_entry_runs_in_a_kernel_per_rank(tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("greeting = 'hello'", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("import os\nprint(greeting, 'from rank', os.environ['RANK'])"),
    ]
    path = tmp_path / "hello.ipynb"
    nbformat.write(nb, path)
    job = nbscale.submit(
        nbscale.JobSpec(
            entry=nbscale.Entry.from_path(str(path), parameters={"greeting": "hey"}),
            procs_per_node=2,
        )
    )
    record = job.wait(timeout=180)
    assert record.status == "SUCCEEDED", job.logs()
    assert "hey from rank 1" in job.logs(1)
    assert get_job(get_store(), job.id).info["job_dir"]


def test_a_cell_bundle_lives_with_its_job_and_a_rerun_finds_it():
    from nbscale import paths
    from nbscale.celljob import prepare_cell

    prepared = prepare_cell(
        "total = base * 2",
        {"base": 21},
        nbscale.JobSpec(entry=nbscale.Entry("bundle", "-"), name="cell"),
        outputs=["total"],
    )
    job = prepared.submit()
    assert job.result(timeout=120) == {"total": 42}
    # the bundle moved into the job directory: nothing is left behind in bundles/
    assert list((paths.home() / "bundles").glob("*")) == []
    target = job.record.spec["entry"]["target"]
    assert target.startswith(job.record.info["job_dir"])
    again = nbscale.submit(nbscale.JobSpec.from_dict(get_job(get_store(), job.id).spec))
    assert again.result(timeout=120) == {"total": 42}


# -- GPU assignment (no GPU needed: NBSCALE_GPUS stands in for nvidia-smi) ------------------


def _gpu_job(store, job_id: str, gpus: list[int]) -> None:
    from nbscale.store.jobs import JobRecord, insert_job

    insert_job(
        store,
        JobRecord(
            id=job_id,
            name="g",
            backend="local",
            backend_type="local",
            status="RUNNING",
            spec={},
            created=0.0,
            info={"gpus": gpus},
        ),
    )


def test_jobs_and_endpoint_replicas_never_share_a_gpu(monkeypatch):
    from nbscale.backends.local import gpus

    store = get_store()
    monkeypatch.setenv("NBSCALE_GPUS", "0,1,2,3")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,2,3")  # the user keeps GPU 0 for themself
    assert gpus.machine_gpus() == [1, 2, 3]
    _gpu_job(store, "a", [1])
    env = gpus.replica_env(store, "endpoint:ep:0")
    assert env == {"CUDA_VISIBLE_DEVICES": "2", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    gpus.bind_replica(store, "endpoint:ep:0", os.getpid(), psutil.Process().create_time())
    _gpu_job(store, "b", [])
    assert gpus.claim(store, "b", 2) is None  # only GPU 3 is free
    assert gpus.claim(store, "b", 1) == [3]
    # no GPU left: the next replica runs on the CPU instead of sharing one
    assert gpus.replica_env(store, "endpoint:ep:1") == {
        "CUDA_VISIBLE_DEVICES": "",
        "NBSCALE_DEVICE": "cpu",
    }
    # a replica whose process ended gives its GPU back
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    gpus.bind_replica(store, "endpoint:ep:0", int(ended.stdout), 1.0)
    _gpu_job(store, "c", [])
    assert gpus.claim(store, "c", 1) == [2]
