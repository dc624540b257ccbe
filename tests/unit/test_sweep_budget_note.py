"""A sweep budget no ``--max-runtime`` bounds cannot be estimated up front: the note says how
the backend the sweep runs on holds it, which differs from one platform to the next."""

from __future__ import annotations

import pytest

from nbscale.config import BackendConfig, Config
from nbscale.specs import Entry, JobSpec
from nbscale.sweep_runs import check_sweep_budget
from nbscale.sweeps.spec import SweepSpec


def _sweep(tmp_path, backend: str) -> SweepSpec:
    script = tmp_path / "train.py"
    script.write_text("import nbscale\nnbscale.log_metric('loss', nbscale.param('lr'))\n")
    job = JobSpec(entry=Entry.from_path(str(script)), name="fit", backend=backend)
    return SweepSpec(
        job=job, space="lr=loguniform(1e-4,1e-1)", objective="loss:min", trials=4, max_cost=5.0
    )


@pytest.mark.parametrize(
    ("type_", "settings", "says"),
    [
        ("local", {}, "trials stop being started once the spend reaches it"),
        (
            "kubeflow",
            {"storage": "s3://b/w", "price_per_node_hour": 2.0},
            "each trial's TrainJob is stopped (activeDeadlineSeconds)",
        ),
    ],
)
def test_the_note_of_an_unbounded_budget_says_how_its_backend_holds_it(
    tmp_path, type_, settings, says
):
    config = Config(backends={"b": BackendConfig("b", type_, settings)})
    note = check_sweep_budget(_sweep(tmp_path, "b"), config)
    assert note.startswith("budget $5.00 for the sweep: no --max-runtime bounds a trial")
    assert says in note


def test_a_sweeps_spend_is_the_sum_of_its_priced_trials_and_the_summary_says_it():
    from nbscale.sweeps.table import summary
    from nbscale.sweeps.view import SweepView, TrialView

    trials = [
        TrialView(0, {"lr": 0.1}, "SUCCEEDED", value=0.5, cost=0.25),
        TrialView(1, {"lr": 0.01}, "SUCCEEDED", value=0.2, cost=0.5),
        TrialView(2, {"lr": 0.001}, "RUNNING", last=0.9),  # not priced yet
    ]
    view = SweepView("s-1", "s", "aws", "RUNNING", "loss:min", trials, planned=4)
    assert view.cost == 0.75 and view.to_dict()["cost"] == 0.75
    assert summary(view).endswith("; $0.75 spent")
    free = SweepView("s-2", "s", "local", "RUNNING", "loss:min", trials[2:], planned=4)
    assert free.cost is None and "spent" not in summary(free)
