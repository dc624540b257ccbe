"""Sweeps on Kubeflow: one Katib ``Experiment`` (``kubeflow.org/v1beta1``) per sweep.

The Experiment carries the objective, the algorithm, the trial budget and the search space
(``feasibleSpace``); its trial template is the Trainer ``TrainJob`` the job backend builds
for the sweep's job (``KubeflowBackend.plan``), so every trial runs distributed, as a job
does. Katib fills the template in for each trial by replacing ``${trialParameters.NAME}``
in its text: the trainer gets ``NBSCALE_PARAM_<name>`` (what ``nbscale.param`` reads) and
the trial's own name (its job id, its outputs folder). ``log_metric`` prints
``nbscale-metric NAME=VALUE`` inside a trial (``nbscale.sweeps.lines``), which Katib's
StdOut collector reads with ``KATIB_FILTER``; the objective is each trial's last value
(metric strategy ``latest``), as on every nbscale backend.

- ``start``: the signing keys' Secret (as jobs make it), the code in object storage, the
  Experiment, and the bundle ConfigMap (owned by the Experiment) when the code is small;
- ``view``: the Experiment's conditions and its Trial objects (``parameterAssignments``,
  conditions, ``status.observation.metrics``); each trial's cost is its running time (from
  its Trial's ``startTime`` to its ``completionTime``, or now) x the trial job's nodes x the
  price of one (``nbscale.cost.spec_price``);
- ``drive``: follows the Experiment until it ends; with ``max_cost``, once the trials' spend
  reaches it, Katib is told to start no more: the Experiment's ``maxTrialCount`` goes down
  to one more than the Trials it has made, the least its webhook admits on a running
  Experiment (``parallelTrialCount`` and ``maxFailedTrialCount`` with it where they would
  be over it), so at most one more trial starts, the running ones finish, and the sweep
  ends when they have (Katib's MaxTrialsReached);
- ``cancel``: the Experiment is deleted; the garbage collector takes its Trials and their
  TrainJobs;
- ``trial_job``: a trial (the best one, for ``--outputs``) as a job row the job backend
  follows: its TrainJob, named after the Trial and kept after it ends (``retain``), its
  pods' logs and its outputs folder ``jobs/<trial>/outputs``. A trial whose TrainJob Katib
  deleted (an Experiment that did not retain it) gets an ended row, its outputs collected
  from object storage.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ...cost import job_cost, spec_price
from ...errors import NbscaleError, SpecError
from ...specs import JobSpec
from ...store.jobs import CANCELLED as JOB_CANCELLED
from ...store.jobs import FAILED as JOB_FAILED
from ...store.jobs import PENDING as JOB_PENDING
from ...store.jobs import RUNNING as JOB_RUNNING
from ...store.jobs import SUCCEEDED as JOB_SUCCEEDED
from ...store.jobs import JobRecord
from ...store.sweeps import CANCELLED as SWEEP_CANCELLED
from ...store.sweeps import FAILED as SWEEP_FAILED
from ...store.sweeps import RUNNING as SWEEP_RUNNING
from ...store.sweeps import SUCCEEDED as SWEEP_SUCCEEDED
from ...store.sweeps import SweepRecord, get_sweep, update_sweep
from ...sweeps.lines import KATIB_FILTER
from ...sweeps.params import PER_NAME_PREFIX
from ...sweeps.spec import PARAMS_ENV
from ...words import count
from ..base import DryRun
from ..sweep_base import (
    CANCELLED,
    FAILED,
    PENDING,
    PRUNED,
    RUNNING,
    SUCCEEDED,
    TRIAL_TERMINAL,
    SweepBackend,
    SweepView,
    TrialView,
)
from . import manifests as mf
from .cluster import api_error, is_status

if TYPE_CHECKING:
    from ...sweeps.space import Param
    from ...sweeps.spec import SweepSpec
    from ..sweep_base import JobAPI
    from .jobs import KubeflowBackend

KATIB_GROUP = "kubeflow.org"
KATIB_VERSION = "v1beta1"
EXPERIMENTS = "experiments"
TRIALS = "trials"
#: the label Katib puts on each Trial of an Experiment
EXPERIMENT_LABEL = "katib.kubeflow.org/experiment"
SWEEP_ANNOTATION = "nbscale.io/sweep-id"
#: nbscale's algorithm -> Katib's suggestion algorithm (katib-config ``suggestions``)
ALGORITHMS = {
    "tpe": "tpe",
    "random": "random",
    "grid": "grid",
    "bayesian": "bayesianoptimization",
}
#: nbscale's pruner -> Katib's early stopping algorithm (None: no early stopping)
PRUNERS = {"median": "medianstop", "none": None}
#: ``sweep.settings`` a Katib sweep understands -> the medianstop setting it becomes
MEDIAN_SETTINGS = {"startup_trials": "min_trials_required", "warmup_steps": "start_step"}
#: the trial parameter Katib fills with the Trial's name (its TrainJob is named so)
TRIAL_NAME_PARAM = "nbscale-trial-name"


def placeholder(name: str) -> str:
    """What Katib replaces with a trial's value of trial parameter ``name``."""
    return "${trialParameters." + name + "}"


TRIAL_NAME = placeholder(TRIAL_NAME_PARAM)
#: stands for the trial's name while the job backend builds the template
_TOKEN = "nbscale-katib-trial"
#: how Katib reads a TrainJob's outcome (gjson, as its own TrainJob defaults)
SUCCESS_CONDITION = 'status.conditions.#(type=="Complete")#|#(status=="True")#'
FAILURE_CONDITION = 'status.conditions.#(type=="Failed")#|#(status=="True")#'
#: the pod whose primary container's output Katib's collector reads: node 0
PRIMARY_POD_LABELS = {
    "jobset.sigs.k8s.io/replicatedjob-name": mf.NODE,
    "batch.kubernetes.io/job-completion-index": "0",
}
UNAVAILABLE = "unavailable"  # Katib's value of a metric never reported
_NAME_MAX = 40  # Katib's webhook refuses longer Experiment names


