"""The SageMaker sweep backend's request: CreateHyperParameterTuningJob, built from a SweepSpec.

Every request is checked against botocore's SageMaker service model (botocore's own
validation, then the enums, maximums and patterns it leaves to the service); every
combination SageMaker has no form for is one message; and the MetricDefinitions regex is
run against the exact lines ``nbscale.log_metric`` prints inside a trial.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import re
import tarfile

import botocore.session
import pytest
from botocore.validate import validate_parameters

from nbscale.backends.sagemaker import request as req
from nbscale.backends.sagemaker.sweeps import (
    PROGRAM,
    TuningSweeps,
    check_request,
    source_dir,
    trial_program,
    tuning_job_name,
)
from nbscale.config import BackendConfig
from nbscale.errors import NbscaleError, SpecError
from nbscale.metrics import log_metric
from nbscale.specs import Entry, JobSpec
from nbscale.store import get_store
from nbscale.sweeps.spec import SweepSpec
from tests.support.sagemaker import SETTINGS

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/nbscale-runtime:0.1.0"
SPACE = "lr=loguniform(1e-4,1e-1) batch=choice(32,64) layers=int(2,6) drop=uniform(0,0.5,0.1)"
MODEL = botocore.session.get_session().get_service_model("sagemaker")


@pytest.fixture
def backend(nbscale_home, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANBSCALETESTKEY01")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-secret")
    # nothing listens there: a dry run's one read (does the signing-key secret exist?)
    # is refused at once, and nothing is created anywhere
    settings = {**SETTINGS, "image": IMAGE, "endpoint_url": "http://127.0.0.1:9"}
    return TuningSweeps(BackendConfig("aws", "sagemaker", settings), get_store())


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "train.py"
    path.write_text(
        "import nbscale\nlr = nbscale.param('lr', 0.01)\nnbscale.log_metric('val_loss', lr)\n"
    )
    return path


def sweep_of(script, space=SPACE, **fields) -> SweepSpec:
    job = JobSpec(entry=Entry.from_path(str(script)), name="lr-sweep", backend="aws")
    fields.setdefault("objective", "val_loss:min")
    fields.setdefault("algorithm", "bayesian")
    return SweepSpec(job=job, space=space, **fields)


def request_of(backend, sweep) -> dict:
    plan = backend.dry_run(sweep)
    assert plan.format == "json"
    document = json.loads(plan.text())  # stdout: one JSON document, the request itself
    assert document == plan.documents[0]
    shape = MODEL.operation_model("CreateHyperParameterTuningJob").input_shape
    validate_parameters(document, shape)  # botocore's own validation, as boto3 would
    return document


def ranges_by_name(request) -> dict[str, tuple[str, dict]]:
    found = request["HyperParameterTuningJobConfig"]["ParameterRanges"]
    return {r["Name"]: (kind, r) for kind, items in found.items() for r in items}


# -- the request ---------------------------------------------------------------------------
def test_the_request_of_a_sweep_validates_against_the_service_model(backend, script):
    sweep = sweep_of(script, trials=12, parallel=3, seed=7)
    request = request_of(backend, sweep)
    name = request["HyperParameterTuningJobName"]
    assert name == tuning_job_name(sweep) and len(name) <= 32
    config = request["HyperParameterTuningJobConfig"]
    assert config["Strategy"] == "Bayesian"
    assert config["TrainingJobEarlyStoppingType"] == "Auto"  # --pruner median (the default)
    assert config["HyperParameterTuningJobObjective"] == {
        "Type": "Minimize",
        "MetricName": "val_loss",
    }
    assert config["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 12, "MaxParallelTrainingJobs": 3}
    assert config["RandomSeed"] == 7
    ranges = ranges_by_name(request)
    assert ranges["lr"] == (
        "ContinuousParameterRanges",
        {"Name": "lr", "MinValue": "0.0001", "MaxValue": "0.1", "ScalingType": "Logarithmic"},
    )
    assert ranges["layers"] == (
        "IntegerParameterRanges",
        {"Name": "layers", "MinValue": "2", "MaxValue": "6", "ScalingType": "Linear"},
    )
    assert ranges["batch"] == (
        "CategoricalParameterRanges",
        {"Name": "batch", "Values": ["32", "64"]},
    )
    # SageMaker's ranges have no step: a stepped range is the categorical range of its values
    assert ranges["drop"][0] == "CategoricalParameterRanges"
    assert [float(v) for v in ranges["drop"][1]["Values"]] == pytest.approx(
        [0, 0.1, 0.2, 0.3, 0.4, 0.5]
    )

    definition = request["TrainingJobDefinition"]
    algo = definition["AlgorithmSpecification"]
    assert algo["TrainingImage"] == IMAGE and algo["TrainingInputMode"] == "File"
    assert algo["MetricDefinitions"] == [
        {"Name": "val_loss", "Regex": algo["MetricDefinitions"][0]["Regex"]}
    ]
    assert "ContainerEntrypoint" not in algo  # a tuning job's definition has none
    static = definition["StaticHyperParameters"]
    assert static["sagemaker_program"] == PROGRAM
    assert static["sagemaker_submit_directory"].startswith("s3://nb-team/proj/trial/sha256/")
    assert static["sagemaker_region"] == "us-east-1"
    # the rest is the job backend's own CreateTrainingJob request for the trial
    assert definition["RoleArn"] == SETTINGS["role_arn"]
    assert definition["OutputDataConfig"] == {"S3OutputPath": "s3://nb-team/proj/jobs"}
    assert definition["ResourceConfig"]["InstanceType"] == "ml.m5.xlarge"
    channels = {c["ChannelName"] for c in definition["InputDataConfig"]}
    assert channels == {"spec", "code"}
    env = definition["Environment"]
    assert env["NBSCALE_SWEEP"] == sweep.id and json.loads(env["NBSCALE_PARAMS"]) == {}
    assert [p["name"] for p in json.loads(env["NBSCALE_SWEEP_SPACE"])] == [
        "lr",
        "batch",
        "layers",
        "drop",
    ]
    tags = {t["Key"]: t["Value"] for t in request["Tags"]}
    assert tags["nbscale:sweep-id"] == sweep.id and "nbscale:job-id" not in tags


def test_the_dry_run_prints_the_request_alone_and_comments_on_stderr(backend, script):
    plan = backend.dry_run(sweep_of(script))
    assert plan.text().lstrip().startswith("{") and "Bayesian search" not in plan.text()
    assert "Bayesian search" in plan.commentary() and PROGRAM in plan.commentary()
    assert "training toolkit" in plan.commentary()  # an image of its own must run 'train'


@pytest.mark.parametrize(
    "fields, strategy, early",
    [
        ({"algorithm": "random", "pruner": "none"}, "Random", "Off"),
        ({"algorithm": "random", "pruner": "median"}, "Random", "Auto"),
        ({"algorithm": "bayesian", "pruner": "none"}, "Bayesian", "Off"),
    ],
)
def test_algorithm_and_pruner_become_strategy_and_early_stopping(
    backend, script, fields, strategy, early
):
    config = request_of(backend, sweep_of(script, **fields))["HyperParameterTuningJobConfig"]
    assert (config["Strategy"], config["TrainingJobEarlyStoppingType"]) == (strategy, early)
    assert "StrategyConfig" not in config


def test_halving_is_hyperband_with_early_stopping_off(backend, script):
    sweep = sweep_of(
        script,
        algorithm="random",
        pruner="halving",
        settings={"max_resource": 20, "min_resource": 2},
    )
    config = request_of(backend, sweep)["HyperParameterTuningJobConfig"]
    assert config["Strategy"] == "Hyperband"
    assert config["TrainingJobEarlyStoppingType"] == "Off"  # AWS: Hyperband stops trials itself
    assert config["StrategyConfig"] == {
        "HyperbandStrategyConfig": {"MinResource": 2, "MaxResource": 20}
    }


def test_a_grid_lists_every_value_as_categorical_ranges(backend, script):
    sweep = sweep_of(
        script,
        "layers=int(2,6) batch=choice(32,64) drop=uniform(0,0.2,0.1)",
        algorithm="grid",
        trials=30,
    )
    request = request_of(backend, sweep)
    config = request["HyperParameterTuningJobConfig"]
    assert config["Strategy"] == "Grid"
    assert set(config["ParameterRanges"]) == {
        "CategoricalParameterRanges"
    }  # AWS: Grid takes these only
    ranges = ranges_by_name(request)
    assert ranges["layers"][1]["Values"] == ["2", "3", "4", "5", "6"]
    assert config["ResourceLimits"]["MaxNumberOfTrainingJobs"] == 5 * 2 * 3 == sweep.trials


def test_max_cost_is_the_runtime_that_cannot_spend_more(backend, script):
    sweep = sweep_of(script, parallel=4, trials=8, max_cost=10)
    limits = request_of(backend, sweep)["HyperParameterTuningJobConfig"]["ResourceLimits"]
    from nbscale.cost import budget_price

    price = budget_price(
        "sagemaker", backend.settings.model_dump(exclude_none=True), "ml.m5.xlarge", 0, "aws"
    )
    assert limits["MaxRuntimeInSeconds"] == int(10 / (price * 4) * 3600)
    assert limits["MaxRuntimeInSeconds"] / 3600 * price * 4 <= 10


# -- refusals ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "space, fields, where, says, hint",
    [
        (SPACE, {"algorithm": "tpe"}, "sweep.algorithm", "tpe is not a SageMaker tuning strategy", "--algorithm bayesian"),
        (SPACE, {"pruner": "halving", "settings": {"max_resource": 9}}, "sweep.pruner", "Hyperband", "--algorithm random --pruner halving"),
        (SPACE, {"algorithm": "random", "pruner": "halving"}, "sweep.settings.max_resource", "needs the most values of the objective val_loss", "max_resource=20"),
        (SPACE, {"algorithm": "random", "pruner": "halving", "settings": {"max_resource": 4, "min_resource": 5}}, "sweep.settings.min_resource", "above max_resource 4", None),
        ("layers=int(2,6) batch=choice(32,64)", {"algorithm": "grid", "trials": 4}, "sweep.trials", "runs every one of the 10 combinations", "--trials 10"),
        ("opt=choice(" + ",".join(f"'o{i}'" for i in range(31)) + ")", {}, "sweep.opt", "31 values are more than the 30", None),
        ("drop=uniform(0,1,0.01)", {}, "sweep.drop", "SageMaker's ranges have no step", "larger step"),
        (" ".join(f"p{i}=uniform(0,1)" for i in range(31)), {}, "sweep", "at most 30", None),
        (SPACE, {"max_cost": 0.001}, "sweep.max_cost", "runs at least 120 s", "raise --max-cost"),
    ],
)  # fmt: skip
def test_what_sagemaker_has_no_form_for_is_one_message(
    backend, script, space, fields, where, says, hint
):
    with pytest.raises(SpecError) as err:
        backend.dry_run(sweep_of(script, space, **fields))
    text = str(err.value)
    assert text.startswith(where) and says in text, text
    if hint:
        assert hint in text, text


def test_too_many_environment_variables_for_a_tuning_job(backend, tmp_path, script):
    job = JobSpec(
        entry=Entry.from_path(str(script)),
        name="lr-sweep",
        backend="aws",
        env={f"V{i}": "1" for i in range(50)},
    )
    with pytest.raises(SpecError, match=r"^env: a tuning job's trials take at most 48"):
        backend.dry_run(
            SweepSpec(job=job, space=SPACE, objective="val_loss:min", algorithm="bayesian")
        )


def test_the_strict_check_refuses_what_botocore_leaves_to_the_service(backend, script):
    request = request_of(backend, sweep_of(script))
    check_request(request)
    bad = copy.deepcopy(request)
    bad["HyperParameterTuningJobName"] = "x" * 33
    with pytest.raises(
        NbscaleError, match=r"HyperParameterTuningJobName is 33 characters, at most 32"
    ):
        check_request(bad)
    bad = copy.deepcopy(request)
    bad["HyperParameterTuningJobConfig"]["Strategy"] = "TPE"
    with pytest.raises(NbscaleError, match=r"Strategy is 'TPE', not one of Bayesian"):
        check_request(bad)
    bad = copy.deepcopy(request)
    del bad["TrainingJobDefinition"]["RoleArn"]
    with pytest.raises(NbscaleError, match="RoleArn"):
        check_request(bad)


def test_tuning_job_names_fit_and_a_new_attempt_gets_a_new_name(script):
    sweep = sweep_of(script).replace(name="a-very-long-sweep-name-that-goes-on-on")
    names = [tuning_job_name(sweep, n) for n in (0, 1, 2)]
    assert len(set(names)) == 3
    for name in names:
        assert len(name) <= 32 and re.fullmatch(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,31}", name)


# -- the trial's command -------------------------------------------------------------------
def test_the_trial_program_execs_the_job_entry_with_the_training_job_name(tmp_path):
    program = trial_program("lr-sweep-88c9f495c7d2")
    code = compile(program, PROGRAM, "exec")  # valid Python
    assert code is not None
    text = program.decode()
    assert repr(list(req.ENTRYPOINT)) in text and "TRAINING_JOB_NAME" in text
    assert (
        "sys.argv" not in text.split('"""')[2]
    )  # the toolkit's --name value arguments are not read
    first = source_dir(program, tmp_path / "a.tar.gz").read_bytes()
    second = source_dir(program, tmp_path / "b.tar.gz").read_bytes()
    assert first == second  # content-addressed: the same program is sent once
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        assert tar.getnames() == [PROGRAM]
        assert tar.extractfile(PROGRAM).read() == program


