"""The SageMaker sweep backend against the local AWS (moto behind tests/support/aws_emulator.py).

moto 5 keeps CreateHyperParameterTuningJob and DescribeHyperParameterTuningJob (it stores the
request, and AWS too echoes the config and the definition), but a tuning job there is born
``Completed`` with a made-up best training job, and it has no
ListTrainingJobsForHyperParameterTuningJob and no StopHyperParameterTuningJob. The front
below plays SageMaker's tuner for those: the test launches the tuning job's training jobs
(named ``<tuning job>-<NNN>-<8 hex>`` as SageMaker names them, created in moto from the
definition with the static and tuned hyperparameters), picks their values inside the
request's ranges, and finishes them; the objective of each is what the definition's
MetricDefinitions regex finds in its log, the last match, as SageMaker reads it. The answers
have the shapes of the SageMaker API reference (botocore parses every one of them).
"""

from __future__ import annotations

import json
import random
import re
import secrets
import time
from pathlib import Path

import boto3
import pytest

from nbscale.backends.sagemaker.sweeps import PROGRAM, TuningSweeps
from nbscale.config import load as load_config
from nbscale.specs import Entry, JobSpec
from nbscale.store import get_store
from nbscale.store.sweeps import SweepRecord, get_sweep, put_sweep
from nbscale.sweeps.lines import metric_line
from nbscale.sweeps.spec import SweepSpec
from tests.support.aws_emulator import Emulator
from tests.support.sagemaker import config, put_logs
from tests.support.sagemaker_instances import use_emulator

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/nbscale-runtime:0.1.0"
SPACE = "lr=loguniform(1e-4,1e-1) batch=choice(32,64) layers=int(2,6)"
TRAIN = """\
import nbscale
lr = nbscale.param("lr")
layers = nbscale.param("layers")
for step in range(3):
    nbscale.log_metric("val_loss", (lr - 0.01) ** 2 * (3 - step) + layers * 1e-06, step=step)
print("trial done", lr, layers, nbscale.param("batch"))
"""


