"""The Jobs section pages forward and back by cursor (keyset paging, issue 23), in a real
browser (Chromium, playwright-core); the browser steps are in extension/ui-tests/paging.test.mjs.

The store holds 60 finished jobs, written as the local backend leaves them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nbscale.store import get_store
from nbscale.store.jobs import FAILED, SUCCEEDED, JobRecord, insert_job
from tests.support.lab import run_browser_script

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture
def sixty_jobs():
    store = get_store()
    for i in range(60):
        insert_job(
            store,
            JobRecord(
                f"pg-{i:02d}", f"paged-{i:02d}", "local", "local",
                FAILED if i % 2 == 0 else SUCCEEDED,
                {"nodes": 1, "procs_per_node": 1, "gpus_per_proc": 0},
                created=1_700_000_000 + i, started=1_700_000_001 + i, ended=1_700_000_060 + i,
            ),
        )  # fmt: skip


def test_jobs_section_pages_forward_and_back_by_cursor(sixty_jobs, lab, tmp_path):
    shots = Path(os.environ.get("NBSCALE_SCREENSHOTS") or tmp_path / "shots")
    run_browser_script(lab, "paging.test.mjs", shots)
    assert (shots / "paging-last.png").stat().st_size > 1_000
