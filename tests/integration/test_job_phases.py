"""NBSCALE_PHASES=1: every process of a local job writes when it reached each phase, in order,
and the job still ends with its true exit and its last log line."""

from __future__ import annotations

from pathlib import Path

import nbscale
from nbscale.runtime import phases

ORDER = [
    "submit: job recorded",
    "submit: supervisor starts",
    "supervisor: imported",
    "supervisor: running",
    "supervisor: spawning agents",
    "supervisor: agents spawned",
    "agent: running",
    "agent: torchrun imported",
    "worker: running",
    "worker: log pump started",
    "worker: entry starts",
    "worker: entry returned",
    "agent: torchrun returned",
    "supervisor: agents ended",
    "supervisor: processes stopped",
    "supervisor: logs drained",
    "supervisor: end recorded",
]
# the submitter's own marks, whose place among the supervisor's depends on scheduling
SUBMITTER = ["submit: backend called", "submit: supervisor launched"]


def test_each_process_of_a_job_records_its_phases_in_order(write_script, monkeypatch):
    monkeypatch.setenv(phases.ENV, "1")
    script = write_script("tiny.py", "print('the last line')\n")
    job = nbscale.submit(nbscale.JobSpec(entry=nbscale.Entry.from_path(str(script))))
    record = job.wait(timeout=120)
    assert record.status == "SUCCEEDED" and record.exit_code == 0, job.logs()
    assert job.logs(0).rstrip().endswith("the last line")
    rows = phases.read(Path(record.info["job_dir"]))
    seen = [r["phase"] for r in rows]
    # each phase once (one node, one rank), in the order the job went through them
    assert sorted(seen) == sorted(ORDER + SUBMITTER), seen
    assert [p for p in seen if p in ORDER] == ORDER
    assert {r["pid"] for r in rows if r["phase"].startswith("worker:")} != {
        r["pid"] for r in rows if r["phase"].startswith("agent:")
    }


def test_no_phase_file_when_timing_is_off(write_script, monkeypatch):
    monkeypatch.delenv(phases.ENV, raising=False)
    script = write_script("tiny.py", "print('hi')\n")
    job = nbscale.submit(nbscale.JobSpec(entry=nbscale.Entry.from_path(str(script))))
    record = job.wait(timeout=120)
    assert record.status == "SUCCEEDED", job.logs()
    assert not (Path(record.info["job_dir"]) / phases.FILE).exists()