class TuningEmulator(Emulator):
    """The emulator with SageMaker's tuner where moto has none."""

    def __init__(self) -> None:
        super().__init__()
        self.tuning: dict[str, dict] = {}
        self.trial_logs: dict[str, list[str]] = {}

    def _sm_CreateHyperParameterTuningJob(self, request, forward):
        status, data, _ = forward()  # moto checks the name is new and keeps the request
        if status == 200:
            with self.lock:
                self.tuning[request["HyperParameterTuningJobName"]] = {
                    "status": "InProgress",
                    "trials": [],
                    "created": time.time(),
                    "ended": None,
                }
        return status, json.loads(data or b"{}")

    def _summary(self, name: str, tuned: dict, config: dict) -> dict:
        state = self.training[name]
        out = {
            "TrainingJobName": name,
            "TrainingJobArn": f"arn:aws:sagemaker:us-east-1:123456789012:training-job/{name}",
            "CreationTime": state["CreationTime"],
            "TrainingJobStatus": state["TrainingJobStatus"],
            "TunedHyperParameters": tuned,
        }
        for key in ("TrainingStartTime", "TrainingEndTime", "FailureReason"):
            if key in state:
                out[key] = state[key]
        objective = config["HyperParameterTuningJobObjective"]
        ended = state["TrainingJobStatus"] in ("Completed", "Stopped", "Failed")
        # the final value: SageMaker reports it once the training job has ended
        value = self.objective(name, config) if ended else None
        if value is not None:
            out["FinalHyperParameterTuningJobObjectiveMetric"] = {
                "Type": objective["Type"],
                "MetricName": objective["MetricName"],
                "Value": value,
            }
        out["ObjectiveStatus"] = (
            "Pending" if not ended else "Succeeded" if value is not None else "Failed"
        )
        return out

    def objective(self, name: str, config: dict) -> float | None:
        """What SageMaker reads: the last match of the objective's regex in the job's log."""
        metric = config["HyperParameterTuningJobObjective"]["MetricName"]
        regex = next(
            d["Regex"]
            for d in config["_definition"]["AlgorithmSpecification"]["MetricDefinitions"]
            if d["Name"] == metric
        )
        found = [
            m.group(1) for line in self.trial_logs.get(name, []) if (m := re.search(regex, line))
        ]
        return float(found[-1]) if found else None

    def _described(self, tuning: str) -> tuple[int, dict]:
        status, data, _ = self._moto_json(
            "DescribeHyperParameterTuningJob", {"HyperParameterTuningJobName": tuning}
        )
        answer = json.loads(data or b"{}")
        if status == 200:
            answer["HyperParameterTuningJobConfig"]["_definition"] = answer["TrainingJobDefinition"]
        return status, answer

    def _sm_DescribeHyperParameterTuningJob(self, request, forward):
        name = request["HyperParameterTuningJobName"]
        status, answer = self._described(name)
        with self.lock:
            state = self.tuning.get(name)
        if status != 200 or state is None:
            return status, answer
        config = answer["HyperParameterTuningJobConfig"]
        # moto's canned values (born Completed, a made-up best job, fixed counters) are not
        # what SageMaker reports: the tuner's state is
        for key in ("BestTrainingJob", "OverallBestTrainingJob", "TuningJobCompletionDetails",
                    "ConsumedResources", "HyperParameterTuningEndTime", "TrainingJobStatusCounters",
                    "ObjectiveStatusCounters"):  # fmt: skip
            answer.pop(key, None)
        answer = {k: v for k, v in answer.items() if v is not None}
        answer["HyperParameterTuningJobStatus"] = state["status"]
        summaries = [self._summary(n, tuned, config) for n, tuned in state["trials"]]
        counts = {
            "Completed": 0,
            "InProgress": 0,
            "RetryableError": 0,
            "NonRetryableError": 0,
            "Stopped": 0,
        }
        objectives = {"Succeeded": 0, "Pending": 0, "Failed": 0}
        for s in summaries:
            key = {"Failed": "NonRetryableError", "Stopping": "InProgress"}.get(
                s["TrainingJobStatus"], s["TrainingJobStatus"]
            )
            counts[key] += 1
            objectives[s["ObjectiveStatus"]] += 1
        answer["TrainingJobStatusCounters"] = counts
        answer["ObjectiveStatusCounters"] = objectives
        scored = [
            s
            for s in summaries
            if s["ObjectiveStatus"] == "Succeeded" and s["TrainingJobStatus"] == "Completed"
        ]
        if scored:
            pick = min if config["HyperParameterTuningJobObjective"]["Type"] == "Minimize" else max
            answer["BestTrainingJob"] = pick(
                scored, key=lambda s: s["FinalHyperParameterTuningJobObjectiveMetric"]["Value"]
            )
        if state["ended"]:
            answer["HyperParameterTuningEndTime"] = state["ended"]
        del config["_definition"]
        return 200, answer

    def _sm_ListTrainingJobsForHyperParameterTuningJob(self, request, forward):
        name = request["HyperParameterTuningJobName"]
        with self.lock:
            state = self.tuning.get(name)
        if state is None:
            return 400, {
                "__type": "ResourceNotFound",
                "message": f"Amazon SageMaker can't find a tuning job with name {name}",
            }
        _, answer = self._described(name)
        config = answer["HyperParameterTuningJobConfig"]
        summaries = [self._summary(n, tuned, config) for n, tuned in state["trials"]]
        return 200, {"TrainingJobSummaries": summaries}

    def _sm_StopHyperParameterTuningJob(self, request, forward):
        name = request["HyperParameterTuningJobName"]
        with self.lock:
            state = self.tuning.get(name)
        if state is None:
            return 400, {
                "__type": "ResourceNotFound",
                "message": f"Amazon SageMaker can't find a tuning job with name {name}",
            }
        if state["status"] != "InProgress":
            return 400, {
                "__type": "ValidationException",
                "message": f"The hyperparameter tuning job {name} is in status {state['status']}",
            }
        state["status"] = "Stopping"
        for trial, _ in state["trials"]:
            if self.training[trial]["TrainingJobStatus"] == "InProgress":
                self.set_training(trial, "Stopping", "Stopping", "Stopping the training job")
        return 200, {}  # StopHyperParameterTuningJob has an empty response

    # -- the tuner's moves (the test's) ----------------------------------------------------
    def launch(
        self, tuning: str, rng: random.Random, pick: dict[str, str] | None = None
    ) -> tuple[str, dict, dict]:
        """One training job of the tuning job: values drawn inside the ranges (or ``pick``ed
        there by the test, as the tuner's search would), created from the definition (static
        + tuned hyperparameters) as SageMaker creates it."""
        status, answer = self._described(tuning)
        assert status == 200, answer
        config, definition = (
            answer["HyperParameterTuningJobConfig"],
            answer["TrainingJobDefinition"],
        )
        tuned = {}
        ranges = config["ParameterRanges"]
        for r in ranges.get("ContinuousParameterRanges", []):
            low, high = float(r["MinValue"]), float(r["MaxValue"])
            if r.get("ScalingType") == "Logarithmic":
                import math

                tuned[r["Name"]] = repr(math.exp(rng.uniform(math.log(low), math.log(high))))
            else:
                tuned[r["Name"]] = repr(rng.uniform(low, high))
        for r in ranges.get("IntegerParameterRanges", []):
            tuned[r["Name"]] = str(rng.randint(int(r["MinValue"]), int(r["MaxValue"])))
        for r in ranges.get("CategoricalParameterRanges", []):
            tuned[r["Name"]] = rng.choice(r["Values"])
        for key, value in (pick or {}).items():  # a value the tuner could have drawn
            (r,) = [r for rs in ranges.values() for r in rs if r["Name"] == key]
            if "Values" in r:
                assert value in r["Values"], (key, value, r)
            else:
                assert float(r["MinValue"]) <= float(value) <= float(r["MaxValue"]), (key, r)
            tuned[key] = value
        with self.lock:
            number = len(self.tuning[tuning]["trials"]) + 1
        name = f"{tuning}-{number:03d}-{secrets.token_hex(4)}"
        hyper = {**definition.get("StaticHyperParameters", {}), **tuned,
                 "_tuning_objective_metric": config["HyperParameterTuningJobObjective"]["MetricName"]}  # fmt: skip
        request = {
            "TrainingJobName": name,
            "HyperParameters": hyper,
            "AlgorithmSpecification": {
                k: v for k, v in definition["AlgorithmSpecification"].items() if k != "MetricDefinitions"
            },
            **{k: definition[k] for k in ("RoleArn", "InputDataConfig", "OutputDataConfig",
                                          "ResourceConfig", "StoppingCondition", "Environment")
               if k in definition},
        }  # fmt: skip
        s, data, _ = self._moto_json("CreateTrainingJob", request)
        assert s == 200, data
        now = time.time()
        with self.lock:
            self.training[name] = {
                "TrainingJobStatus": "InProgress",
                "SecondaryStatus": "Starting",
                "SecondaryStatusTransitions": [
                    {
                        "Status": "Starting",
                        "StartTime": now,
                        "StatusMessage": "Launching requested ML instances",
                    }
                ],
                "CreationTime": now + number * 1e-3,
                "LastModifiedTime": now,
            }
            self.tuning[tuning]["trials"].append((name, tuned))
        return name, tuned, request

    def log(self, trial: str, lines: list[str], host: int = 1) -> None:
        """The trial's instance prints ``lines``: SageMaker sends them to the training job's
        CloudWatch stream ``<job>/algo-<host>-<epoch>`` and its regexes read them."""
        with self.lock:
            self.trial_logs.setdefault(trial, []).extend(lines)
        put_logs(trial, host, lines)

    def end_tuning(self, tuning: str, status: str) -> None:
        with self.lock:
            self.tuning[tuning].update(status=status, ended=time.time())


