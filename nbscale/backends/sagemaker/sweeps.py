"""Sweeps on SageMaker: automatic model tuning (``CreateHyperParameterTuningJob``).

The request
    ``HyperParameterTuningJobConfig``: the strategy (nbscale ``bayesian`` -> ``Bayesian``,
    ``random`` -> ``Random``, ``grid`` -> ``Grid``; ``--pruner halving`` -> ``Hyperband``,
    SageMaker's successive-halving strategy, which samples at random by itself and stops
    trials with its own rule, so it goes with ``--algorithm random`` and early stopping
    ``Off`` as AWS requires; ``--pruner median`` -> ``TrainingJobEarlyStoppingType: Auto``,
    SageMaker's median rule; ``none`` -> ``Off``), the objective, ``ResourceLimits``
    (``--trials``, ``--parallel``; ``--max-cost`` as the tuning job's runtime that cannot
    spend more: every trial running at once on the on-demand price) and the
    ``ParameterRanges``. ``TrainingJobDefinition`` is the job backend's own CreateTrainingJob
    request for the sweep's trial (``SageMakerBackend.training_request``: the same channels,
    uploads, signing key, ``--secret-env`` secret, image, role, resources, spot, VPC), moved
    into the definition's shape with ``MetricDefinitions`` whose regexes read the
    ``nbscale-metric NAME=VALUE`` lines ``log_metric`` prints in a trial
    (``nbscale.sweeps.lines``).

The trial's command
    A tuning job's definition has no ``ContainerEntrypoint``: SageMaker starts the image's
    own entry with ``train``, which in the AWS Deep Learning Containers (nbscale's stock
    images) is the SageMaker training toolkit. It runs ``sagemaker_program`` from
    ``sagemaker_submit_directory`` (static hyperparameters): ``nbscale_trial.py``, which
    ignores the ``--name value`` arguments the toolkit makes of the hyperparameters and
    execs the job backend's exact two-stage entry (``request.ENTRYPOINT``) with the training
    job's name as the job id. The trial reads its tuned values with ``nbscale.param``, from
    ``/opt/ml/input/config/hyperparameters.json`` (``nbscale.sweeps.params``).

Following it
    DescribeHyperParameterTuningJob (the sweep's status) and
    ListTrainingJobsForHyperParameterTuningJob (the trials: ``TunedHyperParameters``,
    ``FinalHyperParameterTuningJobObjectiveMetric``). A trial SageMaker stopped is PRUNED
    where early stopping is on (Auto or Hyperband), unless it ran out of its own time
    (``MaxRuntimeExceeded``: FAILED) or the sweep was being stopped (CANCELLED). Cancel is
    StopHyperParameterTuningJob.

The best trial
    ``trial_job`` makes a trial's training job an nbscale job row, as submit writes one, so
    the job backend follows it and brings its ``model.tar.gz`` (its ``--outputs``) home.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import io
import math
import re
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ... import storage
from ...errors import NbscaleError, SpecError
from ...store.jobs import PENDING as JOB_PENDING
from ...store.jobs import RUNNING as JOB_RUNNING
from ...store.jobs import JobRecord
from ...store.sweeps import CANCELLED as SWEEP_CANCELLED
from ...store.sweeps import FAILED as SWEEP_FAILED
from ...store.sweeps import RUNNING as SWEEP_RUNNING
from ...store.sweeps import SUCCEEDED as SWEEP_SUCCEEDED
from ...store.sweeps import TERMINAL as SWEEP_TERMINAL
from ...store.sweeps import SweepRecord, get_sweep, update_sweep
from ...sweeps.lines import sagemaker_regex
from ...words import count
from ..base import DryRun
from ..sweep_base import (
    CANCELLED,
    FAILED,
    PENDING,
    PRUNED,
    RUNNING,
    SUCCEEDED,
    SweepBackend,
    SweepView,
    TrialView,
)
from . import request as req

if TYPE_CHECKING:
    from ...sweeps.space import Param
    from ...sweeps.spec import SweepSpec

STRATEGIES = {"bayesian": "Bayesian", "random": "Random", "grid": "Grid"}
MAX_NAME = 32  # HyperParameterTuningJobName: [a-zA-Z0-9](-*[a-zA-Z0-9]){0,31}
MAX_RANGES = 30  # all ranges together (ParameterRanges)
MAX_VALUES = 30  # values of one categorical range (ParameterValues)
MAX_ENV = 48  # HyperParameterTrainingJobEnvironmentMap (a training job allows 100)
MAX_RESOURCE = 20_000  # HyperbandStrategyConfig.MaxResource
MIN_RUNTIME, MAX_RUNTIME = 120, 15_768_000  # ResourceLimits.MaxRuntimeInSeconds
PROGRAM = "nbscale_trial.py"
SOURCEDIR = "sourcedir.tar.gz"
#: the static hyperparameters of the SageMaker training toolkit (its ``params`` module)
PROGRAM_PARAM, SUBMIT_DIR_PARAM, REGION_PARAM = (
    "sagemaker_program",
    "sagemaker_submit_directory",
    "sagemaker_region",
)
# the definition takes these of a CreateTrainingJob request as they are
CARRIED = (
    "RoleArn",
    "InputDataConfig",
    "VpcConfig",
    "OutputDataConfig",
    "ResourceConfig",
    "StoppingCondition",
    "EnableNetworkIsolation",
    "EnableInterContainerTrafficEncryption",
    "EnableManagedSpotTraining",
    "CheckpointConfig",
    "RetryStrategy",
    "Environment",
)
_TRIAL_NUMBER = re.compile(r"-(\d{3})-[0-9a-f]{8}$")  # <tuning job>-<NNN>-<8 hex>
_NOT_NAME = re.compile(r"[^a-zA-Z0-9-]+")

TRIAL_PROGRAM = '''\
"""nbscale: one training job of SageMaker tuning job {tuning}.

