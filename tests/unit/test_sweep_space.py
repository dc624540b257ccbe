"""The sweep's words: the space and objective grammar, the spec, a trial's values and its metric line."""

from __future__ import annotations

import json
import re

import pytest

from nbscale.errors import SpecError
from nbscale.specs import Entry, JobSpec
from nbscale.sweeps import lines
from nbscale.sweeps.params import current, param
from nbscale.sweeps.space import Param, parse_objective, parse_space
from nbscale.sweeps.spec import PARAMS_ENV, SPACE_ENV, SWEEP_ENV, SweepSpec


def test_the_space_grammar_reads_every_distribution():
    space = parse_space(
        "lr=loguniform(1e-4,1e-1) batch=choice(32,64) layers=int(2,6) "
        "drop=uniform(0,0.5,0.1) opt=choice('adam', 'sgd w/ momentum') width=logint(8,512)"
    )
    assert space.names == ["lr", "batch", "layers", "drop", "opt", "width"]
    assert space["lr"] == Param("lr", "float", low=1e-4, high=1e-1, log=True)
    assert space["batch"].choices == (32, 64)
    assert space["layers"] == Param("layers", "int", low=2, high=6)
    assert space["drop"].grid() == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    assert space["opt"].choices == ("adam", "sgd w/ momentum")  # a space inside quotes stays
    assert space["width"].log and space["width"].kind == "int"
    # the same space as a list or a mapping; round trip through the stored form
    assert parse_space(["lr=loguniform(1e-4,1e-1)"]) == parse_space({"lr": "loguniform(1e-4,1e-1)"})
    assert type(space).from_list(space.to_list()) == space


@pytest.mark.parametrize(
    "text, says",
    [
        ("lr=loguniform(0.1,1e-4)", "the range is empty"),
        ("lr=uniform(1,1)", "the range is empty"),
        ("lr=normal(0,1)", "unknown distribution 'normal'"),
        ("lr=loguniform(0,1)", "a log scale needs low > 0"),
        ("n=int(1.5,3)", "takes whole numbers"),
        ("b=choice()", "choice() is empty"),
        ("b=choice(1,1)", "repeats a value"),
        ("lr=uniform(0,1", "does not parse"),
        ("lr=uniform(0,__import__('os'))", "is not a literal value"),
        ("1lr=uniform(0,1)", "cannot be a parameter name"),
        ("lr", "is not NAME=DIST"),
        ("lr=uniform(0,1) lr=uniform(0,2)", "given twice"),
        ("", "the search space is empty"),
        ("x=uniform(0,inf)", "is not a literal value"),
    ],
)
def test_a_bad_space_is_refused_with_one_message(text, says):
    with pytest.raises(SpecError) as err:
        parse_space(text)
    assert says in str(err.value)


def test_the_objective_names_a_metric_and_a_direction():
    assert str(parse_objective("val_loss:min")) == "val_loss:min"
    assert parse_objective("accuracy:MAX").direction == "max"
    for bad in ("val_loss", ":min", "val loss:min", "val.loss:min", "loss:lowest"):
        with pytest.raises(SpecError):
            parse_objective(bad)


def _job(tmp_path, **kw):
    script = tmp_path / "train.py"
    if not script.exists():
        script.write_text("import nbscale\nnbscale.log_metric('val_loss', 1.0)\n")
    return JobSpec(entry=Entry.from_path(str(script)), **kw)


def test_a_trial_is_the_job_with_its_values_and_the_id_is_stable(tmp_path):
    sweep = SweepSpec(_job(tmp_path), "lr=loguniform(1e-4,1e-1)", "val_loss:min", trials=4)
    again = SweepSpec(_job(tmp_path), "lr=loguniform(1e-4,1e-1)", "val_loss:min", trials=8)
    assert sweep.id == again.id  # more trials: the same sweep, resumed
    other = SweepSpec(_job(tmp_path), "lr=loguniform(1e-3,1e-1)", "val_loss:min")
    assert other.id != sweep.id
    (tmp_path / "train.py").write_text("import nbscale\nnbscale.log_metric('val_loss', 2.0)\n")
    assert SweepSpec(_job(tmp_path), "lr=loguniform(1e-4,1e-1)", "val_loss:min").id != sweep.id
    trial = sweep.trial_spec(3, {"lr": 0.01})
    assert trial.name == "train-t3"
    assert json.loads(trial.env[PARAMS_ENV]) == {"lr": 0.01}
    assert trial.env[SWEEP_ENV] == sweep.id and trial.tags["nbscale-trial"] == "3"
    stored = json.loads(json.dumps(sweep.to_dict()))
    assert SweepSpec.from_dict(stored) == sweep
    # a stored sweep keeps its id when its code changes: that is where its study is
    (tmp_path / "train.py").write_text("import nbscale\nnbscale.log_metric('val_loss', 3.0)\n")
    assert SweepSpec.from_dict(stored).id == sweep.id