@pytest.fixture(scope="module")
def emulator():
    emu = TuningEmulator()
    yield emu
    emu.stop()


@pytest.fixture
def aws(emulator, monkeypatch):
    return use_emulator(emulator, monkeypatch)


def make_sweep(tmp_path: Path, **fields) -> SweepSpec:
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    job = JobSpec(
        entry=Entry.from_path(str(script)), name=f"sm-sweep-{secrets.token_hex(2)}", backend="aws"
    )
    fields.setdefault("objective", "val_loss:min")
    fields.setdefault("algorithm", "bayesian")
    return SweepSpec(job=job, space=SPACE, trials=6, parallel=2, **fields)


def started(sweep: SweepSpec, **settings) -> tuple[TuningSweeps, SweepRecord]:
    cfg = config(image=IMAGE, **settings)
    store = get_store()
    backend = TuningSweeps(cfg.backend("aws"), store)
    now = time.time()
    record = put_sweep(
        store,
        SweepRecord(sweep.id, sweep.name, "aws", "sagemaker", "RUNNING", sweep.to_dict(), now, now),
    )
    return backend, backend.start(sweep, record)


def metric_lines(values: list[float]) -> list[str]:
    return [f"[rank 0] {metric_line('val_loss', v)}" for v in values]


def test_the_tuning_job_is_created_with_its_program_and_followed(aws, tmp_path, nbscale_home):
    sweep = make_sweep(tmp_path)
    backend, record = started(sweep)
    request = aws.operations("CreateHyperParameterTuningJob")[-1]
    name = request["HyperParameterTuningJobName"]
    assert record.native_id == name and record.status == "RUNNING"
    assert record.info["tuning_job_arn"].endswith(f"hyper-parameter-tuning-job/{name}")
    # what the dry run shows is what was sent
    assert backend.dry_run(sweep).documents[0] == request
    # the trial's program went to S3, content-addressed, and execs the job's entry
    static = request["TrainingJobDefinition"]["StaticHyperParameters"]
    bucket, _, key = static["sagemaker_submit_directory"].removeprefix("s3://").partition("/")
    import io
    import tarfile

    body = boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        program = tar.extractfile(PROGRAM).read().decode()
    assert "nbscale.runtime.launch" in program and "TRAINING_JOB_NAME" in program
    # every input channel of the trials is in S3
    s3 = boto3.client("s3")
    for channel in request["TrainingJobDefinition"]["InputDataConfig"]:
        b, _, prefix = (
            channel["DataSource"]["S3DataSource"]["S3Uri"].removeprefix("s3://").partition("/")
        )
        assert s3.list_objects_v2(Bucket=b, Prefix=prefix).get("KeyCount", 0) >= 1, channel

    view = backend.view(record)
    assert view.status == "RUNNING" and view.trials == []

    rng = random.Random(3)
    t1, v1, _ = aws.launch(name, rng)
    t2, v2, _ = aws.launch(name, rng)
    t3, v3, _ = aws.launch(name, rng)
    t4, _, _ = aws.launch(name, rng)
    t5, _, _ = aws.launch(name, rng)
    t6, _, _ = aws.launch(name, rng)
    view = backend.view(record)
    assert [t.status for t in sorted(view.trials, key=lambda t: t.number)] == ["PENDING"] * 6
    assert [t.number for t in sorted(view.trials, key=lambda t: t.number)] == [1, 2, 3, 4, 5, 6]

    aws.set_training(t1, "InProgress", "Training")
    aws.log(t1, metric_lines([0.5, 0.25]))
    aws.set_training(t1, "Completed", "Completed")
    aws.set_training(t2, "InProgress", "Training")
    aws.log(t2, metric_lines([0.3, 1e-05]))
    aws.set_training(t2, "Completed", "Completed")
    aws.set_training(t3, "InProgress", "Training")  # still training
    aws.set_training(t4, "InProgress", "Training")
    aws.log(t4, metric_lines([0.9]))  # worse than the median: SageMaker's early stopping
    aws.set_training(t4, "Stopped", "Stopped")
    aws.set_training(t5, "Failed", "Failed", FailureReason="AlgorithmError: ZeroDivisionError")
    aws.set_training(t6, "InProgress", "Training")
    aws.set_training(t6, "Stopped", "MaxRuntimeExceeded")  # its own limit: a failure
    aws.set_training(t3, "InProgress", "Training")

    view = backend.view(record)
    by = {t.job_id: t for t in view.trials}
    assert (by[t1].status, by[t1].value) == ("SUCCEEDED", 0.25)
    assert (by[t2].status, by[t2].value) == ("SUCCEEDED", 1e-05)
    assert by[t3].status == "RUNNING" and by[t3].started is not None
    assert by[t4].status == "PRUNED" and by[t4].last == 0.9 and by[t4].value is None
    assert by[t5].status == "FAILED" and "ZeroDivisionError" in by[t5].error
    assert by[t6].status == "FAILED" and "max-runtime" in by[t6].error
    # the values come back typed, as the space says
    assert by[t1].params == {
        "lr": float(v1["lr"]),
        "batch": int(v1["batch"]),
        "layers": int(v1["layers"]),
    }
    assert isinstance(by[t2].params["batch"], int) and isinstance(by[t2].params["lr"], float)
    assert view.best is by[t2] and view.ranked()[0] is by[t2]
    assert view.counts() == {"SUCCEEDED": 2, "RUNNING": 1, "PRUNED": 1, "FAILED": 2}

    # cancel stops the tuning job; SageMaker stops what runs
    backend.cancel(get_sweep(get_store(), record.id))
    assert aws.operations("StopHyperParameterTuningJob")[-1] == {
        "HyperParameterTuningJobName": name
    }
    view = backend.view(get_sweep(get_store(), record.id))
    assert view.status == "RUNNING"  # Stopping
    aws.set_training(t3, "Stopped", "Stopped")
    aws.end_tuning(name, "Stopped")
    view = backend.view(get_sweep(get_store(), record.id))
    assert view.status == "CANCELLED"
    by = {t.job_id: t for t in view.trials}
    assert by[t3].status == "CANCELLED" and by[t4].status == "PRUNED"  # stopped before the cancel
    assert get_sweep(get_store(), record.id).status == "CANCELLED"
    # a second cancel of an ended sweep sends nothing
    before = len(aws.operations("StopHyperParameterTuningJob"))
    backend.cancel(get_sweep(get_store(), record.id))
    assert len(aws.operations("StopHyperParameterTuningJob")) == before