The SageMaker training toolkit runs this file with the hyperparameters as --name value
arguments; they are not read here: the trial reads its values with nbscale.param, from
/opt/ml/input/config/hyperparameters.json. This execs the nbscale job entry SageMaker
would run for a training job, with the training job's name as the job id.
"""
import os
import sys

job = os.environ.get("TRAINING_JOB_NAME") or {fallback!r}
# one checkpoint folder per trial: every trial of the tuning job syncs to the same S3 URI
os.environ["NBSCALE_CHECKPOINT_DIR"] = os.path.join({checkpoints!r}, job)
sys.stdout.flush()
os.execv({entry!r}[0], [*{entry!r}, "--job-id", job])
'''


# -- the request ---------------------------------------------------------------------------
def tuning_job_name(sweep: SweepSpec, attempt: int = 0) -> str:
    """``<name>-<key>`` in SageMaker's 32 characters; a new attempt after a stopped or failed
    tuning job (a name is never reused) gets ``-<key[:8]>r<attempt>``."""
    suffix = sweep.key if attempt == 0 else f"{sweep.key[:8]}r{attempt}"
    head = _NOT_NAME.sub("-", sweep.name).strip("-")[: MAX_NAME - 1 - len(suffix)].rstrip("-")
    return f"{head}-{suffix}" if head else suffix


def _number(value: float | int) -> str:
    return repr(float(value)) if isinstance(value, float) else str(int(value))


def _values(param: Param, why: str) -> list[str]:
    """A discrete dimension as a categorical range's values (at most 30)."""
    values = param.grid()
    if len(values) > MAX_VALUES:
        raise SpecError(
            f"sweep.{param.name}",
            f"{why}, and its {len(values)} values are more than the {MAX_VALUES} SageMaker "
            "allows one categorical range",
            "use a larger step or fewer choices",
        )
    return [str(v) if isinstance(v, (str, bool)) else _number(v) for v in values]


def parameter_ranges(sweep: SweepSpec) -> dict[str, list[dict[str, Any]]]:
    """The space as SageMaker's ``ParameterRanges``. A range with a step (SageMaker's ranges
    have none) and every dimension of a grid (SageMaker's Grid takes categorical ranges only)
    is a categorical range of its values."""
    params = sweep.space.params
    if len(params) > MAX_RANGES:
        raise SpecError(
            "sweep",
            f"{len(params)} parameters; a SageMaker tuning job searches at most {MAX_RANGES}",
            "fix some of them (as --env values)",
        )
    out: dict[str, list[dict[str, Any]]] = {
        "IntegerParameterRanges": [],
        "ContinuousParameterRanges": [],
        "CategoricalParameterRanges": [],
    }
    for p in params:
        scaling = "Logarithmic" if p.log else "Linear"
        if p.kind == "categorical":
            out["CategoricalParameterRanges"].append(
                {"Name": p.name, "Values": _values(p, "it is a choice")}
            )
        elif sweep.algorithm == "grid":
            out["CategoricalParameterRanges"].append(
                {"Name": p.name, "Values": _values(p, "SageMaker's Grid lists every value")}
            )
        elif p.step is not None and not (p.kind == "int" and p.step == 1):
            out["CategoricalParameterRanges"].append(
                {"Name": p.name, "Values": _values(p, "SageMaker's ranges have no step")}
            )
        else:
            kind = "IntegerParameterRanges" if p.kind == "int" else "ContinuousParameterRanges"
            out[kind].append(
                {
                    "Name": p.name,
                    "MinValue": _number(p.low),
                    "MaxValue": _number(p.high),
                    "ScalingType": scaling,
                }
            )
    return {k: v for k, v in out.items() if v}


def _whole_setting(sweep: SweepSpec, key: str, default: int | None) -> int | None:
    value = sweep.settings.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_RESOURCE:
        raise SpecError(
            f"sweep.settings.{key}", f"must be a whole number 1..{MAX_RESOURCE}, got {value!r}"
        )
    return value


