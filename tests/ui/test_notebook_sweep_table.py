"""A ``%%train --sweep`` cell's live table in a real browser (Chromium, playwright-core)
against JupyterLab: the notebook is run from Lab's Run menu on a JupyterLab kernel, the
sweep's four trials are real local jobs, and the cell shows one output updated in place
(watched from before the cell runs to its end), the final table best first with the best
marked, and the optimization history and parallel coordinates decoded. The browser steps
are in extension/ui-tests/notebook-sweep.test.mjs; what the browser saw is compared here
with the sweep in the store.

The planted objective: ``val_loss = (log10(lr) + 2)^2 + 0.1/(step+1)``, smallest at
``lr = 0.01``. The notebook defines ``lr = 0.01`` itself; each trial runs with its own.
"""

from __future__ import annotations

import ast
import json
import math
import os
from pathlib import Path

import pytest

from nbscale import sweep_runs
from nbscale.store import get_store
from nbscale.store.jobs import list_jobs
from nbscale.store.sweeps import list_sweeps
from tests.support.lab import run_browser_script
from tests.support.notebooks import write_notebook

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SETUP = """\
%load_ext nbscale
import math, time
import nbscale
lr = 0.01  # the notebook's own value: each trial runs the cell with its own
"""

SWEEP = """\
%%train --sweep lr=loguniform(1e-4,1e-1) --objective val_loss:min --trials 4 --parallel 2 --pruner none --seed 1
for step in range(3):
    nbscale.log_metric("val_loss", (math.log10(lr) + 2) ** 2 + 0.1 / (step + 1), step=step)
    time.sleep(0.3)
"""


def planted(lr: float) -> float:
    return (math.log10(lr) + 2) ** 2 + 0.1 / 3


def test_the_sweep_cell_shows_one_live_table_updated_in_place(lab, tmp_path):
    write_notebook(lab["root"] / "sweep.ipynb", SETUP, SWEEP, "print(sweep.best_params)")
    shots = Path(os.environ.get("NBSCALE_SCREENSHOTS") or tmp_path / "shots")
    run_browser_script(lab, "notebook-sweep.test.mjs", shots, NBS_NOTEBOOK="sweep.ipynb")
    seen = json.loads((shots / "notebook-sweep.json").read_text())

    # the kernel's sweep is the one in the store (the lab's kernel shares this NBSCALE_HOME)
    (record,) = list_sweeps(get_store())
    view = sweep_runs.get(record.id).view()
    assert view.status == "SUCCEEDED" and view.counts() == {"SUCCEEDED": 4}
    assert seen["summary"].startswith(f"sweep {record.id} on local: SUCCEEDED, 4/4")
    trials = [
        r
        for r in list_jobs(get_store(), limit=100)[0]
        if r.spec.get("tags", {}).get("nbscale-sweep")
    ]
    assert len(trials) == 4 and {r.status for r in trials} == {"SUCCEEDED"}

    # the browser's final table is the store's trials, best first, each scored by the
    # planted objective at its own lr (never the notebook's 0.01)
    col = {name: i for i, name in enumerate(seen["head"])}
    ranked = view.ranked()
    assert [int(r[col["trial"]].rstrip(" *")) for r in seen["rows"]] == [t.number for t in ranked]
    for row, t in zip(seen["rows"], ranked, strict=True):
        assert t.value == pytest.approx(planted(t.params["lr"]), rel=1e-12)
        assert float(row[col["lr"]]) == pytest.approx(t.params["lr"], rel=1e-3)
        assert float(row[col["val_loss:min"]]) == pytest.approx(t.value, rel=1e-3, abs=1e-4)
    assert len({t.params["lr"] for t in ranked}) == 4 and 0.01 not in {
        t.params["lr"] for t in ranked
    }

    # print(sweep.best_params) in the notebook printed the best trial's values exactly
    assert ast.literal_eval(seen["best"]) == view.best.params == ranked[0].params
    assert (shots / "notebook-sweep.png").stat().st_size > 5_000