def test_a_dry_run_sends_and_uploads_nothing(aws, tmp_path, nbscale_home):
    sweep = make_sweep(tmp_path, algorithm="random", pruner="none")
    cfg = config(image=IMAGE)
    backend = TuningSweeps(cfg.backend("aws"), get_store())
    writes = len(aws.bodies)
    plan = backend.dry_run(sweep)
    sent = [b for b in aws.bodies[writes:] if b[0] in ("PUT", "POST")]
    ops = [json.loads(body or b"{}") for _, _, body in sent]
    assert all("HyperParameterTuningJobName" not in op for op in ops)
    assert not [b for b in sent if b[0] == "PUT"]  # no upload
    assert plan.documents[0]["HyperParameterTuningJobConfig"]["Strategy"] == "Random"


def test_the_same_sweep_again_follows_the_running_tuning_job(aws, tmp_path, nbscale_home):
    sweep = make_sweep(tmp_path)
    backend, record = started(sweep)
    created = len(aws.operations("CreateHyperParameterTuningJob"))
    again = backend.start(sweep, put_sweep(get_store(), record))
    assert again.native_id == record.native_id
    assert len(aws.operations("CreateHyperParameterTuningJob")) == created
    # once it was stopped, running it again makes a new tuning job (a name is never reused)
    backend.cancel(again)
    aws.end_tuning(record.native_id, "Stopped")
    backend.view(get_sweep(get_store(), record.id))
    third = backend.start(sweep, put_sweep(get_store(), get_sweep(get_store(), record.id)))
    assert third.native_id != record.native_id and len(third.native_id) <= 32
    assert len(aws.operations("CreateHyperParameterTuningJob")) == created + 1


