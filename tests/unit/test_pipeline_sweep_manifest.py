"""A step's ``sweep:`` block in pipeline.yaml: read strictly, each error with its path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from nbscale.errors import SpecError
from nbscale.pipelines import fingerprint, load, step_sweep
from nbscale.pipelines.stepbook import build
from tests.support.pipeline_notebooks import cell, write_notebook

TRAIN = (
    "import nbscale\n"
    "loss = (lr - 0.01) ** 2 + width\n"
    "nbscale.log_metric('val_loss', loss)\n"
    "model = {'lr': lr, 'width': width, 'rows': len(data)}"
)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write_notebook(tmp_path / "prepare.ipynb", [cell("data = list(range(seed + 3))")])
    write_notebook(
        tmp_path / "train.ipynb",
        [cell("lr = 0.1\nwidth = 1\nepochs = 2", "parameters"), cell(TRAIN)],
    )
    return tmp_path


def flow(folder: Path, sweep: object, **train: object) -> Path:
    doc = {
        "name": "tune",
        "parameters": {"seed": 0},
        "steps": [
            {"name": "prepare", "notebook": "prepare.ipynb"},
            {
                "name": "train",
                "notebook": "train.ipynb",
                "depends_on": ["prepare"],
                "sweep": sweep,
                **train,
            },
        ],
    }
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def refused(path: Path) -> str:
    with pytest.raises(SpecError) as info:
        load(path)
    return str(info.value)


GOOD = {
    "space": {"lr": "loguniform(1e-4,1e-1)", "width": "int(1,4)"},
    "objective": "val_loss:min",
    "trials": 8,
    "parallel": 2,
    "algorithm": "random",
    "pruner": "none",
    "max_failed": 1,
    "seed": 7,
}


def test_a_good_block_becomes_the_steps_sweep(folder):
    pipeline = load(flow(folder, GOOD))
    sweep = pipeline.steps["train"].sweep
    assert pipeline.steps["prepare"].sweep is None
    assert sweep.space.names == ["lr", "width"]
    assert sweep.space["lr"].log and sweep.space["width"].kind == "int"
    assert str(sweep.objective) == "val_loss:min"
    assert (sweep.trials, sweep.parallel, sweep.algorithm, sweep.pruner) == (8, 2, "random", "none")
    assert (sweep.max_failed, sweep.seed) == (1, 7)
    assert pipeline.summary()["steps"][1]["sweep"] == sweep.to_dict()
    # the one-string form and the defaults
    short = load(
        flow(
            folder,
            {"space": "lr=uniform(0.001,0.1) width=choice(1,2)", "objective": "val_loss:min"},
        )
    )
    s = short.steps["train"].sweep
    assert s.space.names == ["lr", "width"] and s.space["width"].choices == (1, 2)
    assert (s.trials, s.parallel, s.algorithm, s.pruner, s.max_failed) == (
        16,
        1,
        "tpe",
        "median",
        3,
    )


@pytest.mark.parametrize(
    ("sweep", "expected"),
    [
        (
            {**GOOD, "space": {"lr": "loguniform(0,1)"}},
            "steps[1].sweep.space: sweep 'lr=loguniform(0,1)': a log scale needs low > 0, got 0",
        ),
        (
            {**GOOD, "space": {"lr": "uniform(0.5,0.1)"}},
            "steps[1].sweep.space: sweep 'lr=uniform(0.5,0.1)': the range is empty: low 0.5 is "
            "not below high 0.1",
        ),
        (
            {**GOOD, "space": "lr=gauss(0,1)"},
            "steps[1].sweep.space: sweep 'lr=gauss(0,1)': unknown distribution 'gauss'",
        ),
        ({**GOOD, "space": {}}, "steps[1].sweep.space: sweep: the search space is empty"),
        ({**GOOD, "space": 3}, "steps[1].sweep.space: must be a mapping of NAME"),
        ({**GOOD, "space": {"lr": 0.1}}, "steps[1].sweep.space: must be a mapping of NAME"),
        (
            {**GOOD, "objective": "val_loss"},
            "steps[1].sweep.objective: objective: 'val_loss' says neither min nor max",
        ),
        ({**GOOD, "objective": 5}, "steps[1].sweep.objective: must be a string METRIC:min"),
        ({**GOOD, "trials": 0}, "steps[1].sweep.trials: must be >= 1, got 0"),
        ({**GOOD, "trials": "8"}, "steps[1].sweep.trials: must be a whole number, got '8'"),
        ({**GOOD, "parallel": 2.5}, "steps[1].sweep.parallel: must be a whole number, got 2.5"),
        ({**GOOD, "max_failed": -1}, "steps[1].sweep.max_failed: must be >= 0, got -1"),
        ({**GOOD, "algorithm": "hyperband"}, "steps[1].sweep.algorithm: must be one of 'tpe'"),
        ({**GOOD, "pruner": "early"}, "steps[1].sweep.pruner: must be one of 'median'"),
        ({**GOOD, "trails": 4}, "steps[1].sweep.trails: is not a known key"),
        ({"space": GOOD["space"]}, "steps[1].sweep.objective: is required"),
        (
            {**GOOD, "algorithm": "grid"},
            "steps[1].sweep: algorithm grid: sweep.lr: a continuous range has no grid",
        ),
        ("lr=uniform(0,1)", "steps[1].sweep: must be a mapping, got 'lr=uniform(0,1)'"),
    ],
)
def test_each_bad_value_is_refused_with_its_path(folder, sweep, expected):
    message = refused(flow(folder, sweep))
    assert expected in message, message


def test_every_error_of_the_file_is_said_at_once(folder):
    message = refused(flow(folder, {**GOOD, "space": {"lr": "int(1)"}, "trials": -2, "pruner": 1}))
    assert "has 3 errors" in message, message
    for where in ("steps[1].sweep.space:", "steps[1].sweep.trials:", "steps[1].sweep.pruner:"):
        assert where in message


def test_a_swept_name_must_be_a_parameter_of_the_step(folder):
    message = refused(
        flow(folder, {**GOOD, "space": {"lr": "uniform(0.001,0.1)", "momentum": "uniform(0,1)"}})
    )
    assert message.startswith(
        "steps[1].sweep.space.momentum: is not a parameter of step train "
        "(its parameters: lr, width, epochs)"
    ), message
    assert "assign momentum in the cell tagged 'parameters' of train.ipynb" in message
    # a pipeline parameter the step reads is one of its parameters; one it does not read is not
    train = folder / "train.ipynb"
    write_notebook(
        train, [cell("lr = 0.1\nwidth = 1", "parameters"), cell(TRAIN + "\nprint(seed)")]
    )
    assert load(flow(folder, {**GOOD, "space": {"seed": "int(0,3)"}})).steps["train"].sweep
    write_notebook(train, [cell("lr = 0.1\nwidth = 1", "parameters"), cell(TRAIN)])
    assert "steps[1].sweep.space.seed: is not a parameter" in refused(
        flow(folder, {**GOOD, "space": {"seed": "int(0,3)"}})
    )


def test_a_swept_name_cannot_also_be_fixed(folder):
    message = refused(flow(folder, GOOD, parameters={"lr": 0.5}))
    assert message.startswith("steps[1].sweep.space.lr: is also fixed by the step's parameters"), (
        message
    )


def test_an_objective_the_step_never_logs_is_refused(folder):
    message = refused(flow(folder, {**GOOD, "objective": "accuracy:max"}))
    assert message.startswith(
        "steps[1].sweep.objective: step train never logs 'accuracy' (it logs val_loss)"
    ), message
    # logged from a local module the step imports: found there
    (folder / "scoring.py").write_text(
        "import nbscale\n\ndef report(v):\n    nbscale.log_metric('accuracy', v)\n"
    )
    write_notebook(
        folder / "train.ipynb",
        [
            cell("lr = 0.1\nwidth = 1", "parameters"),
            cell("%time x = 1\nfrom scoring import report\nreport(lr)\nmodel = lr\nrows = data"),
        ],
    )
    assert load(flow(folder, {**GOOD, "objective": "accuracy:max"})).steps["train"].sweep
    (folder / "scoring.py").write_text("def report(v):\n    return v\n")
    assert "it calls log_metric nowhere" in refused(
        flow(folder, {**GOOD, "objective": "accuracy:max"})
    )


def test_retries_do_not_go_with_a_sweep(folder):
    message = refused(flow(folder, GOOD, retries=1))
    assert message.startswith("steps[1].retries: a sweep step does not run again as a whole"), (
        message
    )


def test_the_sweep_block_is_part_of_the_cache_key(folder):
    pipeline = load(flow(folder, GOOD))
    step = pipeline.steps["train"]
    parts = fingerprint.components(pipeline, step, {}, {"data": "abc"}, "python3")
    assert parts["sweep"] == step.sweep.to_dict()
    plain = fingerprint.components(pipeline, pipeline.steps["prepare"], {}, {}, "python3")
    assert "sweep" not in plain  # a step without a sweep keeps the key it had
    changed = load(
        flow(folder, {**GOOD, "trials": 9, "space": {**GOOD["space"], "width": "int(1,5)"}})
    )
    other = fingerprint.components(changed, changed.steps["train"], {}, {"data": "abc"}, "python3")
    assert fingerprint.key(other) != fingerprint.key(parts)
    assert fingerprint.explain(parts, other) == "miss: sweep space, trials changed"
    assert fingerprint.explain({**parts, "sweep": None}, other) == "miss: sweep block added"


def test_the_trial_notebook_runs_in_the_step_folder_and_saves_in_its_job(folder, tmp_path):
    pipeline = load(flow(folder, GOOD))
    step = pipeline.steps["train"]
    nb = step_sweep.trial_notebook(pipeline, step, {"data": "/x/outputs"}, "p-1", "python3")
    plain = build(pipeline, step, {"data": "/x/outputs"}, "/somewhere")
    sources = [c["source"] for c in nb["cells"]]
    assert sources[1] == f"__import__('os').chdir({str(folder)!r})"
    assert sources[2:-1] == [c["source"] for c in plain["cells"][1:-1]]  # the step notebook's own
    assert "environ['NBSCALE_JOB_DIR']" in sources[-1] and "'step-outputs'" in sources[-1]
    assert nb["metadata"]["nbscale"]["run"] == "p-1"
    assert step_sweep.sweep_name("My Flow!", "train_a") == "my-flow-train-a"
    assert len(step_sweep.sweep_name("x" * 60, "y")) <= 40
    json.dumps(nb)


def test_the_kfp_target_refuses_a_sweep_step_saying_what_to_do(folder, tmp_path):
    """(SageMaker Pipelines compiles it as a Tuning step: test_sagemaker_pipeline_tuning_step.)"""
    from nbscale.pipeline_runs import compile_pipeline

    words = (
        "the kfp target cannot compile a sweep step (nbscale does not build a Katib "
        "Experiment inside a Kubeflow pipeline)"
    )
    path = flow(folder, GOOD)
    with pytest.raises(SpecError) as info:
        compile_pipeline(str(path), "kfp", str(tmp_path / "out" / "flow.out"))
    message = str(info.value)
    assert message.startswith(f"step train: has a sweep: block, and {words}"), message
    assert "run the pipeline here (nbscale pipeline run pipeline.yaml)" in message
    assert (
        "nbscale sweep train.ipynb --sweep 'lr=loguniform(0.0001,0.1) width=int(1,4)' "
        "--objective val_loss:min --trials 8 --parallel 2 --backend <your " in message
    )
    assert not (tmp_path / "out" / "flow.out").exists()
