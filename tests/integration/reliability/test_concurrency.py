"""R3: 50 submissions from 5 processes at once, while a pipeline runs and an endpoint is
deployed, all on one store: 50 job rows, no duplicates, no "database is locked"."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from nbscale import paths
from nbscale.endpoints import deploy, endpoints
from nbscale.jobs import jobs as job_handles
from nbscale.pipelines import start_run
from nbscale.store import get_store
from nbscale.store.jobs import SUCCEEDED, list_jobs
from tests.support.notebooks import code, write_notebook
from tests.support.serving import forward, mlp

pytestmark = pytest.mark.timeout(900)

PROCESSES, EACH = 5, 10

SUBMITTER = textwrap.dedent("""
    import json, sys, time, traceback
    from pathlib import Path
    import nbscale
    script, n, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    while not go.exists():          # every process starts submitting at the same moment
        time.sleep(0.005)
    ids, errors = [], []
    for i in range(int(sys.argv[4])):
        try:
            job = nbscale.submit(nbscale.JobSpec(
                entry=nbscale.Entry.from_path(script), name=f"burst-{n}-{i}"))
            ids.append(job.id)
        except Exception:
            errors.append(traceback.format_exc())
    print(json.dumps({"ids": ids, "errors": errors}))
""")


def test_fifty_submissions_from_five_processes_beside_a_pipeline_and_an_endpoint(tmp_path):
    script = tmp_path / "quick.py"
    script.write_text("print('hi')\n")
    submitter = tmp_path / "submitter.py"
    submitter.write_text(SUBMITTER)
    go = tmp_path / "go"
    flow = write_notebook(
        tmp_path / "flow.ipynb",
        code("a = 21", "step:one"),
        code("b = a * 2\nassert b == 42", "step:two", "prev:one"),
    )
    get_store()  # the store exists before the crowd arrives, as it would in use
    procs = [
        subprocess.Popen(
            [sys.executable, str(submitter), str(script), str(n), str(go), str(EACH)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(PROCESSES)
    ]
    side: dict[str, object] = {}

    def pipeline() -> None:
        side["pipeline"] = start_run(str(flow), detach=False)

    def endpoint() -> None:
        model = mlp()
        ep = deploy(model, name="r3", replicas=1)
        x = np.random.default_rng(0).random((4, 64), dtype=np.float32)
        side["predict_ok"] = np.allclose(ep.predict(x), forward(model, x), atol=1e-5)

    threads = [threading.Thread(target=pipeline), threading.Thread(target=endpoint)]
    go.touch()
    began = time.monotonic()
    for t in threads:
        t.start()
    try:
        outs = [p.communicate(timeout=600) for p in procs]
        submit_s = time.monotonic() - began
        for t in threads:
            t.join(timeout=600)
        reports = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
        errors = [e for r in reports for e in r["errors"]]
        assert errors == [], errors[0]
        everything = "".join(o + e for o, e in outs)
        ids = [i for r in reports for i in r["ids"]]
        rows, total = list_jobs(get_store(), limit=1000)
        assert total == PROCESSES * EACH == len(ids) == len(set(ids))
        assert {r.id for r in rows} == set(ids)
        assert len({r.name for r in rows}) == PROCESSES * EACH  # no row written twice
        assert side["pipeline"].status == "SUCCEEDED"
        assert side["predict_ok"] is True
        ended = [j.wait(timeout=600) for j in job_handles(limit=1000)]
        finished_s = time.monotonic() - began
        assert [r.status for r in ended].count(SUCCEEDED) == PROCESSES * EACH, [
            (r.id, r.status, r.error) for r in ended if r.status != SUCCEEDED
        ]
        # nobody saw the store locked: not the submitters, not a supervisor, not a log
        logs = "".join(
            p.read_text(errors="replace") for p in (paths.home() / "jobs").rglob("*.log")
        )
        assert "database is locked" not in everything + logs
        conn = sqlite3.connect(paths.db_path())
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.close()
        print(
            f"R3: {total} rows from {PROCESSES} processes, 0 duplicates, 0 locked; "
            f"submissions done in {submit_s:.1f} s, every job ended in {finished_s:.1f} s"
        )
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for ep in endpoints():
            ep.delete()


OPENER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from nbscale.store import get_store
    from nbscale.store.jobs import list_jobs
    go = Path(sys.argv[1])
    Path(sys.argv[2]).touch()       # imported, ready
    while not go.exists():
        time.sleep(0.001)
    print(list_jobs(get_store())[1])
""")


def test_a_new_store_opened_by_eight_processes_at_one_moment(tmp_path):
    """The first opens of a store race to turn it to WAL; SQLite refuses one of two such
    racers at once ("database is locked", no busy wait), which once failed a submission
    from a crowd that arrived before the store existed. Eight rounds of eight openers."""
    opener = tmp_path / "opener.py"
    opener.write_text(OPENER)
    for round_ in range(8):
        home, go = tmp_path / f"home-{round_}", tmp_path / f"go-{round_}"
        ready = tmp_path / f"ready-{round_}"
        ready.mkdir()
        procs = [
            subprocess.Popen(
                [sys.executable, str(opener), str(go), str(ready / str(n))],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, "NBSCALE_HOME": str(home)},
            )
            for n in range(8)
        ]
        deadline = time.monotonic() + 120
        while len(list(ready.iterdir())) < 8 and time.monotonic() < deadline:
            time.sleep(0.01)
        go.touch()  # every opener imported and waiting: they open the store together
        outs = [p.communicate(timeout=120) for p in procs]
        assert [(p.returncode, out.strip()) for p, (out, _) in zip(procs, outs, strict=True)] == [
            (0, "0")
        ] * 8, [err for _, err in outs]
        conn = sqlite3.connect(home / "nbscale.db")
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.close()