def test_more_failures_than_max_failed_stop_the_tuning_job(aws, tmp_path, nbscale_home):
    sweep = make_sweep(tmp_path, max_failed=1)
    backend, record = started(sweep, poll_seconds=0)
    rng = random.Random(5)
    for _ in range(2):
        trial, _, _ = aws.launch(record.native_id, rng)
        aws.set_training(trial, "Failed", "Failed", FailureReason="AlgorithmError: boom")
    seen = []

    def settle(view):
        seen.append(view.status)
        if aws.tuning[record.native_id]["status"] == "Stopping":
            aws.end_tuning(record.native_id, "Stopped")

    view = backend.drive(sweep, record, None, on_update=settle, poll=0.05, timeout=30)
    assert (
        aws.operations("StopHyperParameterTuningJob")[-1]["HyperParameterTuningJobName"]
        == record.native_id
    )
    assert view.status == "FAILED" and "more than --max-failed 1" in view.error
    assert get_sweep(get_store(), record.id).status == "FAILED"


def test_secret_env_goes_to_a_secret_of_the_sweep_and_is_deleted_after(
    aws, tmp_path, nbscale_home, monkeypatch
):
    value = "s3cr3t-" + "w" * 20
    monkeypatch.setenv("MY_API_TOKEN", value)
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    job = JobSpec(
        entry=Entry.from_path(str(script)),
        name="sm-secret",
        backend="aws",
        secret_env=("MY_API_TOKEN",),
    )
    sweep = SweepSpec(
        job=job, space=SPACE, objective="val_loss:min", algorithm="bayesian", trials=2
    )
    backend, record = started(sweep)
    request = aws.operations("CreateHyperParameterTuningJob")[-1]
    arn = request["TrainingJobDefinition"]["Environment"]["NBSCALE_ENV_SECRET_ARN"]
    sm = boto3.client("secretsmanager")
    assert json.loads(sm.get_secret_value(SecretId=arn)["SecretString"]) == {"MY_API_TOKEN": value}
    assert value.encode() not in json.dumps(request).encode()
    aws.end_tuning(record.native_id, "Completed")
    assert backend.view(get_sweep(get_store(), record.id)).status == "SUCCEEDED"
    with pytest.raises(sm.exceptions.ResourceNotFoundException):
        sm.get_secret_value(SecretId=arn)


# -- a trial's own command ---------------------------------------------------------------------
# SageMaker starts a stock image with ``train``: the training toolkit copies
# sagemaker_submit_directory to /opt/ml/code and runs ``python <sagemaker_program>`` there with
# the other hyperparameters as ``--name value`` arguments. The instance below does the same
# (the archive reaches it as a channel, the way lay_out fetches every S3 input).
TOOLKIT = (
    "mkdir -p /opt/ml/code && tar -xzf /opt/ml/input/data/sourcedir/sourcedir.tar.gz "
    '-C /opt/ml/code && cd /opt/ml/code && exec python "$0" "$@"'
)


