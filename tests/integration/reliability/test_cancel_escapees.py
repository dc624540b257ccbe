"""Cancel stops every process of a job, also one that cleared its environment (so the
NBSCALE_JOB_ID tag is gone) and detached itself from its parent (double fork): through
the job's cgroup v2 folder where the machine allows one, else through the process tree
(the supervisor is a child subreaper, so the detached process is re-parented to it)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import psutil
import pytest

import nbscale
from nbscale.backends.local.processes import job_cgroup_parent, job_processes, make_job_cgroup
from tests.support import wait_for

pytestmark = pytest.mark.timeout(180)

ESCAPER = textwrap.dedent("""
    import subprocess, sys, time
    # sh starts sleep in the background and exits: sleep is orphaned, with an empty environment
    subprocess.run(
        ["/bin/sh", "-c", f"sleep 600 & echo $! > {sys.argv[1]}"],
        env={}, start_new_session=True, check=True,
    )
    print("escaped", flush=True)
    time.sleep(600)
""")


def _cgroups_available() -> bool:
    folder = make_job_cgroup("nbscale-probe")
    if folder is None:
        return False
    folder.rmdir()
    return True


@pytest.mark.parametrize("mode", ["cgroup", "process-tree"])
def test_cancel_kills_a_child_that_cleared_its_environment_and_detached(
    write_script, tmp_path, monkeypatch, mode
):
    if mode == "process-tree":
        monkeypatch.setenv("NBSCALE_CGROUPS", "0")
    elif not _cgroups_available():
        pytest.skip(f"no writable cgroup v2 here ({job_cgroup_parent()})")
    pidfile = tmp_path / "escapee.pid"
    script = write_script("escaper.py", ESCAPER)
    job = nbscale.submit(
        nbscale.JobSpec(entry=nbscale.Entry.from_path(str(script)), args=(str(pidfile),))
    )
    wait_for(lambda: "escaped" in job.logs(0), 120, what="the child to detach")
    escapee = psutil.Process(int(pidfile.read_text()))
    assert "NBSCALE_JOB_ID" not in escapee.environ()  # the tag cannot find it
    cgroup = job.refresh().info.get("cgroup")
    if mode == "cgroup":
        assert cgroup and escapee.pid in map(
            int, (Path(cgroup) / "cgroup.procs").read_text().split()
        )
    else:
        assert cgroup is None
        assert escapee.ppid() == job.refresh().info["supervisor_pid"]  # re-parented to it

    assert job.cancel().status == "CANCELLED"
    wait_for(
        lambda: not escapee.is_running() or escapee.status() == psutil.STATUS_ZOMBIE,
        30,
        what="the detached child to be killed",
    )
    assert job_processes(job.id) == []
    if cgroup:
        assert not Path(cgroup).exists()  # the job's cgroup is removed with it