def strategy(sweep: SweepSpec) -> tuple[str, str, dict[str, Any] | None]:
    """``(Strategy, TrainingJobEarlyStoppingType, StrategyConfig)`` for the sweep's
    algorithm and pruner; what SageMaker has no form for is refused here."""
    if sweep.algorithm == "tpe":
        raise SpecError(
            "sweep.algorithm",
            "tpe is not a SageMaker tuning strategy (SageMaker has Bayesian, Random, Grid and "
            "Hyperband)",
            "use --algorithm bayesian (SageMaker's model-based search, the nearest to tpe)",
        )
    if sweep.pruner == "halving":
        if sweep.algorithm != "random":
            raise SpecError(
                "sweep.pruner",
                f"halving is SageMaker's Hyperband strategy, which picks its own values at "
                f"random: it cannot go with --algorithm {sweep.algorithm}",
                "use --algorithm random --pruner halving, or --pruner median (SageMaker's "
                "early stopping) with bayesian",
            )
        high = _whole_setting(sweep, "max_resource", None)
        if high is None:
            raise SpecError(
                "sweep.settings.max_resource",
                "SageMaker's Hyperband (--pruner halving) needs the most values of the "
                f"objective {sweep.objective.metric} one trial logs (its epochs)",
                "give it in the sweep's settings, e.g. max_resource=20, or use --pruner median",
            )
        low = _whole_setting(sweep, "min_resource", 1)
        if low > high:
            raise SpecError("sweep.settings.min_resource", f"{low} is above max_resource {high}")
        config = {"HyperbandStrategyConfig": {"MinResource": low, "MaxResource": high}}
        return "Hyperband", "Off", config  # AWS: early stopping must be Off with Hyperband
    return STRATEGIES[sweep.algorithm], "Auto" if sweep.pruner == "median" else "Off", None


def max_runtime(sweep: SweepSpec, settings, instance: str, nodes: int) -> int | None:
    """``--max-cost`` as the tuning job's MaxRuntimeInSeconds: with every trial running at
    once on the on-demand price, the sweep cannot spend more in that time."""
    if sweep.max_cost is None:
        return None
    from ...cost import budget_price

    price = budget_price(
        "sagemaker", settings.model_dump(exclude_none=True), instance, 0, settings.name
    )
    seconds = int(sweep.max_cost / (price * nodes * sweep.parallel) * 3600)
    if seconds < MIN_RUNTIME:
        raise SpecError(
            "sweep.max_cost",
            f"{sweep.max_cost} USD buys {seconds} s of {sweep.parallel} parallel trial(s) on "
            f"{nodes} x {instance} ({price:g} USD/h each); a SageMaker tuning job runs at least "
            f"{MIN_RUNTIME} s",
            "raise --max-cost or lower --parallel",
        )
    return min(seconds, MAX_RUNTIME)


def definition(
    training: dict[str, Any], sweep: SweepSpec, submit_uri: str, region: str
) -> dict[str, Any]:
    """The CreateTrainingJob request ``training`` as a ``HyperParameterTrainingJobDefinition``."""
    env = training.get("Environment") or {}
    if len(env) > MAX_ENV:
        raise SpecError(
            "env",
            f"a tuning job's trials take at most {MAX_ENV} environment variables; this one "
            f"has {len(env)} (nbscale's own included)",
            "pass fewer --env values",
        )
    algo = training["AlgorithmSpecification"]
    out: dict[str, Any] = {
        "AlgorithmSpecification": {
            "TrainingImage": algo["TrainingImage"],
            "TrainingInputMode": algo["TrainingInputMode"],
            # the objective first, then the other metrics the job logs (CloudWatch)
            "MetricDefinitions": [
                {"Name": sweep.objective.metric, "Regex": sagemaker_regex(sweep.objective.metric)},
                *(
                    d
                    for d in algo.get("MetricDefinitions") or []
                    if d["Name"] != sweep.objective.metric
                ),
            ][: req.MAX_METRICS],
        },
        "StaticHyperParameters": {
            PROGRAM_PARAM: PROGRAM,
            SUBMIT_DIR_PARAM: submit_uri,
            REGION_PARAM: region,
        },
    }
    out.update({k: training[k] for k in CARRIED if k in training})
    return out


def trial_program(tuning: str) -> bytes:
    text = TRIAL_PROGRAM.format(
        tuning=tuning,
        fallback=tuning,
        checkpoints=req.CHECKPOINT_PATH,
        entry=list(req.ENTRYPOINT),
    )
    return text.encode()