# -- the metric lines ----------------------------------------------------------------------
VALUES = [0.25, 1e-05, -0.5, -2.5e-07, 3, 1e16, 123456.789, 0.0, -0.0]


def test_the_metric_regex_reads_the_exact_lines_log_metric_prints(backend, script, monkeypatch):
    request = request_of(backend, sweep_of(script))
    (definition,) = request["TrainingJobDefinition"]["AlgorithmSpecification"]["MetricDefinitions"]
    pattern = re.compile(definition["Regex"])
    monkeypatch.setenv("NBSCALE_SWEEP", "lr-sweep-88c9f495c7d2")
    monkeypatch.delenv("NBSCALE_JOB_DIR", raising=False)
    for value in VALUES:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            log_metric("val_loss", value)
            log_metric("train_val_loss", 99.0)  # another metric whose name ends the same
            log_metric("val_loss2", 77.0)
        lines = out.getvalue().splitlines()
        assert len(lines) == 3, lines
        # as CloudWatch keeps it: the launcher prefixes each rank's line
        shown = [f"[rank 0] {line}" for line in lines]
        found = [m.group(1) for line in shown if (m := pattern.search(line))]
        assert len(found) == 1, (value, shown)
        assert float(found[0]) == float(value), (value, shown[0])
    # a value that is not finite is not printed, so SageMaker never reads one
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        log_metric("val_loss", float("nan"))
    assert not pattern.search(out.getvalue())


def test_the_trials_other_metrics_are_defined_after_the_objective(backend, tmp_path):
    script = tmp_path / "train.py"
    script.write_text(
        "import nbscale\n"
        "nbscale.log_metric('train_loss', 1.0, step=0)\n"
        "nbscale.log_metric('val_loss', nbscale.param('lr', 0.01), step=0)\n"
        "nbscale.log_metric('acc', 0.5)\n"
    )
    request = request_of(backend, sweep_of(script))
    found = request["TrainingJobDefinition"]["AlgorithmSpecification"]["MetricDefinitions"]
    # the objective first (SageMaker's tuner reads it by name), then what else the trial logs,
    # each read from the same metric lines, so every one reaches CloudWatch
    assert [d["Name"] for d in found] == ["val_loss", "acc", "train_loss"]
    for d in found:
        assert d["Regex"] == req.metric_definitions([d["Name"]])[0]["Regex"]
    check_request(request)
