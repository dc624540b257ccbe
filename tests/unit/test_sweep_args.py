"""The faces of a sweep without running one: ``%%train --sweep`` and ``nbscale sweep``
arguments, the CLI's live lines, the notebook's plots, and a trial's values in the cell."""

from __future__ import annotations

import io
import json

import pytest

from nbscale.backends.sweep_base import SweepView, TrialView
from nbscale.errors import SpecError
from nbscale.specs import Entry, JobSpec
from nbscale.sweeps.spec import PARAMS_ENV, SPACE_ENV, SweepSpec


def test_the_sweep_value_runs_to_the_next_option_quoted_or_not():
    from magics.train_args import split_sweep

    rest, space = split_sweep(
        "--procs-per-node 2 --sweep lr=loguniform(1e-4, 1e-1) tag=choice('a b', 'c') "
        "--objective val_loss:min --trials 4"
    )
    assert space == ["lr=loguniform(1e-4, 1e-1)", "tag=choice('a b', 'c')"]
    assert rest == "--procs-per-node 2 --objective val_loss:min --trials 4"
    rest, space = split_sweep('--sweep "lr=uniform(0,1) b=int(1,3)" --outputs m')
    assert space == ["lr=uniform(0,1) b=int(1,3)"] and rest == "--outputs m"
    assert split_sweep("--nodes 1") == ("--nodes 1", None)


def test_train_with_a_sweep_parses_its_options_and_keeps_the_budget_off_the_trials():
    from magics.train_args import parse_train

    args = parse_train(
        "--sweep lr=loguniform(1e-4,1e-1) batch=choice(32,64) --objective val_loss:min "
        "--trials 16 --parallel 4 --pruner none --algorithm random --max-failed 2 --seed 7 "
        "--max-cost 5 --outputs model --sweep-var s"
    )
    sweep = args.sweep
    assert sweep.space.names == ["lr", "batch"] and sweep.objective == "val_loss:min"
    assert sweep.options == {
        "trials": 16,
        "parallel": 4,
        "algorithm": "random",
        "pruner": "none",
        "max_failed": 2,
        "seed": 7,
        "max_cost": 5.0,
    }
    assert sweep.var == "s" and args.outputs == ["model"]
    assert args.spec.max_cost is None  # the sweep's budget, not each trial's
    assert parse_train("--max-cost 5").spec.max_cost == 5.0 and parse_train("").sweep is None


def test_async_and_detach_are_taken_by_a_sweep():
    from magics.train_args import parse_train

    args = parse_train("--sweep lr=uniform(0,1) --objective l:min --async")
    assert args.run_async and args.sweep is not None
    assert parse_train("--sweep lr=uniform(0,1) --objective l:min --detach").detach


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("--sweep lr=gauss(0,1) --objective l:min", "unknown distribution 'gauss'"),
        ("--sweep lr=uniform(1,0) --objective l:min", "the range is empty"),
        ("--sweep lr=uniform(0,1)", "--objective: is missing"),
        ("--sweep lr=uniform(0,1) --objective loss", "says neither min nor max"),
        ("--objective loss:min", "--objective: is an option of a sweep"),
        ("--trials 3", "--trials: is an option of a sweep"),
        ("--sweep --objective l:min", "--sweep: names no parameter"),
        ("--sweep lr=uniform(0,1) --objective l:min --sweep-var 1x", "is not a Python name"),
        ("--sweep lr=uniform(0,1) --objective l:min --pruner best", "invalid choice: 'best'"),
    ],
)
def test_a_bad_sweep_line_is_one_spec_error(line, says):
    from magics.train_args import parse_train

    with pytest.raises(SpecError) as err:
        parse_train(line)
    assert says in str(err.value)
    assert "\n" not in str(err.value)


