"""The Katib Experiment of a sweep (nbscale.backends.kubeflow.sweeps), built without a cluster:
validated strictly against Katib's OpenAPI schemas and the Trainer CRDs (v2.2.1, v2.3.0),
admitted by the rules of Katib's webhook, filled in as Katib's generator fills it in; each
thing Katib cannot do as asked refused in one message before anything is sent."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from nbscale.backends.kubeflow import manifests as mf
from nbscale.backends.kubeflow import sweeps as ks
from nbscale.backends.sweep_base import CANCELLED, FAILED, PENDING, PRUNED, RUNNING, SUCCEEDED
from nbscale.config import BackendConfig
from nbscale.errors import SpecError
from nbscale.runtime.launch import decode_spec
from nbscale.specs import Entry, JobSpec
from nbscale.store import get_store
from nbscale.sweeps.lines import KATIB_FILTER, metric_line
from nbscale.sweeps.spec import PARAMS_ENV, SPACE_ENV, SWEEP_ENV, SweepSpec
from tests.support.katib_controller import (
    admit,
    collect,
    condition,
    observation,
    run_spec,
    validate_experiment,
    validate_trainjob,
)

BASE = {
    "storage": "s3://nb-bucket/work",
    "wheelhouse": False,
    "namespace": "team-a",
    "image": "registry.example.com/ml/torch:kernel",
    "labels": {"team": "ml"},
}
SPACE = "lr=loguniform(1e-4,1e-1) batch=choice(32,64) layers=int(2,6) drop=uniform(0,0.5,0.1)"


@pytest.fixture
def backend():
    return ks.KatibSweeps(BackendConfig("kf", "kubeflow", dict(BASE)), get_store())


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "train.py"
    path.write_text("import nbscale\nnbscale.log_metric('val_loss', nbscale.param('lr'))\n")
    return path


def sweep_of(script, **kw):
    job = JobSpec(
        entry=Entry.from_path(str(script)),
        name="fit-digits",
        backend="kf",
        nodes=2,
        env={"MODE": "fast"},
    )
    return SweepSpec(
        job=job,
        space=kw.pop("space", SPACE),
        objective=kw.pop("objective", "val_loss:min"),
        **{"trials": 8, "parallel": 3, **kw},
    )


def documents(plan):
    docs = list(yaml.safe_load_all(plan.text()))
    assert docs == plan.documents  # stdout is exactly what would be sent
    return docs


def trainer_env(trainjob):
    return {e["name"]: e.get("value") for e in trainjob["spec"]["trainer"]["env"]}


def test_the_experiment_of_a_script_sweep(backend, script, monkeypatch):
    monkeypatch.setenv("NBSCALE_USER", "alice")  # whose keys the trials' pods mount
    sweep = sweep_of(script, seed=11)
    plan = backend.dry_run(sweep)
    (exp,) = documents(plan)  # the script's folder travels in object storage, as a job's
    validate_experiment(exp)
    assert admit(exp) == []
    name = exp["metadata"]["name"]
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 40
    assert name == ks.experiment_name(sweep) and name.endswith(sweep.key)
    assert exp["metadata"]["annotations"][ks.SWEEP_ANNOTATION] == sweep.id
    assert exp["metadata"]["labels"] == {"team": "ml", **mf.MANAGED}
    spec = exp["spec"]
    assert spec["objective"] == {
        "type": "minimize",
        "objectiveMetricName": "val_loss",
        "metricStrategies": [{"name": "val_loss", "value": "latest"}],
    }
    assert spec["algorithm"] == {
        "algorithmName": "tpe",
        "algorithmSettings": [{"name": "random_state", "value": "11"}],
    }
    assert (spec["parallelTrialCount"], spec["maxTrialCount"]) == (3, 8)
    assert spec["maxFailedTrialCount"] == sweep.max_failed + 1
    params = {p["name"]: p for p in spec["parameters"]}
    assert params["lr"] == {
        "name": "lr",
        "parameterType": "double",
        "feasibleSpace": {"min": "0.0001", "max": "0.1", "distribution": "logUniform"},
    }
    assert params["batch"]["parameterType"] == "categorical"
    assert params["batch"]["feasibleSpace"] == {"list": ["32", "64"]}
    assert params["layers"] == {
        "name": "layers",
        "parameterType": "int",
        "feasibleSpace": {"min": "2", "max": "6"},
    }
    assert params["drop"]["feasibleSpace"] == {"min": "0.0", "max": "0.5", "step": "0.1"}
    assert spec["earlyStopping"] == {"algorithmName": "medianstop"}
    assert spec["metricsCollectorSpec"] == {
        "collector": {"kind": "StdOut"},
        "source": {"filter": {"metricsFormat": [KATIB_FILTER]}},
    }
    tt = spec["trialTemplate"]
    assert tt["retain"] is True  # the best trial's TrainJob stays: its outputs and logs come home
    assert tt["successCondition"] == 'status.conditions.#(type=="Complete")#|#(status=="True")#'
    assert tt["failureCondition"] == 'status.conditions.#(type=="Failed")#|#(status=="True")#'
    assert {p["name"]: p["reference"] for p in tt["trialParameters"]} == {
        ks.TRIAL_NAME_PARAM: "${trialSpec.Name}",
        "lr": "lr",
        "batch": "batch",
        "layers": "layers",
        "drop": "drop",
    }
    template = tt["trialSpec"]
    assert "name" not in template["metadata"] and "namespace" not in template["metadata"]
    (container,) = mf_pod(template)["containers"]
    assert tt["primaryContainerName"] == container["name"]
    assert (
        tt["primaryPodLabels"]["jobset.sigs.k8s.io/replicatedjob-name"]
        == (
            template["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"][
                "replicatedJobs"
            ][0]["name"]
        )
    )
    env = trainer_env(template)
    for p in ("lr", "batch", "layers", "drop"):
        assert env[f"NBSCALE_PARAM_{p}"] == "${trialParameters.%s}" % p  # noqa: UP031
    assert env[SWEEP_ENV] == sweep.id and json.loads(env[SPACE_ENV]) == sweep.space.to_list()
    assert PARAMS_ENV not in env and env["MODE"] == "fast"
    # filled in as Katib's webhook tries it (every placeholder a word): still a TrainJob
    trial = run_spec(exp, f"{name}-abcd1234", "team-a", [
        {"name": p["name"], "value": "test-value"} for p in spec["parameters"]
    ])  # fmt: skip
    assert validate_trainjob(trial) > 0
    # the job each node runs carries no values of its own either
    args = template["spec"]["trainer"]["args"]
    ran = decode_spec(args[args.index("--spec") + 1])
    assert PARAMS_ENV not in ran["env"] and ran["env"][SWEEP_ENV] == sweep.id
    assert ran["nodes"] == 2
    # the Secret is named on stderr, never sent in the documents
    assert "Secret nbscale-keys-alice " in plan.commentary() + " "  # this user's own
    assert all(d["kind"] != "Secret" for d in plan.documents)


def ran_spec(trainjob):
    args = trainjob["spec"]["trainer"]["args"]
    return decode_spec(args[args.index("--spec") + 1])


def mf_pod(trainjob):
    return trainjob["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"][
        "replicatedJobs"
    ][0]["template"]["spec"]["template"]["spec"]


def test_katib_fills_the_template_into_a_trainjob_of_the_trial(backend, script):
    sweep = sweep_of(script)
    (exp,) = documents(backend.dry_run(sweep))
    trial = f"{exp['metadata']['name']}-x7k2p9qa"
    values = [
        {"name": "lr", "value": "0.00123"},
        {"name": "batch", "value": "64"},
        {"name": "layers", "value": "3"},
        {"name": "drop", "value": "0.2"},
    ]
    job = run_spec(exp, trial, "team-a", values)
    validate_trainjob(job)
    assert job["metadata"]["name"] == trial and "${" not in json.dumps(job)
    env = trainer_env(job)
    assert env["NBSCALE_PARAM_lr"] == "0.00123" and env["NBSCALE_PARAM_batch"] == "64"
    args = job["spec"]["trainer"]["args"]
    assert args[args.index("--job-id") + 1] == trial  # each trial is a job of its own
    assert args[args.index("--outputs") + 1] == f"s3://nb-bucket/work/jobs/{trial}/outputs"
    assert job["metadata"]["labels"][mf.JOB_LABEL] == trial
    code = ran_spec(job)["code"]["uri"]
    assert code.startswith("s3://nb-bucket/work/code/") and trial not in code  # shared
    # what nbscale.param reads back from those strings
    from nbscale.sweeps.space import Space

    space = Space.from_list(json.loads(env[SPACE_ENV]))
    assert space.cast({v["name"]: v["value"] for v in values}) == {
        "lr": 0.00123,
        "batch": 64,
        "layers": 3,
        "drop": 0.2,
    }


@pytest.mark.parametrize(
    "algorithm, katib", [("tpe", "tpe"), ("random", "random"), ("grid", "grid"),
                         ("bayesian", "bayesianoptimization")],
)  # fmt: skip
def test_each_algorithm_is_katibs_own(backend, script, algorithm, katib):
    space = {
        "grid": "layers=int(2,6) drop=uniform(0,0.5,0.1) batch=choice(32,64)",
        "bayesian": "lr=loguniform(1e-4,1e-1) layers=int(2,6)",
    }.get(algorithm, SPACE)
    plan = backend.dry_run(sweep_of(script, algorithm=algorithm, space=space, pruner="none"))
    (exp,) = documents(plan)
    validate_experiment(exp)
    assert admit(exp) == []
    assert exp["spec"]["algorithm"]["algorithmName"] == katib
    assert "earlyStopping" not in exp["spec"]
    if algorithm == "grid":  # Katib's grid steps an int by its step: it must be there
        params = {p["name"]: p["feasibleSpace"] for p in exp["spec"]["parameters"]}
        assert params["layers"]["step"] == "1"
        assert exp["spec"]["maxTrialCount"] == 8  # of 5 x 6 x 2 points
    if algorithm == "bayesian":
        assert "layers: Katib's bayesianoptimization" not in plan.commentary()


def test_median_settings_and_few_trials(backend, script):
    sweep = sweep_of(script, trials=2, parallel=2, max_failed=5,
                     settings={"startup_trials": 2, "warmup_steps": 3})  # fmt: skip
    (exp,) = documents(backend.dry_run(sweep))
    validate_experiment(exp)
    assert admit(exp) == []  # maxFailedTrialCount may not pass maxTrialCount
    assert exp["spec"]["maxFailedTrialCount"] == 2
    assert exp["spec"]["earlyStopping"] == {
        "algorithmName": "medianstop",
        "algorithmSettings": [
            {"name": "min_trials_required", "value": "2"},
            {"name": "start_step", "value": "3"},
        ],
    }


def test_a_long_name_still_makes_a_katib_name(backend, script):
    sweep = sweep_of(script, name="9-a-long-sweep-name-with-words-and-more")
    name = ks.experiment_name(sweep)
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 40
    (exp,) = documents(backend.dry_run(sweep))
    assert admit(exp) == []


BAD = [
    ({"pruner": "halving"}, "sweep.pruner", "only medianstop"),
    ({"algorithm": "bayesian", "space": "x=uniform(-1,1)"}, "sweep.x", "log scale"),
    ({"space": "opt=choice('a\"b','c')"}, "sweep.opt", "quote"),
    ({"space": "flag=choice(True,'True')"}, "sweep.flag", "read the same"),
    ({"settings": {"patience": 3}}, "sweep.settings", "not a setting of Katib"),
    ({"settings": {"warmup_steps": 0}}, "sweep.settings.warmup_steps", ">= 1"),
    ({"pruner": "none", "settings": {"warmup_steps": 2}}, "sweep.settings", "--pruner none"),
]


@pytest.mark.parametrize("change, field, words", BAD, ids=[b[1] + ":" + b[2] for b in BAD])
def test_what_katib_cannot_do_is_refused_in_one_message(backend, script, change, field, words):
    with pytest.raises(SpecError) as err:
        backend.dry_run(sweep_of(script, **change))
    assert err.value.field.startswith(field) and words in str(err.value)
    assert "\n" not in str(err.value)


def test_an_algorithm_katib_lacks_is_refused(backend, script):
    sweep = sweep_of(script)
    object.__setattr__(sweep, "algorithm", "cmaes-nbscale")  # a core that grew one
    with pytest.raises(SpecError, match="Katib has no algorithm for 'cmaes-nbscale'"):
        backend.dry_run(sweep)


def test_the_job_is_checked_as_a_job_is(backend, script):
    sweep = sweep_of(script)
    script.unlink()  # gone since the sweep was made
    with pytest.raises(SpecError, match="does not exist"):
        backend.dry_run(sweep)


def test_the_filter_reads_what_log_metric_prints(backend, script):
    (exp,) = documents(backend.dry_run(sweep_of(script)))
    lines = [
        "nbscale: job x node 0/1 (kubeflow), 1 process(es) here",
        f"[rank 0] {metric_line('val_loss', 0.5)}",
        f"[rank 0] {metric_line('train_loss', 9.0)}",
        f"[rank 0] {metric_line('val_loss', 1e-05)}",
        f"[rank 0] {metric_line('val_loss', -2.5e20)}",
        "[rank 0] val_loss is not a metric line",
    ]
    assert metric_line("val_loss", float("nan")) is None
    reported = collect(exp, lines)
    assert reported == [("val_loss", "0.5"), ("val_loss", "1e-05"), ("val_loss", "-2.5e+20")]
    obs = observation(reported, exp["spec"]["objective"]["metricStrategies"])
    assert obs["metrics"] == [
        {"name": "val_loss", "min": "-2.5e+20", "max": "0.5", "latest": "-2.5e+20"}
    ]


def katib_trial(conds, latest=None, values=None):
    trial = {
        "metadata": {"name": "fit-t-abc", "creationTimestamp": "2026-12-01T00:00:00Z"},
        "spec": {"parameterAssignments": values or [{"name": "lr", "value": "0.01"},
                                                     {"name": "batch", "value": "64"}]},
        "status": {"conditions": conds, "startTime": "2026-12-01T00:00:01Z"},
    }  # fmt: skip
    if latest is not None:
        trial["status"]["observation"] = {
            "metrics": [{"name": "val_loss", "min": latest, "max": latest, "latest": latest}]
        }
    return trial


@pytest.mark.parametrize(
    "conds, status",
    [
        ([condition("Created")], PENDING),
        ([condition("Created"), condition("Running")], RUNNING),
        ([condition("Running", "False"), condition("Succeeded")], SUCCEEDED),
        ([condition("Running", "False"), condition("Failed")], FAILED),
        ([condition("Running", "False"), condition("EarlyStopped")], PRUNED),
        ([condition("Running", "False"), condition("Killed")], CANCELLED),
        ([condition("Running", "False"), condition("MetricsUnavailable")], FAILED),
    ],
)
def test_trial_status_comes_from_its_conditions(script, conds, status):
    sweep = sweep_of(script)
    view = ks.trial_view(3, katib_trial(conds, "0.25"), sweep)
    assert view.status == status and view.number == 3
    assert view.params == {"lr": 0.01, "batch": 64}
    assert view.last == 0.25
    assert view.value == (0.25 if status == SUCCEEDED else None)
    assert view.job_id == "fit-t-abc" and view.started is not None
    if conds[-1]["type"] == "MetricsUnavailable":
        assert "never printed the objective val_loss" in view.error


def test_a_metric_never_reported_has_no_value(script):
    view = ks.trial_view(0, katib_trial([condition("Succeeded")], "unavailable"), sweep_of(script))
    assert view.value is None and view.last is None


def test_sweep_status_comes_from_the_experiments_conditions():
    def exp(*conds):
        return {"status": {"conditions": list(conds)}}

    assert ks.sweep_status(exp(condition("Created"), condition("Running"))) == ("RUNNING", None)
    assert ks.sweep_status(exp(condition("Running", "False"), condition("Succeeded"))) == (
        "SUCCEEDED",
        None,
    )
    status, error = ks.sweep_status(
        exp(condition("Failed", reason="ExperimentFailed", message="max failed count reached"))
    )
    assert status == "FAILED" and error == "ExperimentFailed: max failed count reached"


def test_the_schema_check_is_strict(backend, script):
    """A misspelt field would be dropped by the API server and do nothing: refused here."""
    import copy

    import jsonschema

    (exp,) = documents(backend.dry_run(sweep_of(script)))
    for path, field in [((), "spek"), (("spec",), "maxTrialCounts"),
                        (("spec", "trialTemplate"), "primaryContainer"),
                        (("spec", "parameters", 0, "feasibleSpace"), "distrib")]:  # fmt: skip
        bad = copy.deepcopy(exp)
        where = bad
        for key in path:
            where = where[key]
        where[field] = "x"
        with pytest.raises(jsonschema.ValidationError):
            validate_experiment(bad)


def test_the_budget_becomes_limits_katib_keeps_in_the_dry_run(script):
    priced = ks.KatibSweeps(
        BackendConfig("kf", "kubeflow", {**BASE, "price_per_node_hour": 3.6}), get_store()
    )
    # with --max-runtime: 8 trials of at most 1000 s x 2 nodes x $3.60/h = $2.00 each
    capped = sweep_of(script, max_cost=7.0)
    capped = capped.replace(job=capped.job.replace(max_runtime=1000))
    (exp, *_) = documents(priced.dry_run(capped))
    validate_experiment(exp)
    assert admit(exp) == []
    spec = exp["spec"]
    assert (spec["maxTrialCount"], spec["parallelTrialCount"]) == (3, 3)
    assert spec["maxFailedTrialCount"] <= 3  # Katib's webhook admits none above maxTrialCount
    assert "Katib starts at most 3 trials (maxTrialCount)" in priced.dry_run(capped).commentary()
    # without: each trial's share of the budget as its TrainJob's deadline
    shared = sweep_of(script, max_cost=8.0)
    (exp, *_) = documents(priced.dry_run(shared))
    assert exp["spec"]["maxTrialCount"] == 8
    assert exp["spec"]["trialTemplate"]["trialSpec"]["spec"]["activeDeadlineSeconds"] == 500
    plan = ks.budget_plan(shared, 3.6)
    assert (plan.max_trials, plan.runtime) == (8, 500)
    assert ks.budget_plan(sweep_of(script), 3.6) is None  # no budget, no limits
    free = ks.budget_plan(shared, 0.0)  # nodes priced at nothing: nothing to hold
    assert (free.max_trials, free.runtime) == (8, None)


@pytest.mark.parametrize(
    "kw, price, words",
    [
        ({"max_cost": 1.0, "runtime": 1000}, 3.6, r"one trial may cost \$2.00"),
        ({"max_cost": 0.1}, 3.6, "less than 60 s"),
        ({"max_cost": 5.0}, None, "no price is known"),
    ],
)
def test_a_budget_katib_cannot_hold_is_refused(script, kw, price, words):
    runtime = kw.pop("runtime", None)
    sweep = sweep_of(script, **kw)
    if runtime:
        sweep = sweep.replace(job=sweep.job.replace(max_runtime=runtime))
    with pytest.raises(SpecError, match=words):
        ks.budget_plan(sweep, price)
