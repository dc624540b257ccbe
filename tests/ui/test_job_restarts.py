"""R1 in the UI: a job torchrun restarted shows its restart count in the panel's job view
(real Chromium, playwright-core), in ``nbscale jobs`` and in ``%jobs``.

The job's first attempt fails on purpose (rank 0 exits 3 when TORCHELASTIC_RESTART_COUNT is
0); with --max-restarts 1 torchrun restarts the group and the second attempt succeeds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.support.lab import run_browser_script
from tests.support.notebooks import write_notebook

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

FLAKY = """\
import os, sys
attempt = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
print("attempt", attempt, "rank", os.environ["RANK"], flush=True)
if attempt == 0 and os.environ["RANK"] == "0":
    sys.exit(3)
"""


def _restarts_column(listing: str, job_id: str, title: str = "RESTARTS") -> str:
    """The value under ``title`` in the job's row of an aligned table."""
    header, *rows = listing.splitlines()
    row = next(r for r in rows if r.startswith(job_id))
    return row[header.index(title) :].split()[0]


@pytest.fixture
def restarted_job(nbscale_cli, tmp_path):
    script = tmp_path / "flaky.py"
    script.write_text(FLAKY)
    proc = nbscale_cli(
        "run", "--procs-per-node", "2", "--max-restarts", "1", "--name", "flaky", str(script)
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (job,) = json.loads(nbscale_cli("jobs", "--json", check=True).stdout)
    assert job["status"] == "SUCCEEDED" and job["restarts"] == 1, job
    return job["id"]


def test_nbscale_jobs_and_percent_jobs_show_the_restart_count(restarted_job, nbscale_cli):
    listing = nbscale_cli("jobs", check=True).stdout
    assert _restarts_column(listing, restarted_job) == "1", listing

    from nbscale.magics.display import JobsTable  # what %jobs shows

    from nbscale.jobs import jobs

    text = JobsTable([h.record for h in jobs()])._repr_mimebundle_()["text/plain"]
    assert _restarts_column(text, restarted_job, "restarts") == "1", text


def test_the_job_view_shows_the_restart_count(lab, restarted_job, tmp_path):
    write_notebook(lab["root"] / "empty.ipynb", "1 + 1")
    shots = Path(os.environ.get("NBSCALE_SCREENSHOTS") or tmp_path / "shots")
    run_browser_script(
        lab, "restarts.test.mjs", shots, NBS_NOTEBOOK="empty.ipynb", NBS_JOB=restarted_job
    )
    assert (shots / "job-restarts.png").stat().st_size > 10_000