@pytest.mark.slow
def test_a_trial_reads_its_tuned_values_and_prints_lines_the_regex_reads(
    aws, tmp_path, nbscale_home
):
    from tests.support.emulators import free_port
    from tests.support.sagemaker_instances import (
        require_mount_namespaces,
        start_instances,
        stdout,
        wait_all,
    )

    require_mount_namespaces()
    sweep = make_sweep(tmp_path)
    backend, record = started(sweep)
    trial, tuned, request = aws.launch(record.native_id, random.Random(11))
    hyper = request["HyperParameters"]
    archive = hyper["sagemaker_submit_directory"]
    args = [
        part
        for key, value in sorted(hyper.items())
        if not key.startswith(("sagemaker_", "_tuning"))
        for part in (f"--{key}", value)
    ]
    instance = {
        **request,
        "AlgorithmSpecification": {
            **request["AlgorithmSpecification"],
            "ContainerEntrypoint": ["/bin/sh", "-c", TOOLKIT, hyper["sagemaker_program"]],
            "ContainerArguments": args,
        },
        "InputDataConfig": [
            *request["InputDataConfig"],
            {
                "ChannelName": "sourcedir",
                "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix",
                                                "S3Uri": archive.rsplit("/", 1)[0] + "/",
                                                "S3DataDistributionType": "FullyReplicated"}},
            },
        ],
    }  # fmt: skip
    root = tmp_path / "instance"
    procs = start_instances(root, instance, free_port())
    assert wait_all(procs, timeout=300) == [0], stdout(root, "algo-1")
    out = stdout(root, "algo-1")
    lr, layers = float(tuned["lr"]), int(tuned["layers"])
    assert f"trial done {lr!r} {layers} {int(tuned['batch'])}" in out, out
    aws.log(trial, out.splitlines())
    aws.set_training(trial, "Completed", "Completed")
    view = backend.view(get_sweep(get_store(), record.id))
    (found,) = view.trials
    assert found.status == "SUCCEEDED"
    assert found.value == pytest.approx((lr - 0.01) ** 2 * 1 + layers * 1e-06, rel=1e-12)


# -- the best trial as a job: its logs and its --outputs come home --------------------------
CELL = """\
import nbscale
loss = (lr - 0.01) ** 2 + 0.5
nbscale.log_metric("val_loss", loss)
seen = lr
"""


def home_config(**extra) -> None:
    """The ``aws`` backend in the nbscale home's config (what the engine and ``nbscale.job``
    read), with the settings of tests/support/sagemaker.py."""
    from nbscale import paths
    from tests.support.sagemaker import SETTINGS

    settings = {**SETTINGS, "image": IMAGE, **extra}
    lines = ["[backends.aws]", 'type = "sagemaker"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    paths.home().mkdir(parents=True, exist_ok=True)
    (paths.home() / "config.toml").write_text("\n".join(lines) + "\n")


def cell_sweep(trials: int = 3, **job):
    """A ``%%train --sweep`` cell on the aws backend, made as the magic makes it: the cell
    captured once into a bundle beside the study, the sweep checked and started."""
    import dataclasses

    from nbscale import paths, sweep_runs
    from nbscale.celljob import prepare_cell

    home_config()
    # the notebook's folder (the working directory) travels with each trial; it holds the
    # notebook (an empty folder unpacks to none on the instance: reported, not this test's)
    Path("sweep.ipynb").write_text("{}\n")
    spec = JobSpec(entry=Entry("module", "placeholder"), name="sm-cell", backend="aws", **job)
    prepared = prepare_cell(CELL, {"lr": None}, spec, outputs=["loss", "seen"])
    folder = paths.home() / "sweeps"
    folder.mkdir(parents=True, exist_ok=True)
    bundle = folder / f"sm-cell-{secrets.token_hex(2)}.cell.zip"
    prepared = dataclasses.replace(
        prepared, spec=prepared.spec.replace(entry=Entry("bundle", str(bundle)))
    )
    prepared.write()
    sweep, notes = sweep_runs.prepare(
        prepared.spec,
        "lr=loguniform(1e-4,1e-1)",
        "val_loss:min",
        cell_source=CELL,
        trials=trials,
        parallel=trials,
        max_failed=1,
    )
    return sweep_runs.start(sweep, notes=notes)


def model_uri(request: dict) -> str:
    """Where SageMaker puts a training job's /opt/ml/model: <S3OutputPath>/<name>/output."""
    base = request["OutputDataConfig"]["S3OutputPath"].rstrip("/")
    return f"{base}/{request['TrainingJobName']}/output/model.tar.gz"


def put_object(uri: str, body: bytes) -> None:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=body)


def written_outputs(job_id: str, values: dict, tmp_path: Path) -> bytes:
    """A model.tar.gz with what the cell runtime writes in /opt/ml/model: results.zip, signed
    with this home's key for job ``job_id``, and node 0's record."""
    import io
    import tarfile

    from nbscale.results import write_results

    folder = tmp_path / f"model-{job_id}"
    folder.mkdir()
    write_results(folder, job_id, values)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(folder / "results.zip", arcname="results.zip")
        node = json.dumps({"exit_code": 0, "errors": [], "restarts": 0}).encode()
        info = tarfile.TarInfo("nodes/0.json")
        info.size = len(node)
        tar.addfile(info, io.BytesIO(node))
    return buf.getvalue()


