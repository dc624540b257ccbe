"""A pipeline step with a ``sweep:`` block, run here: its trials are local jobs of the step's
notebook, the best trial's outputs go downstream, and the cache knows the sweep block."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from nbscale import sweep_runs
from nbscale.pipelines import start_run
from nbscale.store import get_store
from nbscale.store.jobs import get_job
from tests.support.pipeline_notebooks import cell, write_notebook

# a planted objective: the loss is smallest at lr = 1e-2 (a parabola in log10(lr))
TRAIN = (
    "import math\n"
    "import nbscale\n"
    "loss = (math.log10(lr) + 2.0) ** 2 + 0.01 * len(data)\n"
    "nbscale.log_metric('val_loss', loss)\n"
    "model = {'lr': lr, 'loss': loss, 'rows': len(data)}"
)
REPORT = "import json\nwith open('report.json', 'w') as fh:\n    json.dump(model, fh)"
SWEEP = {
    "space": {"lr": "loguniform(1e-4,1e-1)"},
    "objective": "val_loss:min",
    "trials": 4,
    "parallel": 2,
    "seed": 3,
}


def flow(folder: Path, sweep: dict, train: str = TRAIN) -> Path:
    write_notebook(folder / "prepare.ipynb", [cell("data = list(range(rows))")])
    write_notebook(folder / "train.ipynb", [cell("lr = 0.5", "parameters"), cell(train)])
    write_notebook(folder / "report.ipynb", [cell(REPORT)])
    doc = {
        "name": "tune",
        "parameters": {"rows": 5},
        "steps": [
            {"name": "prepare", "notebook": "prepare.ipynb"},
            {"name": "train", "notebook": "train.ipynb", "depends_on": ["prepare"], "sweep": sweep},
            {"name": "report", "notebook": "report.ipynb", "depends_on": ["train"]},
        ],
    }
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def statuses(run) -> dict[str, str]:
    return {s["name"]: s["status"] for s in run.to_dict()["steps"]}


@pytest.mark.timeout(900)
def test_the_best_trial_goes_downstream_and_the_sweep_block_is_in_the_cache_key(tmp_path):
    path = flow(tmp_path, SWEEP)
    run = start_run(str(path), detach=False, max_parallel=2)
    assert run.status == "SUCCEEDED", run.to_dict()
    train = next(s for s in run.to_dict()["steps"] if s["name"] == "train")
    record = train["sweep"]
    sweep = sweep_runs.get(record["sweep"])
    view = sweep.view()
    assert view.status == "SUCCEEDED" and len(view.trials) == 4
    assert all(t.status == "SUCCEEDED" for t in view.trials)
    best = view.best
    # the step's record names the best trial and its objective
    assert record["best_trial"] == best.number and record["objective"] == "val_loss:min"
    assert record["value"] == pytest.approx(best.value)
    assert record["params"] == best.params and record["trials"] == {"SUCCEEDED": 4}
    assert best.value == min(t.value for t in view.trials)
    # each trial was a local job of the step's notebook, tagged with its sweep and run
    jobs = [get_job(get_store(), t.job_id) for t in view.trials]
    assert {j.spec["tags"]["nbscale-pipeline-run"] for j in jobs} == {run.id}
    assert all(j.spec["entry"]["kind"] == "notebook" for j in jobs)
    assert len({t.params["lr"] for t in view.trials}) == 4
    # downstream read the best trial's values, and the step's notebook is the best trial's
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["lr"] == pytest.approx(best.params["lr"])
    assert report["loss"] == pytest.approx((math.log10(best.params["lr"]) + 2) ** 2 + 0.05)
    assert report["rows"] == 5
    executed = json.loads(Path(train["notebook"]).read_text())
    injected = [c for c in executed["cells"] if "injected-parameters" in c["metadata"]["tags"]]
    assert f"lr = {best.params['lr']!r}" in "".join(injected[0]["source"])

    (tmp_path / "report.json").unlink()
    again = start_run(str(path), detach=False)
    assert statuses(again) == {"prepare": "CACHED", "train": "CACHED", "report": "CACHED"}
    cached = again.step("train")
    assert cached["cache_reason"] == f"hit: unchanged since run {run.id}"
    assert next(s for s in again.to_dict()["steps"] if s["name"] == "train")["sweep"] == record
    assert len(sweep_runs.sweeps()) == 1  # no trial ran again

    # another seed draws other values: the sweep runs again and its best goes downstream
    changed = start_run(str(flow(tmp_path, {**SWEEP, "trials": 3, "seed": 4})), detach=False)
    assert statuses(changed) == {"prepare": "CACHED", "train": "SUCCEEDED", "report": "SUCCEEDED"}
    assert changed.step("train")["cache_reason"] == "miss: sweep seed, trials changed"
    second = next(s for s in changed.to_dict()["steps"] if s["name"] == "train")["sweep"]
    assert second["sweep"] != record["sweep"] and second["trials"] == {"SUCCEEDED": 3}
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["lr"] == pytest.approx(second["params"]["lr"])


@pytest.mark.timeout(600)
def test_a_sweep_whose_trials_all_fail_fails_the_step_with_the_sweeps_message(tmp_path):
    failing = (
        "import nbscale\nnbscale.log_metric('val_loss', 1.0)\nraise ValueError(f'bad lr {lr}')\n"
        "model = lr"
    )
    path = flow(tmp_path, {**SWEEP, "trials": 2, "parallel": 2, "max_failed": 1}, failing)
    run = start_run(str(path), detach=False)
    assert run.status == "FAILED"
    assert statuses(run) == {"prepare": "SUCCEEDED", "train": "FAILED", "report": "SKIPPED"}
    error = run.step("train")["error"]
    assert error.startswith("step train: its sweep tune-train-"), error
    assert "failed: 2 trials failed, more than sweep.max_failed 1" in error, error
    assert "ValueError: bad lr" in error, error
    assert run.error == error
    assert "sweep" not in next(s for s in run.to_dict()["steps"] if s["name"] == "train")


@pytest.mark.timeout(600)
def test_a_detached_run_sweeps_in_its_runner_process(tmp_path):
    run = start_run(str(flow(tmp_path, {**SWEEP, "trials": 2})), detach=True).wait(timeout=400)
    assert run.status == "SUCCEEDED", run.to_dict()
    record = next(s for s in run.to_dict()["steps"] if s["name"] == "train")["sweep"]
    assert record["trials"] == {"SUCCEEDED": 2}
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["lr"] == pytest.approx(record["params"]["lr"])