def source_dir(program: bytes, dest: Path) -> Path:
    """``sourcedir.tar.gz`` with the trial's program, byte for byte the same for the same
    program (no times, no owners): its S3 name is its hash, so it is sent once."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(PROGRAM)
        info.size, info.mode, info.mtime = len(program), 0o644, 0
        tar.addfile(info, io.BytesIO(program))
    with open(dest, "wb") as fh, gzip.GzipFile(fileobj=fh, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw.getvalue())
    return dest


def check_request(request: dict[str, Any], operation: str = "CreateHyperParameterTuningJob"):
    """The request against SageMaker's service model: botocore's own validation (types,
    required members, minimums), then what botocore leaves to the service (enums, maximum
    lengths and sizes, patterns). Raises ``NbscaleError`` naming the member."""
    import botocore.session
    from botocore.exceptions import ParamValidationError
    from botocore.validate import validate_parameters

    model = botocore.session.get_session().get_service_model("sagemaker")
    shape = model.operation_model(operation).input_shape
    try:
        validate_parameters(request, shape)
    except ParamValidationError as exc:
        raise NbscaleError(f"{operation}: {exc}", "a value the AWS API refuses") from None
    problems: list[str] = []
    _walk(request, shape, operation, problems)
    if problems:
        raise NbscaleError(f"{operation}: " + "; ".join(problems), "a value SageMaker refuses")


def _walk(value: Any, shape, where: str, problems: list[str]) -> None:
    meta = shape.metadata
    if shape.type_name == "structure":
        for key, member in shape.members.items():
            if key in value:
                _walk(value[key], member, f"{where}.{key}", problems)
    elif shape.type_name == "list":
        if "max" in meta and len(value) > meta["max"]:
            problems.append(f"{where} has {len(value)} items, at most {meta['max']}")
        for i, item in enumerate(value):
            _walk(item, shape.member, f"{where}[{i}]", problems)
    elif shape.type_name == "map":
        if "max" in meta and len(value) > meta["max"]:
            problems.append(f"{where} has {len(value)} entries, at most {meta['max']}")
        for key, item in value.items():
            _walk(key, shape.key, f"{where} key {key!r}", problems)
            _walk(item, shape.value, f"{where}[{key!r}]", problems)
    elif shape.type_name == "string":
        if shape.enum and value not in shape.enum:
            problems.append(f"{where} is {value!r}, not one of {', '.join(shape.enum)}")
        if "max" in meta and len(value) > meta["max"]:
            problems.append(f"{where} is {len(value)} characters, at most {meta['max']}")
        pattern = meta.get("pattern") and _pattern(meta["pattern"])
        if pattern and not pattern.fullmatch(value):
            problems.append(f"{where} {value!r} does not match {meta['pattern']}")
    elif shape.type_name in ("integer", "long") and "max" in meta and value > meta["max"]:
        problems.append(f"{where} is {value}, at most {meta['max']}")


@functools.cache
def _pattern(text: str):
    """A pattern of the service model (Java syntax): Python's ``re``, else the ``regex``
    package where it is installed (``\\p{...}`` classes), else not checked here."""
    try:
        return re.compile(text)
    except re.error:
        try:
            import regex
        except ImportError:
            return None
        try:
            return regex.compile(text)
        except regex.error:
            return None


def _stamp(value: Any) -> float | None:
    if value is None:
        return None
    return value.timestamp() if hasattr(value, "timestamp") else float(value)


# -- the backend ---------------------------------------------------------------------------
def tuning_config(
    sweep: Any,
    how: tuple[str, str, dict[str, Any] | None],
    ranges: dict[str, Any],
    max_runtime_s: int | None = None,
) -> dict[str, Any]:
    """``HyperParameterTuningJobConfig`` of ``sweep`` from its checked ``strategy(sweep)``
    and ``parameter_ranges(sweep)`` (the tuning job's and a pipeline's Tuning step's)."""
    strat, early, strat_config = how
    limits: dict[str, Any] = {
        "MaxNumberOfTrainingJobs": sweep.trials,
        "MaxParallelTrainingJobs": sweep.parallel,
    }
    if max_runtime_s is not None:
        limits["MaxRuntimeInSeconds"] = max_runtime_s
    config: dict[str, Any] = {
        "Strategy": strat,
        "HyperParameterTuningJobObjective": {
            "Type": "Minimize" if sweep.objective.minimize else "Maximize",
            "MetricName": sweep.objective.metric,
        },
        "ResourceLimits": limits,
        "ParameterRanges": ranges,
        "TrainingJobEarlyStoppingType": early,
    }
    if strat_config:
        config["StrategyConfig"] = strat_config
    if sweep.seed is not None:
        config["RandomSeed"] = int(sweep.seed)
    return config


class TuningSweeps(SweepBackend):
    default_algorithm = "bayesian"  # TPE is no SageMaker strategy
    budget_rule = (
        "the tuning job's MaxRuntimeInSeconds is what the budget buys with every trial running"
    )

    def __init__(self, config, store):
        super().__init__(config, store)
        from .jobs import SageMakerBackend

        self.jobs = SageMakerBackend(config, store)
        self.settings = self.jobs.settings
        self._ended: dict[str, dict[str, Any]] = {}  # DescribeTrainingJob of ended trials
        from ..remote.lifecycle import LogMetrics

        self._log_metrics = LogMetrics()  # the trials' metric lines, read on where they stopped
        self._logs_done: set[str] = set()  # trials whose log was read after they ended

    def client(self, service: str = "sagemaker"):
        return self.jobs.client(service)

    # -- building -------------------------------------------------------------------------
    def _trial_record(self, sweep: SweepSpec, name: str) -> JobRecord:
        """The job every trial runs: the sweep's job with no values of its own (they come
        from hyperparameters.json), as the job backend would record it."""
        spec = sweep.trial_spec(0, {}).replace(name=sweep.name, backend=self.backend)
        return JobRecord(
            id=name,
            name=sweep.name,
            backend=self.backend,
            backend_type="sagemaker",
            status=JOB_PENDING,
            spec=spec.to_dict(),
            created=time.time(),
            info={"phase": "sweep"},
        )

    def _checked(self, sweep: SweepSpec, name: str) -> tuple[JobRecord, tuple]:
        """Every refusal, before anything is uploaded or sent."""
        record = self._trial_record(sweep, name)
        how = strategy(sweep)
        ranges = parameter_ranges(sweep)
        if sweep.algorithm == "grid":
            size = sweep.space.grid_size()
            if sweep.trials < size:
                raise SpecError(
                    "sweep.trials",
                    f"SageMaker's Grid strategy runs every one of the {size} combinations; "
                    f"--trials {sweep.trials} is fewer",
                    f"use --trials {size}, or --algorithm random for {sweep.trials}",
                )
        self.jobs.validate(sweep.trial_spec(0, {}).replace(backend=self.backend))
        return record, (how, ranges)

    def _upload_program(self, program: bytes, upload: bool) -> str:
        store = self.jobs.object_store()
        with tempfile.TemporaryDirectory(prefix="nbscale-sm-sweep-") as tmp:
            path = source_dir(program, Path(tmp) / SOURCEDIR)
            uri = store.base.child("trial", "sha256", storage.sha256_file(path), SOURCEDIR).uri
            if upload:
                from .jobs import put_once

                uri = put_once(store, path, uri, SOURCEDIR, "trial")
        return uri

    def build(
        self,
        sweep: SweepSpec,
        name: str,
        upload: bool,
        env_secret_arn: str | None = None,
    ) -> dict[str, Any]:
        """The exact CreateHyperParameterTuningJob request; with ``upload`` False nothing
        is written anywhere (``--dry-run``)."""
        record, ((strat, early, strat_config), ranges) = self._checked(sweep, name)
        training = self.jobs.training_request(record, upload, env_secret_arn)
        submit_uri = self._upload_program(trial_program(name), upload)
        job_def = definition(training, sweep, submit_uri, self.settings.region)
        resource = training["ResourceConfig"]
        seconds = max_runtime(
            sweep, self.settings, resource["InstanceType"], resource["InstanceCount"]
        )
        config = tuning_config(sweep, (strat, early, strat_config), ranges, seconds)
        tags = {t["Key"]: t["Value"] for t in training.get("Tags", [])}
        for key in ("nbscale:job-id", "nbscale-trial"):
            tags.pop(key, None)
        tags["nbscale:sweep-id"] = sweep.id
        request = {
            "HyperParameterTuningJobName": name,
            "HyperParameterTuningJobConfig": config,
            "TrainingJobDefinition": job_def,
            "Tags": [{"Key": k, "Value": v} for k, v in sorted(tags.items())],
        }
        check_request(request)
        return request

    # -- the role -------------------------------------------------------------------------
    def dry_run(self, sweep: SweepSpec) -> DryRun:
        name = tuning_job_name(sweep)
        request = self.build(sweep, name, upload=False)
        config = request["HyperParameterTuningJobConfig"]
        notes = [
            f"a SageMaker tuning job {name}: {config['Strategy']} search, "
            f"{count(sweep.trials, 'trial')}, {sweep.parallel} at once, early stopping "
            f"{config['TrainingJobEarlyStoppingType']}"
            + (" (Hyperband's own)" if config["Strategy"] == "Hyperband" else ""),
            f"objective: {sweep.objective}; space: {sweep.space}",
            "each trial is the job's CreateTrainingJob request as TrainingJobDefinition; "
            f"SageMaker's training toolkit runs {PROGRAM} (uploaded to "
            f"{request['TrainingJobDefinition']['StaticHyperParameters'][SUBMIT_DIR_PARAM]}), "
            "which runs nbscale's job entry; the trial reads its values with nbscale.param",
            *self._notes(sweep, request),
        ]
        return DryRun([request], "json", notes)

    def _notes(self, sweep: SweepSpec, request: dict[str, Any]) -> list[str]:
        notes = [
            "the inputs would be uploaded to the S3 URIs of InputDataConfig "
            "(content-addressed: those already there are not sent again)"
        ]
        if self.settings.image or sweep.job.image:
            notes.append(
                "with an image of your own, SageMaker starts it with 'train': it must run the "
                "SageMaker training toolkit (as the AWS Deep Learning Containers do), since a "
                "tuning job cannot set the container's entry point"
            )
        if sweep.max_failed:
            notes.append(
                f"SageMaker has no failure limit of its own: while nbscale follows the sweep, "
                f"it stops the tuning job after {count(sweep.max_failed, 'failed trial')}"
            )
        limits = request["HyperParameterTuningJobConfig"]["ResourceLimits"]
        if "MaxRuntimeInSeconds" in limits:
            notes.append(
                f"--max-cost {sweep.max_cost} USD: the tuning job stops after "
                f"{limits['MaxRuntimeInSeconds']} s (every trial at once on the on-demand price)"
            )
        return notes

    def start(self, sweep: SweepSpec, record: SweepRecord) -> SweepRecord:
        self.settings.require_credentials()
        sm = self.client()
        attempt = int(record.info.get("attempt") or 0)
        if record.native_id:  # the same sweep again: follow it while it runs or has ended well
            try:
                found = sm.describe_hyper_parameter_tuning_job(
                    HyperParameterTuningJobName=record.native_id
                )
                if found["HyperParameterTuningJobStatus"] in ("InProgress", "Completed"):
                    return get_sweep(self.store, record.id)
                attempt += 1
            except Exception as exc:  # noqa: BLE001
                if _code(exc) != "ResourceNotFound":
                    from .jobs import client_error

                    raise client_error(exc, "DescribeHyperParameterTuningJob") from None
        name = tuning_job_name(sweep, attempt)
        env_arn = None
        secrets = dict(sweep.job.secret_values)
        try:
            if secrets:
                env_arn = self.jobs._put_env_secret(name, secrets)
            request = self.build(sweep, name, upload=True, env_secret_arn=env_arn)
            answer = sm.create_hyper_parameter_tuning_job(**request)
        except BaseException as exc:
            if env_arn:
                self.jobs._delete_env_secret(env_arn)
            if isinstance(exc, NbscaleError) or not isinstance(exc, Exception):
                raise
            from .jobs import client_error

            raise client_error(exc, "CreateHyperParameterTuningJob") from None
        config = request["HyperParameterTuningJobConfig"]
        update_sweep(
            self.store,
            record.id,
            status=SWEEP_RUNNING,
            native_id=name,
            info_patch={
                "tuning_job_arn": answer["HyperParameterTuningJobArn"],
                "region": self.settings.region,
                "attempt": attempt,
                "strategy": config["Strategy"],
                "early_stopping": config["TrainingJobEarlyStoppingType"],
                "env_secret_arn": env_arn,
                "stop_requested": None,
                "stop_reason": None,
            },
        )
        return get_sweep(self.store, record.id)

    def _trials(self, name: str) -> list[dict[str, Any]]:
        pages = self.client().get_paginator("list_training_jobs_for_hyper_parameter_tuning_job")
        out: list[dict[str, Any]] = []
        for page in pages.paginate(HyperParameterTuningJobName=name):
            out += page.get("TrainingJobSummaries", [])
        return out

    def _describe_trial(self, name: str) -> dict[str, Any]:
        found = self._ended.get(name)
        if found is None:
            found = self.client().describe_training_job(TrainingJobName=name)
            if found.get("TrainingJobStatus") in ("Completed", "Failed", "Stopped"):
                self._ended[name] = found  # what an ended job says does not change
        return found

    def _objective_values(self, sweep: SweepSpec, name: str, ended: bool) -> list[float]:
        """The objective's values the trial has logged so far: its metric lines in its
        CloudWatch streams (the ones SageMaker's regex reads), copied into the trial's job
        folder as the job backend copies a job's (``logs.sync``), so following the trial as
        a job later reads on from there. An ended trial's log is read once more, then not
        again. Nothing when CloudWatch cannot be read now (the next look tries again)."""
        from ... import paths
        from ...runtime.jobdir import JobDir
        from . import logs as cw

        jobdir = JobDir(paths.job_dir(name))
        if name not in self._logs_done:
            procs = int(req.resolve(sweep.job.to_dict(), self.settings).get("procs_per_node") or 1)
            try:
                cw.sync(self.client("logs"), jobdir, name, procs)
            except Exception:  # noqa: BLE001 - the intermediate values wait for the next look
                return self._values(name, jobdir, sweep)
            if ended:
                self._logs_done.add(name)
        return self._values(name, jobdir, sweep)

    def _values(self, name: str, jobdir, sweep: SweepSpec) -> list[float]:
        metric = sweep.objective.metric
        return [
            m["value"]
            for m in self._log_metrics.read(name, jobdir)
            if m["name"] == metric and m["rank"] == 0
        ]

    def _prices(self, sweep: SweepSpec) -> tuple[float, float] | None:
        """USD per instance hour of the sweep's trials: on demand (what SageMaker's billable
        seconds are charged at: a spot job's savings are in its billable time) and what a
        running trial is estimated at (spot's price for a spot sweep); None: no price."""
        from ...cost import node_price, spot_price
        from .request import spot_of

        settings = self.settings.model_dump(exclude_none=True)
        instance = sweep.job.instance_type or self.settings.instance_type
        try:
            on_demand = node_price("sagemaker", settings, instance)
            running = (
                spot_price(on_demand, settings, instance)
                if spot_of(sweep.job.to_dict(), self.settings)
                else on_demand
            )
        except SpecError:
            return None
        return on_demand, running

    def _trial_cost(
        self, s: dict[str, Any], trial: TrialView, sweep: SweepSpec, prices: tuple[float, float]
    ) -> float | None:
        """What the trial has cost: an ended one its ``BillableTimeInSeconds`` x its instances
        x the on-demand price (``DescribeTrainingJob``, once); a running one its time since
        it started training x the sweep's instances x the running price; None before."""
        from ...cost import job_cost

        status = s["TrainingJobStatus"]
        if status in ("Completed", "Failed", "Stopped"):
            try:
                desc = self._describe_trial(s["TrainingJobName"])
            except Exception:  # noqa: BLE001 - no cost rather than a wrong one
                return None
            billable = desc.get("BillableTimeInSeconds")
            if billable is None:
                return None  # SageMaker bills nothing it has not reported (never started)
            count = int((desc.get("ResourceConfig") or {}).get("InstanceCount") or sweep.job.nodes)
            return job_cost(float(billable) / 3600.0, count, prices[0])
        if trial.started is None:
            return None
        return job_cost(max(0.0, time.time() - trial.started) / 3600.0, sweep.job.nodes, prices[1])

    def view(self, record: SweepRecord) -> SweepView:
        from ...sweeps.spec import SweepSpec
        from .jobs import client_error

        sweep = SweepSpec.from_dict(record.spec)
        base = SweepView(
            id=record.id,
            name=record.name,
            backend=record.backend,
            status=record.status,
            objective=str(sweep.objective),
            planned=sweep.trials,
            native_id=record.native_id,
            error=record.error,
            notes=list(record.info.get("notes") or []),
        )
        if not record.native_id:
            return base
        try:
            desc = self.client().describe_hyper_parameter_tuning_job(
                HyperParameterTuningJobName=record.native_id
            )
            summaries = self._trials(record.native_id)
        except Exception as exc:  # noqa: BLE001
            raise client_error(exc, f"following tuning job {record.native_id}") from None
        tuning = desc["HyperParameterTuningJobStatus"]
        config = desc.get("HyperParameterTuningJobConfig") or {}
        early = config.get("Strategy") == "Hyperband" or (
            config.get("TrainingJobEarlyStoppingType") == "Auto"
        )
        stopped_at = record.info.get("stop_requested")
        ordered = sorted(summaries, key=lambda s: _stamp(s.get("CreationTime")) or 0)
        base.trials = [
            self._trial(i + 1, s, sweep, tuning, early, stopped_at) for i, s in enumerate(ordered)
        ]
        prices = self._prices(sweep)
        for s, trial in zip(ordered, base.trials, strict=True):
            if trial.started is not None:  # its instances have printed, or will
                values = self._objective_values(sweep, trial.job_id, trial.ended is not None)
                if values:
                    trial.last, trial.steps = values[-1], len(values)
            if prices is not None:
                trial.cost = self._trial_cost(s, trial, sweep, prices)
        costs = [t.cost for t in base.trials if t.cost is not None]
        if costs:
            base.notes.append(
                f"cost so far ${sum(costs):.2f} for {count(len(costs), 'trial')} (billable "
                "seconds x the instance price; a running trial's time so far)"
            )
        base.status, base.error = self._status(desc, record)
        if base.status in SWEEP_TERMINAL and record.status not in SWEEP_TERMINAL:
            ended = _stamp(desc.get("HyperParameterTuningEndTime")) or time.time()
            update_sweep(self.store, record.id, status=base.status, ended=ended, error=base.error)
            arn = record.info.get("env_secret_arn")
            if arn:
                self.jobs._delete_env_secret(arn)
        return base

    def trial_job(self, record: SweepRecord, trial: TrialView) -> JobRecord | None:
        """The trial as the training job it is: the row ``SageMakerBackend.submit`` would
        have written for it (job id and native id: the training job's name, which the trial
        program passes to the job entry), so that the job backend's ``status`` follows
        DescribeTrainingJob, its CloudWatch streams, and brings ``model.tar.gz`` home when it
        ends. The ``--secret-env`` secret is the sweep's (deleted when the sweep ends): the
        row does not name it, so the job's end does not delete it. None when SageMaker does
        not know the training job."""
        from ... import paths
        from ...errors import NotFound
        from ...runtime.jobdir import JobDir
        from ...store.jobs import get_job
        from ...sweeps.spec import SweepSpec
        from .jobs import client_error

        name = trial.job_id
        if not name:
            return None
        try:
            return get_job(self.store, name)  # followed already: nothing to ask SageMaker
        except NotFound:
            pass
        try:
            desc = self.client().describe_training_job(TrainingJobName=name)
        except Exception as exc:  # noqa: BLE001
            if _code(exc) in ("ResourceNotFound", "ValidationException"):
                return None
            raise client_error(exc, f"DescribeTrainingJob {name}") from None
        sweep = SweepSpec.from_dict(record.spec)
        spec = sweep.trial_spec(trial.number, trial.params).replace(backend=record.backend)
        job_dir = paths.job_dir(name)
        JobDir(job_dir).make()
        resource = desc.get("ResourceConfig") or {}
        started = _stamp(desc.get("TrainingStartTime"))
        return JobRecord(
            id=name,
            name=spec.name,
            backend=record.backend,
            backend_type="sagemaker",
            # the job backend's status moves it on from DescribeTrainingJob
            status=JOB_PENDING if trial.status == PENDING else JOB_RUNNING,
            spec=req.resolve(spec.to_dict(), self.settings),  # the shape the nodes ran
            created=_stamp(desc.get("CreationTime")) or time.time(),
            started=started,
            native_id=name,
            info={
                "job_dir": str(job_dir),
                "phase": "queued",
                "training_job_arn": desc.get("TrainingJobArn"),
                "region": self.settings.region,
                "instance_type": resource.get("InstanceType"),
                "spot": bool(desc.get("EnableManagedSpotTraining")),
                "image": (desc.get("AlgorithmSpecification") or {}).get("TrainingImage"),
                "output_path": (desc.get("OutputDataConfig") or {}).get("S3OutputPath"),
                "env_secret_arn": None,
                "sweep": record.id,
                "trial": trial.number,
                "tuning_job": record.native_id,
            },
        )

    def _status(self, desc: dict[str, Any], record: SweepRecord) -> tuple[str, str | None]:
        tuning = desc["HyperParameterTuningJobStatus"]
        reason = record.info.get("stop_reason")
        if tuning in ("InProgress", "Stopping"):
            return SWEEP_RUNNING, None
        if tuning == "Completed":
            return SWEEP_SUCCEEDED, None
        if tuning == "Failed":
            return SWEEP_FAILED, desc.get("FailureReason") or "the tuning job failed"
        if tuning == "Stopped" and reason:
            return SWEEP_FAILED, reason
        return SWEEP_CANCELLED, "cancelled" if tuning == "Stopped" else f"tuning job {tuning}"

    def _trial(
        self,
        fallback: int,
        s: dict[str, Any],
        sweep: SweepSpec,
        tuning: str,
        early: bool,
        stopped_at: float | None,
    ) -> TrialView:
        name = s["TrainingJobName"]
        found = _TRIAL_NUMBER.search(name)
        number = int(found.group(1)) if found else fallback
        tuned = dict(s.get("TunedHyperParameters") or {})
        try:
            params = {**tuned, **sweep.space.cast(tuned)}
        except (SpecError, ValueError):
            params = tuned
        metric = s.get("FinalHyperParameterTuningJobObjectiveMetric") or {}
        value = metric.get("Value")
        value = float(value) if value is not None and math.isfinite(float(value)) else None
        started, ended = _stamp(s.get("TrainingStartTime")), _stamp(s.get("TrainingEndTime"))
        trial = TrialView(
            number=number,
            params=params,
            status=RUNNING,
            job_id=name,
            started=started,
            ended=ended,
            steps=1 if value is not None else 0,
            last=value,
        )
        status = s["TrainingJobStatus"]
        if status == "InProgress":
            trial.status = RUNNING if started is not None else PENDING
        elif status == "Stopping":
            trial.status = RUNNING
        elif status == "Completed":
            if value is None:
                trial.status = FAILED
                trial.error = (
                    f"it completed without logging {sweep.objective.metric} (nbscale.log_metric)"
                )
            else:
                trial.status, trial.value = SUCCEEDED, value
        elif status == "Failed":
            trial.status = FAILED
            trial.error = s.get("FailureReason") or "the training job failed"
        elif status == "Stopped":
            trial.status, trial.error = self._stopped(s, tuning, early, stopped_at)
        else:  # Deleting, or a status added after this code
            trial.status, trial.error = CANCELLED, f"training job {status}"
        return trial

    def _stopped(
        self, s: dict[str, Any], tuning: str, early: bool, stopped_at: float | None
    ) -> tuple[str, str | None]:
        """Who stopped it: its own time limit (FAILED), the sweep being stopped (CANCELLED),
        or SageMaker's early stopping (PRUNED)."""
        from .states import map_state

        end = _stamp(s.get("TrainingEndTime"))
        if tuning in ("Stopping", "Stopped") and (
            stopped_at is None or end is None or end >= stopped_at
        ):
            return CANCELLED, "the sweep was stopped"
        try:
            desc = self._describe_trial(s["TrainingJobName"])
        except Exception:  # noqa: BLE001 - the summary alone then
            desc = {"TrainingJobStatus": "Stopped", "SecondaryStatus": "Stopped"}
        mapped = map_state(desc)
        if mapped.status == "FAILED":  # MaxRuntimeExceeded, MaxWaitTimeExceeded
            return FAILED, mapped.error
        if early:
            return PRUNED, "stopped early by SageMaker"
        return CANCELLED, "its training job was stopped"

    def cancel(self, record: SweepRecord, reason: str | None = None) -> None:
        if not record.native_id or record.terminal:
            return
        update_sweep(
            self.store,
            record.id,
            info_patch={"stop_requested": time.time(), "stop_reason": reason},
        )
        try:
            self.client().stop_hyper_parameter_tuning_job(
                HyperParameterTuningJobName=record.native_id
            )
        except Exception as exc:  # noqa: BLE001
            if _code(exc) != "ValidationException":  # it had ended already
                from .jobs import client_error

                raise client_error(exc, f"StopHyperParameterTuningJob {record.native_id}") from None

    def drive(self, sweep, record, jobs=None, on_update=None, poll=None, timeout=None):
        """Follow the tuning job until it ends; more than ``max_failed`` failed trials stop
        it (SageMaker has no such limit)."""
        poll = self.settings.poll_seconds if poll is None else poll
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            record = get_sweep(self.store, record.id)
            view = self.view(record)
            failed = view.counts().get(FAILED, 0)
            stop = not record.info.get("stop_requested")
            if view.status == SWEEP_RUNNING and failed > sweep.max_failed and stop:
                why = (
                    f"{count(failed, 'trial')} failed, more than --max-failed "
                    f"{sweep.max_failed}: the sweep was stopped"
                )
                print(f"nbscale: {why}", file=sys.stderr, flush=True)
                self.cancel(record, reason=why)
            if on_update is not None:
                on_update(view)
            if view.status != SWEEP_RUNNING:
                return view
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"sweep {record.id} is still running after {timeout:g} s")
            time.sleep(poll)


def _code(exc: Exception) -> str:
    with contextlib.suppress(AttributeError):
        return exc.response.get("Error", {}).get("Code", "")  # type: ignore[attr-defined]
    return ""


__all__ = ["TuningSweeps", "check_request", "parameter_ranges", "strategy", "tuning_job_name"]