def experiment_name(sweep: SweepSpec) -> str:
    """A valid Katib Experiment name (``^[a-z]([-a-z0-9]*[a-z0-9])?$``, at most 40), the
    same for the same sweep: its name, cut, and its key."""
    base = re.sub(r"[^a-z0-9-]+", "-", sweep.name.lower())
    base = re.sub(r"-+", "-", base).lstrip("-0123456789")
    base = base[: _NAME_MAX - len(sweep.key) - 1].rstrip("-") or "sweep"
    return f"{base}-{sweep.key}"


def _number(value: float | int, kind: str) -> str:
    return str(int(value)) if kind == "int" else repr(float(value))


def check_sweep(sweep: SweepSpec) -> list[str]:
    """Refuse what Katib cannot run as asked (one ``SpecError``); return notes on how Katib
    will run what it can."""
    notes: list[str] = []
    if sweep.algorithm not in ALGORITHMS:
        raise SpecError(
            "sweep.algorithm",
            f"Katib has no algorithm for {sweep.algorithm!r}",
            f"on a kubeflow backend use one of {', '.join(ALGORITHMS)}",
        )
    if sweep.pruner not in PRUNERS:
        raise SpecError(
            "sweep.pruner",
            f"Katib has no early stopping like {sweep.pruner!r} (only medianstop)",
            "use --pruner median or --pruner none on a kubeflow backend, "
            "or run the sweep on a local backend",
        )
    unknown = sorted(set(sweep.settings) - set(MEDIAN_SETTINGS))
    if unknown:
        raise SpecError(
            "sweep.settings",
            f"{unknown[0]!r} is not a setting of Katib sweeps",
            f"known: {', '.join(sorted(MEDIAN_SETTINGS))}",
        )
    for name, value in sweep.settings.items():
        if sweep.pruner == "none":
            raise SpecError(
                f"sweep.settings.{name}",
                "only the median pruner uses it, and this sweep has --pruner none",
                "drop the setting or use --pruner median",
            )
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SpecError(
                f"sweep.settings.{name}",
                f"Katib's medianstop needs a whole number >= 1, got {value!r}",
            )
    for p in sweep.space.params:
        where = f"sweep.{p.name}"
        if p.kind == "categorical":
            texts = [str(c) for c in p.choices]
            bad = [t for t in texts if re.search(r'["\\\x00-\x1f]|\$\{', t)]
            if bad:
                raise SpecError(
                    where,
                    f"Katib pastes each value into the trial's manifest as text, and {bad[0]!r} "
                    "holds a quote, a backslash, a control character or '${'",
                    "use plain words or numbers",
                )
            if len(set(texts)) != len(texts):
                raise SpecError(
                    where,
                    f"Katib hands values over as text, and {p.choices} has two that read the same",
                    "make every choice read differently",
                )
        if sweep.algorithm == "bayesian":
            if p.kind == "float" and p.low <= 0:
                raise SpecError(
                    where,
                    "Katib's bayesianoptimization samples every double on a log scale, "
                    f"which needs low > 0, got {p.low}",
                    "shift the range above 0, or use --algorithm tpe or random",
                )
            if p.kind == "float" and not p.log:
                notes.append(
                    f"{p.name}: Katib's bayesianoptimization samples a double on a log scale"
                )
            if p.kind == "int" and (p.log or p.step not in (None, 1)):
                notes.append(
                    f"{p.name}: Katib's bayesianoptimization samples every whole number in "
                    f"{p.low}..{p.high} evenly (no log scale, no step)"
                )
    return notes


#: the least running time a trial's share of the budget may buy
MIN_TRIAL_S = 60


@dataclasses.dataclass(frozen=True)
class BudgetPlan:
    """How ``max_cost`` holds with no one following the sweep: Katib starts at most
    ``max_trials`` and each trial's TrainJob runs at most ``runtime`` s (None: its own
    ``--max-runtime``), so the trials together cannot cost more."""

    max_trials: int
    runtime: int | None
    note: str


