"""Defects of issue 14 in specs, the CLI and secrets: each test failed before its fix."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from nbscale.backends.local.processes import job_processes
from nbscale.store import get_store
from nbscale.store.jobs import JobRecord, get_job, insert_job, list_jobs
from tests.support import wait_for


def _no_jobs_and_no_job_dirs(home) -> None:
    assert list_jobs(get_store())[1] == 0
    assert not (home / "jobs").exists() or not any((home / "jobs").iterdir())


# -- resource upper bounds -----------------------------------------------------


def test_a_huge_node_count_is_refused_with_one_line_and_nothing_starts(
    nbscale_cli, write_script, nbscale_home
):
    script = write_script("tiny.py", "print('hi')\n")
    proc = nbscale_cli("run", str(script), "--nodes", "99999999999999999999", timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        "nbscale: error: nodes: must be at most 512, got 99999999999999999999 "
        "(ask for 512 or fewer; no backend nbscale runs on can honour more)"
    )
    _no_jobs_and_no_job_dirs(nbscale_home)


def test_the_local_backend_refuses_more_processes_than_this_machine_can_run(
    nbscale_cli, write_script, nbscale_home
):
    script = write_script("tiny.py", "print('hi')\n")
    cap = 4 * len(os.sched_getaffinity(0))
    proc = nbscale_cli("run", str(script), "--nodes", "2", "--procs-per-node", str(cap // 2 + 1))
    assert proc.returncode == 2, proc.stderr
    assert f"more than the local backend can run ({cap})" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    _no_jobs_and_no_job_dirs(nbscale_home)


@pytest.mark.parametrize(
    ("option", "value"), [("--image", "pytorch/pytorch:2"), ("--instance-type", "ml.g5.xlarge")]
)
def test_the_local_backend_refuses_options_it_would_ignore(
    option, value, nbscale_cli, write_script, nbscale_home
):
    script = write_script("tiny.py", "print('hi')\n")
    proc = nbscale_cli("run", option, value, str(script))
    assert proc.returncode == 2, proc.stderr
    field = option.lstrip("-").replace("-", "_")
    assert proc.stderr.startswith(f"nbscale: error: {field}: the local backend does not use it")
    assert f"drop {option}" in proc.stderr
    _no_jobs_and_no_job_dirs(nbscale_home)


# -- the CLI -------------------------------------------------------------------


def test_a_notebook_that_is_not_json_is_refused_before_submission(
    nbscale_cli, tmp_path, nbscale_home
):
    (tmp_path / "broken.ipynb").write_text("{ this is not json")
    proc = nbscale_cli("run", "broken.ipynb", cwd=tmp_path)
    assert proc.returncode == 2
    assert "broken.ipynb is not a notebook: it is not valid JSON" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    (tmp_path / "list.ipynb").write_text("[1, 2]")
    proc = nbscale_cli("run", "list.ipynb", cwd=tmp_path)
    assert proc.returncode == 2 and "has no list of cells" in proc.stderr
    _no_jobs_and_no_job_dirs(nbscale_home)


def test_a_parameter_that_is_not_a_python_name_is_refused_before_submission(
    nbscale_cli, tmp_path, nbscale_home
):
    from tests.support.notebooks import write_notebook

    write_notebook(tmp_path / "nb.ipynb", "x = 1")
    for name in ("bad name", "1st", "a-b", "x;import os"):
        proc = nbscale_cli("run", "nb.ipynb", "-p", name, "1", cwd=tmp_path)
        assert proc.returncode == 2, (name, proc.stderr)
        assert f"entry.parameters: {name!r} is not a Python name" in proc.stderr
    _no_jobs_and_no_job_dirs(nbscale_home)


def test_a_bad_tag_error_names_tag_not_env(nbscale_cli, write_script):
    script = write_script("tiny.py", "print('hi')\n")
    proc = nbscale_cli("run", "--tag", "noequal", str(script))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "nbscale: error: --tag: 'noequal' is not KEY=VALUE (write e.g. --tag team=vision)"
    )


def test_jobs_says_when_there_are_more_rows_than_shown(nbscale_cli, tmp_path):
    store = get_store()
    for i in range(3):
        spec = {"entry": {"kind": "script", "target": "x.py"}, "nodes": 1}
        insert_job(
            store,
            JobRecord(f"j-{i}", "j", "local", "local", "SUCCEEDED", spec, created=1000.0 + i),
        )
    proc = nbscale_cli("jobs", "--limit", "2", check=True)
    assert "showing the newest 2 of 3 jobs" in proc.stderr
    assert "j-2" in proc.stdout and "j-1" in proc.stdout and "j-0" not in proc.stdout
    proc = nbscale_cli("jobs", "--limit", "3", check=True)
    assert "showing" not in proc.stderr
    proc = nbscale_cli("jobs", "--limit", "0")
    assert proc.returncode == 2 and "--limit: must be at least 1" in proc.stderr


def test_sigterm_to_a_foreground_run_cancels_its_job(write_script, tmp_path):
    script = write_script("slow.py", "import time\nprint('tick', flush=True)\ntime.sleep(600)\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "nbscale", "run", "--procs-per-node", "2", str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        record = wait_for(
            lambda: next(iter(list_jobs(get_store())[0]), None), 60, what="the job row"
        )
        wait_for(lambda: len(job_processes(record.id)) >= 3, 120, what="the job's processes")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert f"cancelling job {record.id}" in err
    assert get_job(get_store(), record.id).status == "CANCELLED"
    assert job_processes(record.id) == []


# -- secrets ---------------------------------------------------------------------