def test_a_trial_is_followed_as_its_training_job_and_its_outputs_come_home(
    aws, tmp_path, nbscale_home, monkeypatch
):
    from nbscale import keys
    from nbscale.results import load_results
    from tests.support.sagemaker import put_logs

    value = "s3cr3t-" + "k" * 20
    monkeypatch.setenv("MY_API_TOKEN", value)
    handle = cell_sweep(secret_env=("MY_API_TOKEN",))
    tuning = handle.record.native_id
    arn = handle.record.info["env_secret_arn"]
    rng = random.Random(7)
    best, _, best_req = aws.launch(tuning, rng, {"lr": "0.011"})
    worse, _, worse_req = aws.launch(tuning, rng, {"lr": "0.05"})
    failed, _, _ = aws.launch(tuning, rng, {"lr": "0.0003"})
    # each trial ran and SageMaker uploaded its /opt/ml/model; the objective is in its log
    for trial, request, x in ((best, best_req, 0.011), (worse, worse_req, 0.05)):
        loss = (x - 0.01) ** 2 + 0.5
        aws.set_training(trial, "InProgress", "Training")
        aws.log(trial, metric_lines([loss]))
        put_logs(trial, 1, [f"[rank 0] trial {trial} loss {loss}"])
        put_object(model_uri(request), written_outputs(trial, {"loss": loss, "seen": x}, tmp_path))
        aws.set_training(trial, "InProgress", "Uploading")
        aws.set_training(trial, "Completed", "Completed", BillableTimeInSeconds=42)
    aws.set_training(failed, "Failed", "Failed", FailureReason="AlgorithmError: boom")
    view = handle.view()
    assert view.best.job_id == best

    backend = TuningSweeps(load_config().backend("aws"), get_store())
    row = backend.trial_job(get_sweep(get_store(), handle.id), view.best)
    # what SageMakerBackend.submit records for a job, for the training job the tuner made
    assert (row.id, row.native_id, row.status) == (best, best, "RUNNING")
    assert (row.backend, row.backend_type) == ("aws", "sagemaker")
    assert row.info["training_job_arn"].endswith(f"training-job/{best}")
    assert row.info["output_path"] == best_req["OutputDataConfig"]["S3OutputPath"]
    assert row.info["image"] == IMAGE and row.info["instance_type"] == "ml.m5.xlarge"
    assert row.info["env_secret_arn"] is None  # the sweep's secret: not this job's to delete
    assert json.loads(row.spec["env"]["NBSCALE_PARAMS"]) == {"lr": 0.011}
    assert row.spec["tags"]["nbscale-sweep"] == handle.id
    assert row.spec["tags"]["nbscale-trial"] == str(view.best.number)
    assert row.spec["secret_env"] == ["MY_API_TOKEN"]
    text = json.dumps(row.to_dict())
    assert value not in text and keys.load("bundle").hex() not in text

    # the engine stores it; the job backend follows the training job and collects
    job = handle.best_job
    assert job.id == best and job.record.status == "RUNNING"
    record = job.refresh()
    assert record.status == "SUCCEEDED", record.error
    assert load_results(record) == {"loss": pytest.approx((0.011 - 0.01) ** 2 + 0.5),
                                    "seen": 0.011}  # fmt: skip
    assert record.info["billable_seconds"] == 42
    assert f"trial {best} loss" in job.logs(0)  # its CloudWatch stream, by rank
    assert handle.best_job.id == best  # asked again: the same job
    # the sweep's secret outlives its best job's end, and goes when the sweep ends
    sm = boto3.client("secretsmanager")
    assert json.loads(sm.get_secret_value(SecretId=arn)["SecretString"]) == {"MY_API_TOKEN": value}
    aws.end_tuning(tuning, "Completed")
    assert handle.view().status == "SUCCEEDED"
    with pytest.raises(sm.exceptions.ResourceNotFoundException):
        sm.get_secret_value(SecretId=arn)
    # a training job SageMaker does not know is no job
    from dataclasses import replace

    ghost = replace(view.best, job_id=f"{tuning}-009-0badf00d")
    assert backend.trial_job(get_sweep(get_store(), handle.id), ghost) is None