def test_the_cli_reads_the_same_options_and_joins_split_tokens():
    from nbscale.cli import build_parser
    from nbscale.faces.options import sweep_request

    args = build_parser().parse_args(
        [
            "sweep",
            "train.py",
            "--sweep",
            "lr=loguniform(1e-4,",  # a shell split inside the parentheses
            "1e-1)",
            "--sweep",
            "batch=choice(32,64) layers=int(2,6)",
            "--objective",
            "acc:max",
            "--trials",
            "8",
            "--max-cost",
            "3",
            "--nodes",
            "2",
        ]
    )
    space, objective, options = sweep_request(args)
    assert space.names == ["lr", "batch", "layers"] and objective == "acc:max"
    assert options == {"trials": 8, "max_cost": 3.0}
    assert args.nodes == 2 and args.func.__name__ == "cmd_sweep" and args.takes_extra


def _view(status="RUNNING", trials=()):
    return SweepView(
        id="s-1", name="s", backend="local", status=status, objective="loss:min",
        trials=list(trials), planned=3,
    )  # fmt: skip


def test_the_cli_prints_a_line_per_change_and_a_failed_trials_error_once():
    from nbscale.cli.sweep_cmd import LiveLines

    out = io.StringIO()
    live = LiveLines(out)
    running = TrialView(0, {"lr": 0.1}, "RUNNING")
    live(_view(trials=[running]))
    live(_view(trials=[running]))  # nothing changed: nothing said
    failed = TrialView(0, {"lr": 0.1}, "FAILED", error="Traceback...\nValueError: boom")
    done = TrialView(1, {"lr": 0.01}, "SUCCEEDED", value=0.5, last=0.5)
    live(_view(trials=[failed, done]))
    live(_view(trials=[failed, done]))
    live(_view("SUCCEEDED", trials=[failed, done]))
    lines = out.getvalue().splitlines()
    assert len(lines) == 4, lines
    assert "RUNNING, 0/3 trials done (1 running)" in lines[0]
    assert lines[1].endswith("trial 0 failed: ValueError: boom")
    assert "best loss 0.5 (trial 1: lr=0.01)" in lines[2] and "SUCCEEDED" in lines[3]


def test_the_plots_come_from_the_finished_trials_of_any_backend():
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    from magics.sweep_view import plots, study_of

    spec = SweepSpec(
        job=JobSpec(entry=Entry("module", "train")),
        space="lr=loguniform(1e-4,1e-1) batch=choice(32,64)",
        objective="loss:min",
        trials=4,
    )
    trials = [
        # remote platforms hand values back as strings: cast by the space
        TrialView(0, {"lr": "0.001", "batch": "32"}, "SUCCEEDED", value=0.9),
        TrialView(1, {"lr": 0.01, "batch": 64}, "SUCCEEDED", value=0.2),
        TrialView(2, {"lr": 0.05, "batch": 64}, "FAILED", error="boom"),
        TrialView(3, {"lr": 0.002, "batch": 32}, "PRUNED", last=3.0),
    ]
    view = _view("SUCCEEDED", trials)
    study = study_of(view, spec)
    assert [t.params for t in study.trials] == [
        {"lr": 0.001, "batch": 32},
        {"lr": 0.01, "batch": 64},
    ]
    assert study.best_value == 0.2  # a failed trial is not scored at all, let alone 0
    drawn = plots(view, spec)
    assert [t for t, _ in drawn] == ["optimization history", "parallel coordinates"]
    import base64

    assert all(base64.b64decode(png).startswith(b"\x89PNG") for _, png in drawn)
    assert plots(_view("SUCCEEDED", trials[:1]), spec) == []  # one point: nothing to plot


def test_a_trials_values_reach_the_cell_as_plain_variables(monkeypatch):
    from nbscale.runtime.cell import sweep_values

    assert sweep_values() == {}
    monkeypatch.setenv(PARAMS_ENV, json.dumps({"lr": 0.01, "batch": "64"}))
    space = [
        {"name": "lr", "kind": "float", "low": 1e-4, "high": 0.1, "log": True},
        {"name": "batch", "kind": "categorical", "choices": [32, 64]},
    ]
    monkeypatch.setenv(SPACE_ENV, json.dumps(space))
    assert sweep_values() == {"lr": 0.01, "batch": 64}