def test_sweep_options_are_checked(tmp_path):
    job = _job(tmp_path)
    cases = [
        ({"trials": 0}, "sweep.trials"),
        ({"parallel": 0}, "sweep.parallel"),
        ({"algorithm": "hyperband"}, "sweep.algorithm"),
        ({"pruner": "asha"}, "sweep.pruner"),
        ({"max_cost": -1}, "sweep.max_cost"),
    ]
    for options, field in cases:
        with pytest.raises(SpecError) as err:
            SweepSpec(job, "lr=uniform(0,1)", "val_loss:min", **options)
        assert field in str(err.value)
    with pytest.raises(SpecError, match="has no grid"):
        SweepSpec(job, "lr=uniform(0,1)", "val_loss:min", algorithm="grid")
    grid = SweepSpec(job, "n=int(1,3) b=choice(1,2)", "val_loss:min", algorithm="grid", trials=50)
    assert grid.trials == 6  # a grid has as many trials as points
    with pytest.raises(SpecError, match="both a parameter and an --env"):
        SweepSpec(_job(tmp_path, env={"lr": "1"}), "lr=uniform(0,1)", "val_loss:min")


def test_a_trial_reads_its_values_from_each_platform(monkeypatch, tmp_path):
    space = parse_space("lr=loguniform(1e-4,1e-1) n=int(1,4) opt=choice('adam','sgd')")
    monkeypatch.setenv(SPACE_ENV, json.dumps(space.to_list()))
    monkeypatch.setenv("NBSCALE_HYPERPARAMETERS", str(tmp_path / "none.json"))
    assert current() == {} and param("lr", 0.5) == 0.5
    with pytest.raises(SpecError, match="has no parameter 'lr'"):
        param("lr")
    # nbscale (local trials)
    monkeypatch.setenv(PARAMS_ENV, json.dumps({"lr": 0.01, "n": 2, "opt": "adam"}))
    assert current() == {"lr": 0.01, "n": 2, "opt": "adam"}
    monkeypatch.delenv(PARAMS_ENV)
    # Katib substitutes strings into NBSCALE_PARAM_<name>
    monkeypatch.setenv("NBSCALE_PARAM_lr", "0.001")
    monkeypatch.setenv("NBSCALE_PARAM_n", "3")
    assert current() == {"lr": 0.001, "n": 3}
    monkeypatch.delenv("NBSCALE_PARAM_lr")
    monkeypatch.delenv("NBSCALE_PARAM_n")
    # SageMaker writes every hyperparameter as a string; only the space's are the trial's
    hp = tmp_path / "hyperparameters.json"
    hp.write_text(json.dumps({"lr": "0.02", "opt": "sgd", "sagemaker_program": "x"}))
    monkeypatch.setenv("NBSCALE_HYPERPARAMETERS", str(hp))
    assert current() == {"lr": 0.02, "opt": "sgd"}


def test_the_metric_line_is_read_back_by_the_katib_filter_and_the_sagemaker_regex():
    for value in (0.25, 1e-05, -0.5, 123456789.0, 3.0):
        line = lines.metric_line("val_loss", value)
        katib = re.search(lines.KATIB_FILTER, line)
        assert katib.group(1) == "val_loss" and float(katib.group(2)) == value
        sm = re.search(lines.sagemaker_regex("val_loss"), line)
        assert float(sm.group(1)) == value
        assert re.search(lines.sagemaker_regex("loss"), line) is None  # not another metric
    assert lines.metric_line("val_loss", float("nan")) is None