@pytest.mark.slow
def test_the_best_trials_outputs_come_home_from_its_own_container(aws, tmp_path, nbscale_home):
    from nbscale.results import load_results
    from tests.support.emulators import free_port
    from tests.support.sagemaker import put_logs
    from tests.support.sagemaker_instances import (
        model_tar,
        require_mount_namespaces,
        start_instances,
        stdout,
        wait_all,
    )

    require_mount_namespaces()
    handle = cell_sweep()
    tuning = handle.record.native_id
    rng = random.Random(13)
    launched = [aws.launch(tuning, rng, {"lr": x}) for x in ("0.05", "0.0095")]
    stopped, _, _ = aws.launch(tuning, rng, {"lr": "0.0002"})
    # SageMaker runs each trial's container through the training toolkit; what the cell
    # wrote in /opt/ml/model is uploaded, its stdout goes to CloudWatch
    for trial, _, request in launched:
        hyper = request["HyperParameters"]
        instance = {
            **request,
            "AlgorithmSpecification": {
                **request["AlgorithmSpecification"],
                "ContainerEntrypoint": ["/bin/sh", "-c", TOOLKIT, hyper["sagemaker_program"]],
                "ContainerArguments": [
                    part
                    for key, value in sorted(hyper.items())
                    if not key.startswith(("sagemaker_", "_tuning"))
                    for part in (f"--{key}", value)
                ],
            },
            "InputDataConfig": [
                *request["InputDataConfig"],
                {
                    "ChannelName": "sourcedir",
                    "DataSource": {"S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": hyper["sagemaker_submit_directory"].rsplit("/", 1)[0] + "/",
                        "S3DataDistributionType": "FullyReplicated"}},
                },
            ],
        }  # fmt: skip
        root = tmp_path / trial
        aws.set_training(trial, "InProgress", "Training")
        procs = start_instances(root, instance, free_port())
        assert wait_all(procs, timeout=300) == [0], stdout(root, "algo-1")
        lines = stdout(root, "algo-1").splitlines()
        aws.log(trial, lines)
        put_logs(trial, 1, lines)
        put_object(model_uri(request), model_tar([procs[0][1]]))
        aws.set_training(trial, "Completed", "Completed")
    aws.log(stopped, metric_lines([2.0]))
    aws.set_training(stopped, "InProgress", "Training")
    aws.set_training(stopped, "Stopped", "Stopped")  # SageMaker's early stopping
    aws.end_tuning(tuning, "Completed")

    view = handle.run(poll=0.05, timeout=30)
    best = launched[1][0]
    assert view.status == "SUCCEEDED" and handle.best.job_id == best
    job = handle.best_job
    record = job.refresh()
    assert record.status == "SUCCEEDED", record.error
    assert load_results(record) == {"loss": pytest.approx((0.0095 - 0.01) ** 2 + 0.5),
                                    "seen": 0.0095}  # fmt: skip
    assert record.exit_code == 0
    assert "outputs written: loss, seen" in job.logs(0)


def test_running_trials_show_their_latest_value_and_every_trial_its_cost(
    aws, tmp_path, nbscale_home
):
    from nbscale.cost import node_price

    sweep = make_sweep(tmp_path)
    backend, record = started(sweep)
    name = record.native_id
    rng = random.Random(5)
    t1, _, _ = aws.launch(name, rng)
    t2, _, _ = aws.launch(name, rng)
    aws.set_training(t1, "InProgress", "Training")
    # SageMaker has no final value for a running trial: the log is all there is
    aws.log(t1, ["nbscale: job x node 0/1 (sagemaker)", *metric_lines([0.9, 0.5])])
    view = backend.view(get_sweep(get_store(), record.id))
    by = {t.job_id: t for t in view.trials}
    assert by[t1].status == "RUNNING" and by[t1].value is None
    assert (by[t1].last, by[t1].steps) == (0.5, 2)
    assert by[t2].status == "PENDING" and by[t2].last is None and by[t2].cost is None
    assert by[t1].cost is not None and by[t1].cost >= 0  # its time so far
    aws.log(t1, metric_lines([0.25]))
    by = {t.job_id: t for t in backend.view(get_sweep(get_store(), record.id)).trials}
    assert (by[t1].last, by[t1].steps) == (0.25, 3)  # read on, nothing twice

    # ended: SageMaker's billable seconds x the instances x the instance's price
    aws.set_training(t1, "Completed", "Completed", BillableTimeInSeconds=1800)
    aws.set_training(t2, "InProgress", "Training")
    aws.log(t2, metric_lines([0.7]))
    aws.set_training(
        t2, "Failed", "Failed", FailureReason="AlgorithmError: x", BillableTimeInSeconds=360
    )
    view = backend.view(get_sweep(get_store(), record.id))
    by = {t.job_id: t for t in view.trials}
    settings = backend.settings
    price = node_price("sagemaker", settings.model_dump(exclude_none=True), settings.instance_type)
    assert by[t1].status == "SUCCEEDED" and by[t1].value == 0.25 and by[t1].steps == 3
    assert by[t1].cost == pytest.approx(0.5 * price, abs=1e-4)
    assert by[t2].status == "FAILED" and by[t2].last == 0.7
    assert by[t2].cost == pytest.approx(0.1 * price, abs=1e-4)
    total = [n for n in view.notes if n.startswith("cost so far")]
    assert total == [f"cost so far ${0.6 * price:.2f} for 2 trials (billable seconds x the "
                     "instance price; a running trial's time so far)"]  # fmt: skip
    # the trial's log came into its job folder, where following it as a job reads on
    assert (
        "nbscale-metric val_loss=0.25"
        in (nbscale_home / "jobs" / t1 / "logs" / "rank-0.log").read_text()
    )