def budget_plan(sweep: SweepSpec, price: float | None) -> BudgetPlan | None:
    """The up-front cap for a sweep with ``max_cost`` (None without one), at ``price`` USD
    per node hour. A trial costs at most its max runtime x nodes x price: with
    ``--max-runtime`` the Experiment's ``maxTrialCount`` is the trials the budget pays for;
    without, each trial's TrainJob gets its share of the budget as its deadline
    (``activeDeadlineSeconds``). What the budget cannot pay for at all is refused."""
    if sweep.max_cost is None:
        return None
    budget = f"--max-cost ${sweep.max_cost:.2f}"
    if price == 0:
        free = f"{budget}: the nodes are priced at $0, so no trial spends any of it"
        return BudgetPlan(sweep.trials, None, free)
    if price is None:
        raise SpecError(
            "max_cost",
            "no price is known for the sweep's nodes, so the budget cannot be held",
            "set price_per_node_hour (or node_hour_price and gpu_hour_price) in the "
            "backend's table",
        )
    nodes = max(1, int(sweep.job.nodes or 1))
    runtime = sweep.job.max_runtime
    if runtime:
        per_trial = runtime / 3600.0 * nodes * price
        affordable = int(sweep.max_cost / per_trial + 1e-9)
        if affordable < 1:
            raise SpecError(
                "max_cost",
                f"one trial may cost ${per_trial:.2f} ({runtime} s on {nodes} node(s) at "
                f"${price:g} per node hour), more than the sweep's budget",
                "raise --max-cost or lower --max-runtime",
            )
        trials = min(sweep.trials, affordable)
        return BudgetPlan(
            trials,
            None,
            f"{budget}: Katib starts at most {count(trials, 'trial')} (maxTrialCount), each "
            f"at most ${per_trial:.2f} ({runtime} s on {nodes} node(s)), whether or not "
            "nbscale follows the sweep",
        )
    share = int(sweep.max_cost / (sweep.trials * nodes * price) * 3600 + 1e-6)
    if share < MIN_TRIAL_S:
        raise SpecError(
            "max_cost",
            f"{budget} buys each of the {sweep.trials} trials {share} s on {nodes} node(s) "
            f"at ${price:g} per node hour, less than {MIN_TRIAL_S} s",
            "raise --max-cost or lower --trials",
        )
    return BudgetPlan(
        sweep.trials,
        share,
        f"{budget}: no --max-runtime bounds a trial, so each trial's TrainJob runs at most "
        f"{share} s (its share of the budget: {count(sweep.trials, 'trial')} on "
        f"{nodes} node(s) at ${price:g} per node hour), whether or not nbscale follows the "
        "sweep; give --max-runtime to bound trials by time instead",
    )


def parameter(p: Param, grid: bool) -> dict[str, Any]:
    """A Katib ``ParameterSpec`` with its ``feasibleSpace``."""
    if p.kind == "categorical":
        return {
            "name": p.name,
            "parameterType": "categorical",
            "feasibleSpace": {"list": [str(c) for c in p.choices]},
        }
    space: dict[str, Any] = {"min": _number(p.low, p.kind), "max": _number(p.high, p.kind)}
    step = p.step if p.step is not None else (1 if grid and p.kind == "int" else None)
    if step is not None:  # Katib's grid steps through an int by its step: it must be there
        space["step"] = _number(step, p.kind)
    if p.log:
        space["distribution"] = "logUniform"
    return {
        "name": p.name,
        "parameterType": "int" if p.kind == "int" else "double",
        "feasibleSpace": space,
    }


def trial_template_spec(sweep: SweepSpec) -> JobSpec:
    """The job every trial runs: the sweep's trial job without values of its own
    (``NBSCALE_PARAMS`` would fix them; Katib's come as ``NBSCALE_PARAM_<name>``)."""
    spec = sweep.trial_spec(0, {})
    env = {k: v for k, v in spec.env.items() if k != PARAMS_ENV}
    tags = {k: v for k, v in spec.tags.items() if k != "nbscale-trial"}
    return spec.replace(name=sweep.name, env=env, tags=tags)


def template_of(trainjob: dict[str, Any]) -> dict[str, Any]:
    """A TrainJob built for the job id ``_TOKEN`` as Katib's trial template: no name or
    namespace (Katib sets them), the trial's name where the job id was."""
    body = json.loads(json.dumps(trainjob))
    body["metadata"].pop("name", None)
    body["metadata"].pop("namespace", None)
    return json.loads(json.dumps(body).replace(_TOKEN, TRIAL_NAME))


def experiment(
    sweep: SweepSpec,
    trainjob: dict[str, Any],
    name: str,
    namespace: str,
    labels: dict[str, str],
    annotations: dict[str, str],
    max_trials: int | None = None,
) -> dict[str, Any]:
    """The Experiment of ``sweep`` around ``trainjob`` (built for the job id ``_TOKEN``);
    ``max_trials``: fewer trials than ``--trials``, what the budget pays for."""
    trials = min(sweep.trials, max_trials or sweep.trials)
    template = template_of(trainjob)
    trainer = template["spec"]["trainer"]
    names = {e["name"] for e in trainer["env"]}
    for p in sweep.space.params:
        var = f"{PER_NAME_PREFIX}{p.name}"
        if var in names:
            raise SpecError("sweep", f"{var} is set by nbscale itself for parameter {p.name}")
        trainer["env"].append({"name": var, "value": placeholder(p.name)})
    objective = sweep.objective
    spec: dict[str, Any] = {
        "objective": {
            "type": "minimize" if objective.minimize else "maximize",
            "objectiveMetricName": objective.metric,
            # the objective is a trial's last value, as on every nbscale backend
            "metricStrategies": [{"name": objective.metric, "value": "latest"}],
        },
        "algorithm": {"algorithmName": ALGORITHMS[sweep.algorithm]},
        "parallelTrialCount": min(sweep.parallel, trials),
        "maxTrialCount": trials,
        # Katib fails the Experiment when this many trials failed; --max-failed is how
        # many may fail while the sweep goes on (at most every trial)
        "maxFailedTrialCount": min(sweep.max_failed + 1, trials),
        "parameters": [parameter(p, sweep.algorithm == "grid") for p in sweep.space.params],
        "metricsCollectorSpec": {
            "collector": {"kind": "StdOut"},
            "source": {"filter": {"metricsFormat": [KATIB_FILTER]}},
        },
        "trialTemplate": {
            # Katib deletes a finished trial's job unless it is retained: kept, a trial
            # (the best one above all) can be followed as a job, its pods' logs and its
            # outputs brought home (``KatibSweeps.trial_job``); they go with the Experiment
            "retain": True,
            "primaryContainerName": mf.NODE,
            "primaryPodLabels": dict(PRIMARY_POD_LABELS),
            "successCondition": SUCCESS_CONDITION,
            "failureCondition": FAILURE_CONDITION,
            "trialParameters": [
                {
                    "name": TRIAL_NAME_PARAM,
                    "description": "the Trial's name: its TrainJob's name and nbscale job id",
                    "reference": "${trialSpec.Name}",
                },
                *(
                    {"name": p.name, "description": str(p), "reference": p.name}
                    for p in sweep.space.params
                ),
            ],
            "trialSpec": template,
        },
    }
    if sweep.seed is not None:
        spec["algorithm"]["algorithmSettings"] = [
            {"name": "random_state", "value": str(sweep.seed)}
        ]
    early = PRUNERS[sweep.pruner]
    if early:
        spec["earlyStopping"] = {"algorithmName": early}
        if sweep.settings:
            spec["earlyStopping"]["algorithmSettings"] = [
                {"name": MEDIAN_SETTINGS[k], "value": str(v)}
                for k, v in sorted(sweep.settings.items())
            ]
    return {
        "apiVersion": f"{KATIB_GROUP}/{KATIB_VERSION}",
        "kind": "Experiment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": {**annotations, SWEEP_ANNOTATION: sweep.id},
        },
        "spec": spec,
    }


