"""The Sweeps section in a real browser (Chromium, playwright-core) against JupyterLab:
a sweep's trials best first, the best marked, the objective chart and the parallel
coordinates drawn, the table updated in place when the study changes, cancel through
the API, and the trial jobs gathered under their sweep in the jobs list. The browser
steps are in extension/ui-tests/sweeps.test.mjs.

The sweep is written as the local driver leaves it: its row in the store and a real
Optuna journal (tests/support/sweep_store.py); the driver is this process.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from nbscale.store import get_store
from nbscale.store.jobs import SUCCEEDED, JobRecord, insert_job
from nbscale.store.sweeps import get_sweep
from tests.support.lab import run_browser_script
from tests.support.sweep_store import add_trial, planted_sweep

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture
def sweep(tmp_path):
    spec, study = planted_sweep(tmp_path, trials=6)
    add_trial(spec, study, {"lr": 0.05, "batch": 32, "layers": 3}, [0.9, 0.6, 0.42])
    add_trial(spec, study, {"lr": 0.011, "batch": 64, "layers": 4}, [0.8, 0.3, 0.05])
    add_trial(spec, study, {"lr": 0.0002, "batch": 32, "layers": 2}, [2.0], state="PRUNED")
    add_trial(spec, study, {"lr": 0.02, "batch": 32, "layers": 5}, [0.7, 0.2], state="RUNNING")
    now = time.time()
    shape = {"nodes": 1, "procs_per_node": 1, "gpus_per_proc": 0}
    for i, status in enumerate((SUCCEEDED, SUCCEEDED)):
        tags = {"nbscale-sweep": spec.id, "nbscale-trial": str(i)}
        insert_job(
            get_store(),
            JobRecord(
                f"trial-job-{i}", spec.trial_name(i), "local", "local", status,
                {**shape, "tags": tags}, created=now + i, started=now + i, ended=now + i + 5,
            ),
        )  # fmt: skip
    insert_job(
        get_store(),
        JobRecord(
            "plain-job",
            "plain",
            "local",
            "local",
            SUCCEEDED,
            shape,
            created=now + 2,
            started=now + 2,
        ),
    )
    return spec, study


def api(lab: dict, path: str, method: str = "GET") -> tuple[int, dict]:
    req = urllib.request.Request(
        f"{lab['url']}/nbscale/api/{path}",
        method=method,
        headers={"Authorization": f"token {lab['token']}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_the_sweeps_routes_answer_through_the_server(sweep, lab):
    spec, _ = sweep
    code, body = api(lab, "sweeps")
    assert code == 200 and [s["id"] for s in body["sweeps"]] == [spec.id]
    assert body["sweeps"][0]["done"] == 3 and body["sweeps"][0]["best_trial"] == 1
    code, body = api(lab, f"sweeps/{spec.id}")
    assert code == 200 and [t["number"] for t in body["trials"]] == [1, 3, 0, 2]
    code, body = api(lab, "sweeps/no-such-sweep")
    assert (code, body["error"]) == (404, "not_found")
    code, body = api(lab, "sweeps?limit=0")
    assert (code, body["error"]) == (400, "bad_request")
    code, body = api(lab, f"sweeps/{spec.id}", "DELETE")
    assert code == 200 and body["status"] == "CANCELLED"
    code, body = api(lab, f"sweeps/{spec.id}", "DELETE")
    assert code == 409 and "already ended" in body["message"]


def test_sweeps_section_follows_a_sweep_and_cancels_it(sweep, lab, tmp_path):
    spec, study = sweep
    shots = Path(os.environ.get("NBSCALE_SCREENSHOTS") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    failure: list[BaseException] = []

    def change_when_asked():
        try:
            deadline = time.monotonic() + 240
            while not (shots / "ready").exists():
                if time.monotonic() > deadline:
                    return
                time.sleep(0.1)
            study.tell(3, 0.01)  # the running trial ends, the new best
            add_trial(
                spec, study, {"lr": 0.03, "batch": 64, "layers": 2}, [0.5, 0.3], state="RUNNING"
            )
            (shots / "changed").write_text("")
        except BaseException as exc:  # reported by the test, not lost in the thread
            failure.append(exc)

    changer = threading.Thread(target=change_when_asked, daemon=True)
    changer.start()
    run_browser_script(lab, "sweeps.test.mjs", shots, NBS_SWEEP=spec.id)
    changer.join(5)
    assert not failure, failure
    # the panel's cancel reached the engine: the sweep and its running trial are cancelled
    assert get_sweep(get_store(), spec.id).status == "CANCELLED"
    from nbscale import sweep_runs

    trials = {t.number: t.status for t in sweep_runs.get(spec.id).view().trials}
    assert trials == {0: "SUCCEEDED", 1: "SUCCEEDED", 2: "PRUNED", 3: "SUCCEEDED", 4: "CANCELLED"}
    assert (shots / "sweeps-running.png").stat().st_size > 1_000