def _time(value: Any) -> float | None:
    if not value:
        return None
    try:
        return datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _true(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The object's conditions whose status is True, by type."""
    conds = (obj.get("status") or {}).get("conditions") or []
    return {c.get("type"): c for c in conds if str(c.get("status")) == "True"}


def _message(cond: dict[str, Any]) -> str:
    return f"{cond.get('reason') or cond.get('type')}: {cond.get('message') or ''}".rstrip(": ")


def _float(text: Any) -> float | None:
    if text in (None, "", UNAVAILABLE):
        return None
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def trial_view(number: int, trial: dict[str, Any], sweep: SweepSpec) -> TrialView:
    """One Katib Trial as nbscale shows it."""
    conds = _true(trial)
    error = None
    if "Killed" in conds:
        status = CANCELLED
    elif "Failed" in conds:
        status, error = FAILED, _message(conds["Failed"])
    elif "Succeeded" in conds:
        status = SUCCEEDED
    elif "EarlyStopped" in conds:
        status = PRUNED
    elif "MetricsUnavailable" in conds:  # ended without the objective: failed, not scored 0
        status = FAILED
        error = (
            f"it never printed the objective {sweep.objective.metric} "
            f"({_message(conds['MetricsUnavailable'])}): call nbscale.log_metric"
            f"({sweep.objective.metric!r}, value) in the trial"
        )
    elif "Running" in conds:
        status = RUNNING
    else:
        status = PENDING
    raw = {
        a.get("name"): a.get("value")
        for a in (trial.get("spec") or {}).get("parameterAssignments") or []
    }
    params: dict[str, Any] = {}
    for name, value in raw.items():
        try:
            params[name] = sweep.space[name].cast(value)
        except (KeyError, ValueError, SpecError):
            params[name] = value
    st = trial.get("status") or {}
    latest = None
    for metric in (st.get("observation") or {}).get("metrics") or []:
        if metric.get("name") == sweep.objective.metric:
            latest = _float(metric.get("latest"))
    return TrialView(
        number=number,
        params=params,
        status=status,
        value=latest if status == SUCCEEDED else None,
        last=latest,
        steps=0 if latest is None else 1,  # Katib keeps the values in its DB, not the Trial
        job_id=trial["metadata"]["name"],
        started=_time(st.get("startTime")) or _time(trial["metadata"].get("creationTimestamp")),
        ended=_time(st.get("completionTime")),
        error=error,
    )


def trial_cost(trial: TrialView, nodes: int, price: float) -> float | None:
    """USD a trial has cost: its running time x ``nodes`` x ``price`` (per node hour); None
    for one not started (no Running yet: Katib has not made its job)."""
    if trial.status == PENDING or trial.duration is None:
        return None
    return job_cost(max(0.0, trial.duration) / 3600.0, nodes, price)


def budget_limits(exp: dict[str, Any], made: int) -> dict[str, int]:
    """The spec fields that stop Katib starting trials once ``made`` Trials are there: its
    webhook admits no ``maxTrialCount`` at or below ``status.trials`` on an edit, so one more
    than the Trials made; ``parallelTrialCount`` and ``maxFailedTrialCount`` may not be over
    it. Only what must change (empty: Katib stops there already)."""
    spec = exp.get("spec") or {}
    made = max(made, int((exp.get("status") or {}).get("trials") or 0))
    limit = made + 1
    current = spec.get("maxTrialCount")
    if current is not None and current <= limit:
        return {}
    patch = {"maxTrialCount": limit}
    for key in ("parallelTrialCount", "maxFailedTrialCount"):
        if spec.get(key) is not None and spec[key] > limit:
            patch[key] = limit
    return patch


def sweep_status(exp: dict[str, Any]) -> tuple[str, str | None]:
    """The sweep's status from the Experiment's conditions, and why it failed."""
    conds = _true(exp)
    if "Failed" in conds:
        return SWEEP_FAILED, _message(conds["Failed"])
    if "Succeeded" in conds:
        return SWEEP_SUCCEEDED, None
    return SWEEP_RUNNING, None


class KatibSweeps(SweepBackend):
    """A sweep as one Katib Experiment on the backend's cluster."""

    budget_rule = (
        "each trial's TrainJob is stopped (activeDeadlineSeconds) once it has spent its share "
        "of the budget"
    )

    type = "kubeflow"

    def __init__(self, config, store):
        super().__init__(config, store)
        from .jobs import KubeflowBackend

        self.jobs: KubeflowBackend = KubeflowBackend(config, store)
        self.settings = self.jobs.settings
        from ..remote.lifecycle import LogMetrics

        self._log_metrics = LogMetrics()  # the trials' metric lines, read on where they stopped
        self._logs_done: set[str] = set()  # trials whose log was read after they ended

    def cluster(self):
        return self.jobs.cluster()

    def check(self) -> dict[str, Any]:
        try:
            cluster = self.cluster()
        except NbscaleError as exc:
            return {"reachable": False, "detail": str(exc)}
        return cluster.probe(KATIB_GROUP, KATIB_VERSION, EXPERIMENTS, "Katib")

    # -- building ---------------------------------------------------------------------
    def _template_record(
        self, sweep: SweepSpec, name: str, plan: BudgetPlan | None = None
    ) -> JobRecord:
        from ... import paths

        spec = trial_template_spec(sweep).replace(backend=self.config.name)
        if plan is not None and plan.runtime is not None:  # the trial's share of the budget
            spec = spec.replace(max_runtime=plan.runtime)
        return JobRecord(
            id=name,  # the Experiment's: the bundle ConfigMap all trials mount is named so
            name=spec.name,
            backend=self.config.name,
            backend_type=self.type,
            status=JOB_PENDING,
            spec=spec.to_dict(),
            created=time.time(),
            info={
                "job_dir": str(paths.job_dir(name)),
                "phase": "sweep template",
                "max_trials": plan.max_trials if plan is not None else None,
            },
        )

    def _checked(self, sweep: SweepSpec) -> tuple[JobRecord, list[str]]:
        """Every refusal, before anything is sent or uploaded: the record the job backend
        builds the trial template from, and notes on how Katib runs the sweep."""
        notes = check_sweep(sweep)
        if sweep.job.entry.kind == "notebook":
            notes.append(
                "a notebook's papermill parameters are not filled in by Katib: read the "
                "values with nbscale.param(name) in the notebook"
            )
        plan = budget_plan(sweep, self.node_price(sweep)) if sweep.max_cost is not None else None
        if plan is not None:
            notes.append(plan.note)
            notes.append(
                "while nbscale follows the sweep it also adds up what the trials have cost, and "
                "lowers maxTrialCount once that reaches the budget"
            )
        record = self._template_record(sweep, experiment_name(sweep), plan)
        if _TOKEN in json.dumps(record.spec):
            raise SpecError("sweep", f"the job may not contain the text {_TOKEN!r}")
        spec = JobSpec.from_dict(record.spec)
        self.jobs.check_resources(spec)
        self.jobs.validate(spec)
        mf.check_labels("labels", {**self.settings.labels, **mf.MANAGED})
        return record, notes

    def plan(
        self, sweep: SweepSpec, upload: bool
    ) -> tuple[dict[str, Any], mf.Staged, bytes | None, list[str]]:
        """(Experiment, staged inputs, bundle ConfigMap bytes, notes); with ``upload``
        False nothing is written anywhere."""
        record, notes = self._checked(sweep)
        return (*self._build(sweep, record, upload), notes)

    def _build(
        self, sweep: SweepSpec, record: JobRecord, upload: bool
    ) -> tuple[dict[str, Any], mf.Staged, bytes | None]:
        staged, data, _ = self.jobs.plan(record, upload)  # the code staged as for a job
        outputs = self.jobs.object_store().base.child("jobs", _TOKEN, "outputs").uri
        staged_trial = dataclasses.replace(staged, job_id=_TOKEN, outputs_uri=outputs)
        namespace = self.cluster().namespace if upload else self.jobs._dry_namespace()
        resolved = mf.resolve(record.spec, self.settings)
        trainjob = mf.trainjob(_TOKEN, resolved, self.settings, staged_trial, namespace)
        labels = {**self.settings.labels, **mf.MANAGED}
        body = experiment(
            sweep,
            trainjob,
            record.id,
            namespace,
            labels,
            dict(self.settings.annotations),
            max_trials=record.info.get("max_trials"),
        )
        return body, staged, data

    def dry_run(self, sweep: SweepSpec) -> DryRun:
        """The Experiment (and the bundle ConfigMap) ``start`` would create, as YAML; the
        key Secret is named in a note, never shown."""
        body, staged, data, notes = self.plan(sweep, upload=False)
        namespace = body["metadata"]["namespace"]
        objects = [body]
        if data is not None:
            objects.append(
                mf.bundle_configmap(
                    body["metadata"]["name"], data, namespace, key=staged.configmap_key
                )
            )
        key_secret = mf.key_secret(staged.key_secret, "{}", namespace)  # this user's own
        head = [
            f"a sweep of {count(sweep.trials, 'trial')} on {self.backend}: Katib "
            f"{ALGORITHMS[sweep.algorithm]}, {sweep.parallel} at once, early stopping "
            f"{PRUNERS[sweep.pruner] or 'none'}",
            f"objective: {sweep.objective}; space: {sweep.space}",
            "each trial is the TrainJob in spec.trialTemplate with Katib's values in "
            f"{PER_NAME_PREFIX}<name>",
        ]
        return DryRun(
            objects,
            "yaml",
            [
                *head,
                *notes,
                *self.jobs.travel_notes(trial_template_spec(sweep).to_dict()),
                mf.secret_note(key_secret, "the signing keys"),
            ],
        )

    # -- running ----------------------------------------------------------------------
    def _api(self):
        return self.cluster().custom()

    def start(self, sweep: SweepSpec, record: SweepRecord) -> SweepRecord:
        cluster = self.cluster()
        template, notes = self._checked(sweep)  # every refusal comes before anything is sent
        self.jobs.ensure_key_secret(per_user=True)  # the Secret the trials' pods mount
        body, staged, data = self._build(sweep, template, upload=True)
        name = body["metadata"]["name"]
        try:
            created = self._api().create_namespaced_custom_object(
                KATIB_GROUP, KATIB_VERSION, cluster.namespace, EXPERIMENTS, body
            )
        except Exception as exc:  # noqa: BLE001
            err = api_error(exc, f"creating Katib Experiment {name}", cluster)
            if not is_status(err, 409):
                if is_status(err, 404):
                    raise NbscaleError(
                        f"{err}",
                        "Katib is not installed in this cluster (no kubeflow.org/v1beta1 "
                        "experiments): install it, or run the sweep on another backend",
                    ) from None
                raise err from None
            created = self._get(name, cluster.namespace)  # the same sweep, run again
            if (
                created is None
                or (created["metadata"].get("annotations") or {}).get(SWEEP_ANNOTATION) != sweep.id
            ):
                raise err from None
            notes.append(f"Experiment {name} was already on the cluster: following it")
        if data is not None:
            cm = mf.bundle_configmap(
                name,
                data,
                cluster.namespace,
                owner=mf.owner_reference(created),
                key=staged.configmap_key,
            )
            try:
                cluster.core().create_namespaced_config_map(cluster.namespace, cm)
            except Exception as exc:  # noqa: BLE001
                err = api_error(exc, f"creating ConfigMap {cm['metadata']['name']}", cluster)
                if not is_status(err, 409):
                    with contextlib.suppress(NbscaleError):
                        self._delete(name, cluster.namespace)
                    raise err from None
        outputs = staged.outputs_uri.replace(f"/jobs/{name}/", "/jobs/{trial}/")
        update_sweep(
            self.store,
            record.id,
            native_id=name,
            info_patch={
                "namespace": cluster.namespace,
                "context": cluster.context,
                "outputs_uri": outputs,  # {trial}: the Trial's name
                "configmap": staged.configmap,
                "notes": notes,
            },
        )
        return get_sweep(self.store, record.id)

    def _get(self, name: str, namespace: str) -> dict[str, Any] | None:
        cluster = self.cluster()
        try:
            return self._api().get_namespaced_custom_object(
                KATIB_GROUP, KATIB_VERSION, namespace, EXPERIMENTS, name
            )
        except Exception as exc:  # noqa: BLE001
            err = api_error(exc, f"reading Katib Experiment {name}", cluster)
            if is_status(err, 404):
                return None
            raise err from None

    def trials(self, name: str, namespace: str, uid: str | None = None) -> list[dict[str, Any]]:
        """The Experiment's Trials, oldest first."""
        cluster = self.cluster()
        found = cluster.call(
            f"listing the Trials of {name}",
            self._api().list_namespaced_custom_object,
            KATIB_GROUP,
            KATIB_VERSION,
            namespace,
            TRIALS,
            label_selector=f"{EXPERIMENT_LABEL}={name}",
        )

        def mine(t: dict[str, Any]) -> bool:
            meta = t.get("metadata") or {}
            if (meta.get("labels") or {}).get(EXPERIMENT_LABEL) != name:
                return False
            owners = meta.get("ownerReferences") or []
            return uid is None or not owners or any(o.get("uid") == uid for o in owners)

        items = [t for t in found.get("items") or [] if mine(t)]
        return sorted(
            items,
            key=lambda t: (t["metadata"].get("creationTimestamp") or "", t["metadata"]["name"]),
        )

    def view(self, record: SweepRecord) -> SweepView:
        from ...sweeps.spec import SweepSpec

        sweep = SweepSpec.from_dict(record.spec)
        namespace = record.info.get("namespace") or self.cluster().namespace
        name = record.native_id or experiment_name(sweep)
        notes = list(record.info.get("notes") or [])
        exp = self._get(name, namespace)
        trials: list[TrialView] = []
        error = record.error
        if exp is None:
            status = record.status if record.terminal else SWEEP_FAILED
            if not record.terminal:
                error = f"Katib Experiment {name} was deleted outside nbscale"
        else:
            status, error = sweep_status(exp)
            if record.status == SWEEP_CANCELLED:
                status = SWEEP_CANCELLED
            items = self.trials(name, namespace, exp["metadata"].get("uid"))
            trials = [trial_view(i, t, sweep) for i, t in enumerate(items)]
            self._intermediate(record, sweep, trials, namespace)
            price = self.node_price(sweep)
            if price is not None:
                for t in trials:
                    t.cost = trial_cost(t, sweep.job.nodes, price)
                costs = [t.cost for t in trials if t.cost is not None]
                if costs:
                    notes.append(
                        f"cost so far ${sum(costs):.2f} for {count(len(costs), 'trial')} (each "
                        "Trial's time x its nodes x the node price)"
                    )
        if status != record.status and not record.terminal and status != SWEEP_RUNNING:
            update_sweep(self.store, record.id, status=status, ended=time.time(), error=error)
        return SweepView(
            id=record.id,
            name=record.name,
            backend=record.backend,
            status=status,
            objective=str(sweep.objective),
            trials=trials,
            planned=sweep.trials,
            native_id=name,
            error=error,
            notes=notes,
        )

    def _intermediate(
        self, record: SweepRecord, sweep: SweepSpec, trials: list[TrialView], namespace: str
    ) -> None:
        """Each started trial's objective values so far (``last``, ``steps``): Katib writes a
        Trial's observation only when it completes, and keeps the values its collector
        reads in its own database, so nbscale reads what the collector reads, the metric
        lines of the trial's pods, copied into the trial's job folder as the job backend
        copies a job's (following the trial as a job later reads on from there). An ended
        trial's pods are read once more, then not again; what cannot be read now waits for
        the next look."""
        from ... import paths
        from ...runtime.jobdir import JobDir

        started = [t for t in trials if t.status != PENDING and t.job_id]
        if not started:
            return
        procs = int(mf.resolve(sweep.job.to_dict(), self.settings).get("procs_per_node") or 1)
        for trial in started:
            name = trial.job_id
            jobdir = JobDir(paths.job_dir(name))
            if name not in self._logs_done:
                row = JobRecord(
                    id=name,  # the TrainJob's pods carry the Trial's name as their job id
                    name=name,
                    backend=record.backend,
                    backend_type=self.type,
                    status=JOB_RUNNING,
                    spec={"nodes": sweep.job.nodes, "procs_per_node": procs},
                    created=trial.started or time.time(),
                    native_id=name,
                    info={
                        "job_dir": str(jobdir.path),
                        "namespace": namespace,
                        "context": record.info.get("context"),
                    },
                )
                try:
                    self.jobs.fetch_logs(row, jobdir.make())
                except NbscaleError:
                    pass
                else:
                    if trial.status in TRIAL_TERMINAL:
                        self._logs_done.add(name)
            values = [
                m["value"]
                for m in self._log_metrics.read(name, jobdir)
                if m["name"] == sweep.objective.metric and m["rank"] == 0
            ]
            if values:
                trial.last, trial.steps = values[-1], len(values)

    def node_price(self, sweep: SweepSpec) -> float | None:
        """USD per node hour of the sweep's trials on this backend (its ``prices``, spot),
        None where no price is known."""
        from ...config import Config

        try:
            _, price = spec_price(
                sweep.job.replace(backend=self.backend),
                Config(backends={self.backend: self.config}),
            )
        except SpecError:
            return None
        return price

    # -- following, and the budget ------------------------------------------------------
    def drive(
        self,
        sweep: SweepSpec,
        record: SweepRecord,
        jobs: JobAPI | None = None,
        on_update: Callable[[SweepView], None] | None = None,
        poll: float = 2.0,
        timeout: float | None = None,
    ) -> SweepView:
        """Follow the Experiment until it ends; with ``max_cost``, each look also adds up the
        trials' cost, and once it reaches the budget Katib is told to start no more
        (``hold_budget``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            record = get_sweep(self.store, record.id)  # the notes written meanwhile
            view = self.view(record)
            if view.status == SWEEP_RUNNING and sweep.max_cost is not None:
                view = self.hold_budget(sweep, record, view)
            if on_update is not None:
                on_update(view)
            if view.status != SWEEP_RUNNING:
                return view
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"sweep {record.id} is still running after {timeout:g} s")
            time.sleep(poll)

    def hold_budget(self, sweep: SweepSpec, record: SweepRecord, view: SweepView) -> SweepView:
        """Once the trials' spend reaches ``max_cost`` (the first time: the sweep's info
        remembers it), lower the Experiment's ``maxTrialCount`` so that Katib starts no more
        trials than its webhook makes it (``budget_limits``), and say so in the sweep's
        notes. The running trials finish; Katib ends the Experiment when they have."""
        if sweep.max_cost is None or record.info.get("budget") is not None:
            return view
        spent = round(sum(t.cost or 0.0 for t in view.trials), 4)
        if spent < sweep.max_cost:
            return view
        cluster = self.cluster()
        namespace = record.info.get("namespace") or cluster.namespace
        name = view.native_id or experiment_name(sweep)
        before = after = None
        for attempt in range(3):  # Katib may make a Trial between the read and the edit
            exp = self._get(name, namespace)
            if exp is None or sweep_status(exp)[0] != SWEEP_RUNNING:
                return view  # ended meanwhile: the next look says how
            before = (exp.get("spec") or {}).get("maxTrialCount")
            patch = budget_limits(exp, len(view.trials))
            if not patch:
                break
            body: dict[str, Any] = {"spec": patch}
            version = exp["metadata"].get("resourceVersion")
            if version:  # refused (409) when the Experiment changed since it was read
                body["metadata"] = {"resourceVersion": version}
            try:
                self._api().patch_namespaced_custom_object(
                    KATIB_GROUP, KATIB_VERSION, namespace, EXPERIMENTS, name, body
                )
            except Exception as exc:  # noqa: BLE001
                err = api_error(exc, f"lowering maxTrialCount of Katib Experiment {name}", cluster)
                if attempt < 2 and (is_status(err, 409) or is_status(err, 400)):
                    continue
                raise NbscaleError(
                    f"the sweep's budget of ${sweep.max_cost:.2f} is reached (${spent:.2f} "
                    f"spent), but Katib would not stop starting trials: {err}",
                    f"cancel the sweep to stop it: nbscale sweep-cancel {record.id}",
                ) from None
            after = patch["maxTrialCount"]
            break
        head = (
            f"budget: ${spent:.2f} spent, the sweep's --max-cost ${sweep.max_cost:.2f} is reached"
        )
        if after is None:
            note = (
                f"{head}: Katib starts no trial past its maxTrialCount {before} "
                f"({count(len(view.trials), 'trial')} made); the running trials finish"
            )
        else:
            note = (
                f"{head}: Katib's maxTrialCount is lowered from {before} to {after}, one more "
                f"than the {count(after - 1, 'trial')} it has made (the least it admits on a "
                "running Experiment), so at most one more trial starts; the running trials "
                "finish"
            )
        notes = [*(record.info.get("notes") or []), note]
        update_sweep(
            self.store,
            record.id,
            info_patch={
                "notes": notes,
                "budget": {"spent": spent, "max_trial_count": after or before},
            },
        )
        return dataclasses.replace(view, notes=notes)

    def trial_job(self, record: SweepRecord, trial: TrialView) -> JobRecord | None:
        """The trial as the job its TrainJob is: the row ``KubeflowBackend.submit`` would
        have written for it (job id and TrainJob name: the Trial's name; its outputs folder,
        namespace, image), so that the job backend's ``status`` follows the TrainJob, copies
        its pods' logs and brings its outputs home when it ends. The bundle ConfigMap is the
        Experiment's, shared by every trial: the row does not name it (cancelling the job
        must not delete it). A trial whose TrainJob is gone gets an ended row, its outputs
        collected from object storage; None for one whose TrainJob is not made yet."""
        from ...errors import NotFound
        from ...store.jobs import get_job

        name = trial.job_id
        if not name:
            return None
        try:
            return get_job(self.store, name)  # followed already: nothing to ask the cluster
        except NotFound:
            pass
        row = self._trial_row(record, trial, name)
        body = self.jobs._get(row)
        if body is None:
            if trial.status not in TRIAL_TERMINAL:
                return None
            return self._ended_row(row, trial)
        trainer = (body.get("spec") or {}).get("trainer") or {}
        args = list(trainer.get("args") or [])
        bundle = args[args.index("--bundle") + 1] if "--bundle" in args[:-1] else None
        if bundle is not None and bundle.startswith(mf.BUNDLE_MOUNT):
            bundle = "configmap"
        info = {**row.info, "phase": "queued", "image": trainer.get("image"), "bundle": bundle}
        if "--outputs" in args[:-1]:  # where this trial's container writes them
            info["outputs_uri"] = args[args.index("--outputs") + 1]
        # the job backend's status moves it on from the TrainJob (and collects at the end)
        status = JOB_PENDING if trial.status == PENDING else JOB_RUNNING
        return dataclasses.replace(row, status=status, info=info)

    def _trial_row(self, record: SweepRecord, trial: TrialView, name: str) -> JobRecord:
        from ... import paths
        from ...runtime.jobdir import JobDir
        from ...sweeps.spec import SweepSpec

        sweep = SweepSpec.from_dict(record.spec)
        spec = sweep.trial_spec(trial.number, trial.params).replace(backend=record.backend)
        namespace = record.info.get("namespace") or self.cluster().namespace
        outputs = record.info.get("outputs_uri")
        outputs = (
            outputs.replace("{trial}", name)
            if outputs
            else self.jobs.object_store().base.child("jobs", name, "outputs").uri
        )
        job_dir = paths.job_dir(name)
        JobDir(job_dir).make()
        return JobRecord(
            id=name,
            name=spec.name,
            backend=record.backend,
            backend_type=self.type,
            status=JOB_PENDING,
            spec=mf.resolve(spec.to_dict(), self.settings),  # the shape the pods ran
            created=trial.started or time.time(),
            started=trial.started,
            native_id=name,  # Katib names the trial's TrainJob after the Trial
            info={
                "job_dir": str(job_dir),
                "namespace": namespace,
                "context": record.info.get("context"),
                "outputs_uri": outputs,
                "sweep": record.id,
                "trial": trial.number,
                "experiment": record.native_id,
            },
        )

    def _ended_row(self, row: JobRecord, trial: TrialView) -> JobRecord:
        """A trial whose TrainJob Katib deleted when it ended: its outcome from the Trial,
        its outputs (and its nodes' records) from object storage, as ``_finish`` collects
        them; its pods' logs went with the TrainJob."""
        from ..remote.staging import collect, settle

        status = {SUCCEEDED: JOB_SUCCEEDED, FAILED: JOB_FAILED}.get(trial.status, JOB_CANCELLED)
        error = trial.error
        fields: dict[str, Any] = {}
        if status in (JOB_SUCCEEDED, JOB_FAILED):
            status, error = settle(
                status,
                error,
                fields,
                lambda: collect(
                    row.id,
                    self.jobs.object_store(),
                    row.info["outputs_uri"],
                    int(row.spec.get("nodes") or 1),
                ),
                JOB_SUCCEEDED,
                JOB_FAILED,
            )
        info = {
            **row.info,
            **fields.pop("info_patch", {}),
            "phase": "ended (Katib deleted its TrainJob, and its pods' logs with it)",
        }
        return dataclasses.replace(
            row,
            status=status,
            error=error,
            info=info,
            ended=trial.ended or time.time(),
            exit_code=fields.get("exit_code"),
            failed_rank=fields.get("failed_rank"),
            restarts=int(fields.get("restarts") or 0),
        )

    def _delete(self, name: str, namespace: str) -> None:
        cluster = self.cluster()
        try:
            self._api().delete_namespaced_custom_object(
                KATIB_GROUP,
                KATIB_VERSION,
                namespace,
                EXPERIMENTS,
                name,
                propagation_policy="Foreground",  # its Trials and their TrainJobs go too
            )
        except Exception as exc:  # noqa: BLE001
            err = api_error(exc, f"deleting Katib Experiment {name}", cluster)
            if not is_status(err, 404):
                raise err from None

    def cancel(self, record: SweepRecord) -> None:
        from ...sweeps.spec import SweepSpec

        name = record.native_id or experiment_name(SweepSpec.from_dict(record.spec))
        cluster = self.cluster()
        namespace = record.info.get("namespace") or cluster.namespace
        self._delete(name, namespace)
        configmap = record.info.get("configmap")
        if configmap:  # owned by the Experiment; deleted now rather than by the collector
            try:
                cluster.core().delete_namespaced_config_map(configmap, namespace)
            except Exception as exc:  # noqa: BLE001
                err = api_error(exc, f"deleting ConfigMap {configmap}", cluster)
                if not is_status(err, 404):
                    raise err from None
        update_sweep(self.store, record.id, status=SWEEP_CANCELLED, ended=time.time())
