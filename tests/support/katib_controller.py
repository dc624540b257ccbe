"""Katib for the kubeflow sweep tests: its schema, its admission webhook, its controllers.

- ``validate_experiment``: the Experiment against Katib's OpenAPI schemas
  (../shared/schemas/katib/experiment-openapi.json), strictly: an object that lists its
  properties takes no other field; ``validate_trainjob``: a TrainJob against the Trainer
  CRDs of v2.2.1 and v2.3.0, as strictly, with their CEL rules.
- ``admit``: what Katib's validating webhook refuses (pkg/webhook/v1beta1/experiment/
  validator/validator.go, read from kubeflow/katib): names, counts, algorithms known to the
  default katib-config, feasible spaces, the trial template's parameters and placeholders;
  and, for an edit, what it refuses of a change: a spec field other than maxTrialCount,
  parallelTrialCount and maxFailedTrialCount, a maxTrialCount at or below the Trials made
  (``status.trials``), a completed Experiment that cannot restart.
- ``KatibController``: plays the Experiment and Trial controllers, the suggestion service
  (random values from the Experiment's ``feasibleSpace``), the StdOut metrics collector (the
  Experiment's ``metricsFormat`` over the primary pod's log, into Katib's DB: the Trial's
  ``status.observation`` is written only when it completes, as Katib's Trial controller
  does, so a running Trial shows no value) and the garbage collector, all
  through the Kubernetes API, reading nothing but what is there. A completed Trial's job is
  deleted unless the template retains it, as Katib's Trial controller does. ``reconcile``
  is one pass of the Experiment controller (ReconcileExperiment): the status from the
  Trials, then, while the Experiment is not completed, new Trials up to what
  ``parallelTrialCount`` and ``maxTrialCount`` of the Experiment as it is now allow.
  The emulator stores a write before anything could refuse it, so the webhook's judgement of
  an edit someone made to a running Experiment is passed at the controller's next look: a
  refused edit fails the test there.
"""

from __future__ import annotations

import copy
import json
import math
import random
import re
import string
from functools import cache
from typing import Any

import jsonschema
import yaml

from tests.support.kube_schemas import SCHEMAS, cel_rules

GROUP, VERSION = "kubeflow.org", "v1beta1"
TRAINER = ("trainer.kubeflow.org", "v1alpha1", "trainjobs")
EXPERIMENT_LABEL = "katib.kubeflow.org/experiment"
UNAVAILABLE = "unavailable"
TRAINER_RELEASES = ("v2.2.1", "v2.3.0")
# the default katib-config (manifests/v1beta1/installs/katib-standalone/katib-config.yaml)
SUGGESTIONS = {
    "random", "tpe", "grid", "hyperband", "bayesianoptimization", "cmaes", "sobol",
    "multivariate-tpe", "enas", "darts", "pbt",
}  # fmt: skip
EARLY_STOPPINGS = {"medianstop"}
TRIAL_RESOURCES = {("trainer.kubeflow.org/v1alpha1", "TrainJob"), ("batch/v1", "Job")}
META_KEYS = {"Name", "Namespace", "Kind", "APIVersion", "Annotations", "Labels"}
PARAM_RE = re.compile(r"\$\{trialParameters\..+?\}")
META_RE = re.compile(r"\$\{trialSpec\.(.+?)\}")


# -- schemas --------------------------------------------------------------------------------
def strict(schema: Any) -> Any:
    """Every object schema that lists its properties, and neither sets
    ``additionalProperties`` nor preserves unknown fields, takes no other field."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@cache
def _experiment_validator() -> jsonschema.Draft7Validator:
    doc = json.loads((SCHEMAS / "katib" / "experiment-openapi.json").read_text())
    root = {
        "$ref": "#/components/schemas/v1beta1.Experiment",
        "components": strict(doc["components"]),
    }
    return jsonschema.Draft7Validator(root)


def validate_experiment(obj: dict[str, Any]) -> None:
    error = jsonschema.exceptions.best_match(_experiment_validator().iter_errors(obj))
    if error is not None:
        raise error


@cache
def _trainjob_schema(release: str) -> dict[str, Any]:
    path = SCHEMAS / "kubeflow-trainer" / release / "trainer.kubeflow.org_trainjobs.yaml"
    doc = yaml.safe_load(path.read_text())
    (version,) = [v for v in doc["spec"]["versions"] if v["name"] == TRAINER[1]]
    return strict(version["schema"]["openAPIV3Schema"])


def validate_trainjob(obj: dict[str, Any]) -> int:
    """Against each Trainer release's CRD, strictly, with its CEL rules; the rules checked."""
    checked = 0
    for release in TRAINER_RELEASES:
        schema = _trainjob_schema(release)
        error = jsonschema.exceptions.best_match(
            jsonschema.Draft7Validator(schema).iter_errors(obj)
        )
        if error is not None:
            raise AssertionError(f"Trainer {release}: {error.message} at {list(error.path)}")
        results = cel_rules(schema, obj)
        bad = [(p, r) for p, r, ok in results if not ok]
        assert not bad, f"Trainer {release}: CEL rules fail: {bad}"
        checked += len(results)
    return checked


# -- the validating webhook -----------------------------------------------------------------
def _completed(exp: dict[str, Any]) -> str | None:
    """The reason of the Experiment's Succeeded or Failed condition (None: not completed)."""
    for c in (exp.get("status") or {}).get("conditions") or []:
        if c.get("type") in ("Succeeded", "Failed") and c.get("status") == "True":
            return c.get("reason") or c["type"]
    return None


EDITABLE = ("maxTrialCount", "parallelTrialCount", "maxFailedTrialCount")


def _admit_edit(exp: dict[str, Any], old: dict[str, Any]) -> list[str]:
    """What the webhook refuses of an edit of ``old`` (as stored, its status too) into
    ``exp`` (ValidateExperiment with oldInst)."""
    if exp["spec"] == old["spec"]:
        return []
    errors = []
    reason = _completed(old)
    if reason is not None and not (
        reason == "ExperimentMaxTrialsReached"
        and old["spec"].get("resumePolicy") in ("LongRunning", "FromVolume")
    ):
        errors.append("a completed Experiment can only be restarted (resumePolicy)")
    made = (old.get("status") or {}).get("trials") or 0
    trials = exp["spec"].get("maxTrialCount")
    if trials is not None and trials <= made:
        errors.append(f"maxTrialCount {trials} must be greater than status.trials count {made}")
    rest = {k: v for k, v in exp["spec"].items() if k not in EDITABLE}
    if rest != {k: v for k, v in old["spec"].items() if k not in EDITABLE}:
        errors.append(
            "only spec.parallelTrialCount, spec.maxTrialCount and spec.maxFailedTrialCount "
            "are editable"
        )
    return errors


def admit(exp: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """What Katib's webhook would refuse in ``exp`` (empty: admitted); ``old``: the object
    an edit changes."""
    errors: list[str] = [] if old is None else _admit_edit(exp, old)
    name = exp["metadata"].get("name", "")
    if not re.match(r"^[a-z]([-a-z0-9]*[a-z0-9])?", name) or len(name) > 40:
        errors.append(f"metadata.name {name!r}")
    spec = exp["spec"]
    trials, failed, parallel = (
        spec.get("maxTrialCount"),
        spec.get("maxFailedTrialCount"),
        spec.get("parallelTrialCount"),
    )
    if failed is not None and failed < 0:
        errors.append("maxFailedTrialCount < 0")
    if trials is not None and trials <= 0:
        errors.append("maxTrialCount <= 0")
    if parallel is not None and parallel <= 0:
        errors.append("parallelTrialCount <= 0")
    if failed is not None and trials is not None and failed > trials:
        errors.append("maxFailedTrialCount > maxTrialCount")
    if parallel is not None and trials is not None and parallel > trials:
        errors.append("parallelTrialCount > maxTrialCount")
    objective = spec.get("objective") or {}
    if objective.get("type") not in ("minimize", "maximize"):
        errors.append(f"objective.type {objective.get('type')!r}")
    if not objective.get("objectiveMetricName"):
        errors.append("objective.objectiveMetricName")
    if (spec.get("algorithm") or {}).get("algorithmName") not in SUGGESTIONS:
        errors.append(f"algorithm {spec.get('algorithm')}")
    if "earlyStopping" in spec and spec["earlyStopping"].get("algorithmName") not in (
        EARLY_STOPPINGS
    ):
        errors.append(f"earlyStopping {spec['earlyStopping']}")
    for i, p in enumerate(spec.get("parameters") or []):
        fs = p.get("feasibleSpace") or {}
        kind = p.get("parameterType")
        if kind not in ("int", "double", "categorical", "discrete", "unknown"):
            errors.append(f"parameters[{i}].parameterType {kind!r}")
        if fs.get("distribution", "") not in (
            "", "uniform", "logUniform", "normal", "logNormal", "unknown"
        ):  # fmt: skip
            errors.append(f"parameters[{i}].distribution {fs['distribution']!r}")
        if not fs:
            errors.append(f"parameters[{i}].feasibleSpace")
        elif kind in ("int", "double"):
            if fs.get("list"):
                errors.append(f"parameters[{i}].feasibleSpace.list")
            if not fs.get("min") or not fs.get("max"):
                errors.append(f"parameters[{i}].feasibleSpace min/max")
        elif kind in ("categorical", "discrete") and any(fs.get(k) for k in ("min", "max", "step")):
            errors.append(f"parameters[{i}].feasibleSpace min/max/step")
    if not spec.get("parameters"):
        errors.append("spec.parameters")
    errors += _admit_template(spec)
    collector = spec.get("metricsCollectorSpec") or {}
    if (collector.get("collector") or {}).get("kind") not in ("StdOut", "File", "Push"):
        errors.append(f"metricsCollectorSpec {collector}")
    for fmt in ((collector.get("source") or {}).get("filter") or {}).get("metricsFormat") or []:
        try:
            re.compile(fmt)
        except re.error as exc:
            errors.append(f"metricsFormat {fmt!r}: {exc}")
        if not re.match(r".*\(.*\).*\(.*\).*", fmt):
            errors.append(f"metricsFormat {fmt!r}: two top subexpressions are required")
        if ";" in fmt:  # the sidecar gets the filters joined with ';'
            errors.append(f"metricsFormat {fmt!r} holds ';'")
    return errors


def _admit_template(spec: dict[str, Any]) -> list[str]:
    errors: list[str] = []
    tt = spec.get("trialTemplate")
    if not tt:
        return ["trialTemplate"]
    if not tt.get("primaryContainerName"):
        errors.append("trialTemplate.primaryContainerName")
    if not tt.get("successCondition") or not tt.get("failureCondition"):
        errors.append("trialTemplate success/failureCondition")
    if tt.get("trialParameters") is None:
        return [*errors, "trialTemplate.trialParameters"]
    if "trialSpec" not in tt:
        return [*errors, "trialTemplate.trialSpec"]
    text = json.dumps(tt["trialSpec"])
    names = {p["name"] for p in spec.get("parameters") or []}
    seen_names, seen_refs = set(), set()
    for p in tt["trialParameters"]:
        name, ref = p.get("name", ""), p.get("reference", "")
        if not name or not ref or "{" in name or "}" in name:
            errors.append(f"trialParameter {p}")
            continue
        if name in seen_names or ref in seen_refs:
            errors.append(f"trialParameter {p} duplicated")
            continue
        seen_names.add(name)
        seen_refs.add(ref)
        meta = META_RE.match(ref)
        is_meta = bool(meta) and (
            meta.group(1) in META_KEYS or re.match(r"(.+)\[(.+)]", meta.group(1)) is not None
        )
        if not is_meta and ref not in names:
            errors.append(f"trialParameter reference {ref!r} is not a parameter")
        placeholder = "${trialParameters." + name + "}"
        if placeholder not in text:
            return [*errors, f"trialParameter {name} not found in the template"]
        text = text.replace(placeholder, "test-value")
    left = PARAM_RE.findall(text)
    if left:
        errors.append(f"template placeholders without a trialParameter: {left}")
    run = json.loads(text)
    meta = run.get("metadata") or {}
    if meta.get("name") or meta.get("namespace"):
        errors.append("trialSpec metadata.name/namespace must be omitted")
    if (run.get("apiVersion"), run.get("kind")) not in TRIAL_RESOURCES:
        errors.append(
            f"trialSpec {run.get('apiVersion')} {run.get('kind')} is not a trial resource"
        )
    return errors


# -- the manifest generator -----------------------------------------------------------------
def run_spec(
    exp: dict[str, Any], trial: str, namespace: str, assignments: list[dict[str, str]]
) -> dict[str, Any]:
    """The trial's job, as Katib's generator makes it: the template's JSON text with every
    ``${trialParameters.NAME}`` replaced by its value, then named after the trial."""
    tt = exp["spec"]["trialTemplate"]
    template = tt["trialSpec"]
    text = json.dumps(template)
    values = {a["name"]: a["value"] for a in assignments}
    for p in tt["trialParameters"]:
        meta = META_RE.match(p["reference"])
        if meta is None:
            value = values[p["reference"]]
        else:
            key = meta.group(1)
            value = {
                "Name": trial,
                "Namespace": namespace,
                "Kind": template["kind"],
                "APIVersion": template["apiVersion"],
            }[key]
        text = text.replace("${trialParameters." + p["name"] + "}", value)
    body = json.loads(text)
    body.setdefault("metadata", {})["name"] = trial
    body["metadata"]["namespace"] = namespace
    return body


def suggest(exp: dict[str, Any], rng: random.Random) -> list[dict[str, str]]:
    """One random assignment from the Experiment's feasible spaces, as strings."""
    out = []
    for p in exp["spec"]["parameters"]:
        fs = p["feasibleSpace"]
        if p["parameterType"] in ("categorical", "discrete"):
            value = rng.choice(fs["list"])
        else:
            low, high = float(fs["min"]), float(fs["max"])
            if fs.get("distribution") == "logUniform":
                x = math.exp(rng.uniform(math.log(low), math.log(high)))
            else:
                x = rng.uniform(low, high)
            if fs.get("step"):
                step = float(fs["step"])
                x = low + round((x - low) / step) * step
            value = str(int(round(x))) if p["parameterType"] == "int" else repr(x)
        out.append({"name": p["name"], "value": value})
    return out


def _gjson_condition(expr: str, obj: dict[str, Any]) -> bool:
    """Katib's success/failure conditions for Trainer jobs:
    ``status.conditions.#(type=="X")#|#(status=="True")#`` in gjson."""
    m = re.fullmatch(r'status\.conditions\.#\(type=="(\w+)"\)#\|#\(status=="(\w+)"\)#', expr)
    assert m, f"a gjson condition this controller does not read: {expr}"
    conds = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == m.group(1) and c.get("status") == m.group(2) for c in conds)


def collect(exp: dict[str, Any], lines: list[str]) -> list[tuple[str, str]]:
    """What the StdOut collector reports: (name, value) for each filter match of a metric
    the objective names, in log order (file-metricscollector's text format)."""
    objective = exp["spec"]["objective"]
    metrics = [objective["objectiveMetricName"], *(objective.get("additionalMetricNames") or [])]
    source = (exp["spec"].get("metricsCollectorSpec") or {}).get("source") or {}
    filters = (source.get("filter") or {}).get("metricsFormat") or []
    regs = [re.compile(f) for f in filters]
    found = []
    for line in lines:
        if not any(m in line for m in metrics):
            continue
        for reg in regs:
            for match in reg.finditer(line):
                if match.lastindex is None or match.lastindex < 2:
                    continue
                name, value = match.group(1).strip(), match.group(2).strip()
                if name in metrics:
                    found.append((name, value))
    return found


def observation(
    reported: list[tuple[str, str]], strategies: list[dict[str, str]]
) -> dict[str, Any]:
    """The Trial's ``status.observation`` from its reported values (Katib's getMetrics)."""
    metrics = {
        s["name"]: {"name": s["name"], "min": UNAVAILABLE, "max": UNAVAILABLE,
                    "latest": UNAVAILABLE}
        for s in strategies
    }  # fmt: skip
    for name, value in reported:
        m = metrics.get(name)
        if m is None:
            continue
        try:
            x = float(value)
        except ValueError:
            x = None
        if x is not None:
            if m["min"] == UNAVAILABLE:
                m["min"] = m["max"] = value
            elif x < float(m["min"]):
                m["min"] = value
            elif x > float(m["max"]):
                m["max"] = value
        m["latest"] = value
    return {"metrics": list(metrics.values())}


def condition(type_: str, status: str = "True", reason: str = "", message: str = "") -> dict:
    return {
        "type": type_,
        "status": status,
        "reason": reason or f"Trial{type_}",
        "message": message,
        "lastUpdateTime": "2026-12-01T00:00:00Z",
        "lastTransitionTime": "2026-12-01T00:00:00Z",
    }


class KatibController:
    """Katib's controllers over the test's API client (``KubeApi``)."""

    def __init__(self, api: Any, namespace: str, seed: int = 7):
        self.api = api
        self.ns = namespace
        self.rng = random.Random(seed)
        self._admitted: dict[str, dict[str, Any]] = {}  # each Experiment as last admitted
        self.db: dict[str, list[tuple[str, str]]] = {}  # Katib's DB: each Trial's reports

    # -- objects ----------------------------------------------------------------------
    def experiment(self, name: str) -> dict[str, Any]:
        return self.api.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.ns, "experiments", name
        )

    def experiments(self) -> list[dict[str, Any]]:
        return self.api.custom.list_namespaced_custom_object(
            GROUP, VERSION, self.ns, "experiments"
        )["items"]

    def trials(self, name: str | None = None) -> list[dict[str, Any]]:
        items = self.api.custom.list_namespaced_custom_object(GROUP, VERSION, self.ns, "trials")[
            "items"
        ]
        return [
            t
            for t in items
            if name is None or (t["metadata"].get("labels") or {}).get(EXPERIMENT_LABEL) == name
        ]

    def trial(self, name: str) -> dict[str, Any]:
        return self.api.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, "trials", name)

    def trainjob(self, name: str) -> dict[str, Any]:
        return self.api.custom.get_namespaced_custom_object(*TRAINER[:2], self.ns, TRAINER[2], name)

    def _patch_status(self, plural: str, name: str, status: dict[str, Any]) -> None:
        self.api.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, self.ns, plural, name, {"status": status}
        )

    # -- the Experiment controller ------------------------------------------------------
    def accept(self, name: str) -> dict[str, Any]:
        """The webhook admits the Experiment; the controller marks it created and running."""
        exp = self.experiment(name)
        refused = admit(exp)
        assert not refused, f"Katib's webhook would refuse the Experiment: {refused}"
        self._admitted[name] = copy.deepcopy(exp)
        self._patch_status(
            "experiments",
            name,
            {
                "startTime": "2026-12-01T00:00:00Z",
                "conditions": [
                    {**condition("Created", reason="ExperimentCreated"), "status": "True"},
                    condition("Running", reason="ExperimentRunning"),
                ],
            },
        )
        return self.experiment(name)

    def create_trial(
        self,
        name: str,
        assignments: list[dict[str, str]] | None = None,
        start: str = "2026-12-01T00:00:01Z",
    ) -> str:
        """A Trial of the Experiment with a suggestion's values, and its job from the template;
        ``start``: the ``status.startTime`` Katib stamps on it."""
        exp = self.experiment(name)
        assignments = assignments or suggest(exp, self.rng)
        trial = f"{name}-{''.join(self.rng.choices(string.ascii_lowercase + string.digits, k=8))}"
        tt = exp["spec"]["trialTemplate"]
        body = run_spec(exp, trial, self.ns, assignments)
        owner = {
            "apiVersion": exp["apiVersion"],
            "kind": "Experiment",
            "name": name,
            "uid": exp["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
        spec = {
            "objective": exp["spec"]["objective"],
            "parameterAssignments": assignments,
            "runSpec": body,
            "metricsCollector": exp["spec"].get("metricsCollectorSpec") or {},
            "primaryContainerName": tt.get("primaryContainerName"),
            "successCondition": tt["successCondition"],
            "failureCondition": tt["failureCondition"],
        }
        if tt.get("primaryPodLabels"):
            spec["primaryPodLabels"] = tt["primaryPodLabels"]
        if tt.get("retain"):  # the Experiment controller copies trialTemplate.retain
            spec["retainRun"] = True
        created = self.api.custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            self.ns,
            "trials",
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "Trial",
                "metadata": {
                    "name": trial,
                    "namespace": self.ns,
                    "labels": {EXPERIMENT_LABEL: name},
                    "ownerReferences": [owner],
                },
                "spec": spec,
            },
        )
        self._patch_status(
            "trials",
            trial,
            {
                "startTime": start,
                "conditions": [condition("Created")],
            },
        )
        job = copy.deepcopy(body)
        job["metadata"]["ownerReferences"] = [
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "Trial",
                "name": trial,
                "uid": created["metadata"]["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        self.api.custom.create_namespaced_custom_object(*TRAINER[:2], self.ns, TRAINER[2], job)
        return trial

    def _set(self, trial: str, *conds: dict[str, Any], **extra: Any) -> None:
        current = (self.trial(trial).get("status") or {}).get("conditions") or []
        by_type = {c["type"]: c for c in current}
        for c in conds:
            by_type[c["type"]] = c
        self._patch_status("trials", trial, {"conditions": list(by_type.values()), **extra})

    def running(self, trial: str) -> None:
        self._set(trial, condition("Running"))

    def _reconcile_run(self, trial: str) -> None:
        """A completed Trial's job is deleted unless the Trial retains it (Katib's
        reconcileJob: Succeeded, Failed, Killed or EarlyStopped, not MetricsUnavailable)."""
        t = self.trial(trial)
        conds = {
            c["type"] for c in (t.get("status") or {}).get("conditions") or []
            if c["status"] == "True"
        }  # fmt: skip
        completed = conds & {"Succeeded", "Failed", "Killed", "EarlyStopped"}
        if not completed or t["spec"].get("retainRun"):
            return
        name = t["spec"]["runSpec"]["metadata"]["name"]
        try:
            self.api.custom.delete_namespaced_custom_object(
                *TRAINER[:2], self.ns, TRAINER[2], name, propagation_policy="Foreground"
            )
        except Exception as exc:  # noqa: BLE001 - gone already
            if getattr(exc, "status", None) != 404:
                raise

    # -- the metrics collector ----------------------------------------------------------
    def primary_pod_log(self, trial: str) -> list[str]:
        """The log of the trial job's primary pod: JobSet names its pods
        ``<jobset>-<replicatedJob>-<job index>-<pod index>``; primaryPodLabels say which."""
        labels = self.trial(trial)["spec"]["primaryPodLabels"]
        rjob = labels["jobset.sigs.k8s.io/replicatedjob-name"]
        index = labels["batch.kubernetes.io/job-completion-index"]
        pods = self.api.core.list_namespaced_pod(self.ns).items
        (pod,) = [
            p
            for p in pods
            if p.metadata.name.startswith(f"{trial}-{rjob}-")
            and (p.metadata.labels or {}).get("batch.kubernetes.io/job-completion-index") == index
        ]
        return self.api.core.read_namespaced_pod_log(pod.metadata.name, self.ns).splitlines()

    def report(self, trial: str, lines: list[str]) -> list[tuple[str, str]]:
        """Collect the metric lines into Katib's DB (ReportObservationLog), as the StdOut
        collector does while the trial runs; the Trial's ``status.observation`` is written by
        the Trial controller only when the trial completes (``settle``, ``early_stop``)."""
        t = self.trial(trial)
        exp = self.experiment(t["metadata"]["labels"][EXPERIMENT_LABEL])
        reported = collect(exp, lines)
        self.db.setdefault(trial, []).extend(reported)
        return reported

    def _observe(self, trial: str) -> dict[str, Any] | None:
        """The Trial controller's UpdateTrialStatusObservation: the observation from the
        values in Katib's DB (None when the collector reported none)."""
        if trial not in self.db:
            return None
        t = self.trial(trial)
        exp = self.experiment(t["metadata"]["labels"][EXPERIMENT_LABEL])
        return observation(self.db[trial], exp["spec"]["objective"].get("metricStrategies") or [])

    # -- the Trial controller -----------------------------------------------------------
    def settle(self, trial: str, completion: str = "2026-12-01T00:10:00Z") -> str:
        """The Trial's outcome from its job's status and its observation; ``completion``: the
        ``status.completionTime`` Katib stamps on it."""
        t = self.trial(trial)
        job = self.trainjob(trial)
        metric = t["spec"]["objective"]["objectiveMetricName"]
        stopped_running = condition("Running", status="False")
        extra: dict[str, Any] = {"completionTime": completion}
        if _gjson_condition(t["spec"]["successCondition"], job):
            obs = self._observe(trial)  # the job succeeded: the observation from the DB
            metrics = (obs or {}).get("metrics") or []
            available = any(m["name"] == metric and m["latest"] != UNAVAILABLE for m in metrics)
            kind = "Succeeded" if available else "MetricsUnavailable"
            if obs is not None:
                extra["observation"] = obs
        elif _gjson_condition(t["spec"]["failureCondition"], job):
            kind = "Failed"
        else:
            return "Running"
        self._set(
            trial,
            stopped_running,
            condition(kind, message=f"Trial has {kind.lower()}"),
            **extra,
        )
        self._reconcile_run(trial)
        return kind

    def early_stop(self, trial: str) -> None:
        obs = self._observe(trial)  # what the collector reported before the stop
        extra = {"observation": obs} if obs is not None else {}
        self._set(trial, condition("Running", status="False"), condition("EarlyStopped"), **extra)
        self._reconcile_run(trial)

    def kill(self, trial: str) -> None:
        self._set(trial, condition("Running", status="False"), condition("Killed"))
        self._reconcile_run(trial)

    # -- the Experiment's status --------------------------------------------------------
    def update_experiment(self, name: str) -> dict[str, Any]:
        """Katib's summary of the Trials and the Experiment's conditions."""
        exp = self.experiment(name)
        spec = exp["spec"]
        lists: dict[str, list[str]] = {
            k: []
            for k in ("killed", "failed", "succeeded", "earlyStopped", "running",
                      "metricsUnavailable", "pending")
        }  # fmt: skip
        for t in self.trials(name):
            conds = {
                c["type"] for c in (t.get("status") or {}).get("conditions") or []
                if c["status"] == "True"
            }  # fmt: skip
            for kind, key in (("Killed", "killed"), ("Failed", "failed"),
                              ("Succeeded", "succeeded"), ("EarlyStopped", "earlyStopped"),
                              ("Running", "running"), ("MetricsUnavailable", "metricsUnavailable")):  # fmt: skip
                if kind in conds:
                    lists[key].append(t["metadata"]["name"])
                    break
            else:
                lists["pending"].append(t["metadata"]["name"])
        done = sum(len(lists[k]) for k in lists if k not in ("running", "pending"))
        failed = len(lists["failed"]) + len(lists["metricsUnavailable"])
        conds = [condition("Created", reason="ExperimentCreated")]
        if _completed(exp) is not None:  # Katib leaves a completed Experiment's conditions
            conds = (exp.get("status") or {}).get("conditions") or []
        elif (
            spec.get("maxFailedTrialCount") is not None
            and failed
            and (failed >= spec["maxFailedTrialCount"])
        ):
            conds += [
                condition("Running", status="False", reason="ExperimentRunning"),
                condition(
                    "Failed",
                    reason="ExperimentFailed",
                    message="Experiment has failed because max failed count has reached",
                ),
            ]
        elif spec.get("maxTrialCount") is not None and done >= spec["maxTrialCount"]:
            conds += [
                condition("Running", status="False", reason="ExperimentRunning"),
                condition(
                    "Succeeded",
                    reason="ExperimentMaxTrialsReached",
                    message="Experiment has succeeded because max trial count has reached",
                ),
            ]
        else:
            conds.append(condition("Running", reason="ExperimentRunning"))
        status = {
            "conditions": conds,
            "trials": sum(len(v) for v in lists.values()),
            "trialsSucceeded": len(lists["succeeded"]),
            "trialsFailed": len(lists["failed"]),
            "trialsRunning": len(lists["running"]),
            "trialsPending": len(lists["pending"]),
            "trialsEarlyStopped": len(lists["earlyStopped"]),
            "trialsKilled": len(lists["killed"]),
            "trialMetricsUnavailable": len(lists["metricsUnavailable"]),
        }
        self._patch_status("experiments", name, status)
        return self.experiment(name)

    def _audit_edit(self, name: str) -> None:
        """The webhook's judgement of whatever changed the Experiment's spec since it was
        last admitted (its status as stored when the edit came)."""
        exp = self.experiment(name)
        old = self._admitted.get(name)
        if old is not None and exp["spec"] != old["spec"]:
            refused = admit(exp, {**old, "status": exp.get("status") or {}})
            assert not refused, f"Katib's webhook would refuse this edit: {refused}"
        self._admitted[name] = copy.deepcopy(exp)

    def reconcile(self, name: str, start: str = "2026-12-01T00:00:01Z") -> list[str]:
        """One pass of the Experiment controller: the status from the Trials, then, unless
        the Experiment is completed, Katib's ReconcileTrials from its spec as it is now: the
        newest active Trials deleted down to ``parallelTrialCount``, or new ones (stamped
        ``start``) up to ``min(maxTrialCount - completed, parallelTrialCount)`` active.
        The Trials made."""
        self._audit_edit(name)
        exp = self.update_experiment(name)
        if _completed(exp) is not None:
            return []
        spec, st = exp["spec"], exp["status"]
        parallel = spec["parallelTrialCount"]
        active = st["trialsPending"] + st["trialsRunning"]
        # ReconcileTrials counts no MetricsUnavailable Trial as completed
        completed = (
            st["trialsSucceeded"] + st["trialsFailed"] + st["trialsKilled"]
            + st["trialsEarlyStopped"]
        )  # fmt: skip
        if active > parallel:
            newest = sorted(
                self.trials(name),
                key=lambda t: (t["metadata"].get("creationTimestamp") or "", t["metadata"]["name"]),
                reverse=True,
            )
            for t in newest[: active - parallel]:
                self.api.custom.delete_namespaced_custom_object(
                    GROUP, VERSION, self.ns, "trials", t["metadata"]["name"]
                )
            return []
        required = parallel
        if spec.get("maxTrialCount") is not None:
            required = min(spec["maxTrialCount"] - completed, parallel)
        return [self.create_trial(name, start=start) for _ in range(max(0, required - active))]

    # -- the garbage collector ----------------------------------------------------------
    def collect_garbage(self) -> None:
        """Delete what an owner that is gone owned (Trials, then their TrainJobs)."""
        alive = {e["metadata"]["uid"] for e in self.experiments()}
        for t in self.trials():
            owners = t["metadata"].get("ownerReferences") or []
            if owners and not any(o["uid"] in alive for o in owners):
                self.api.custom.delete_namespaced_custom_object(
                    GROUP, VERSION, self.ns, "trials", t["metadata"]["name"]
                )
        trials = {t["metadata"]["uid"] for t in self.trials()}
        jobs = self.api.custom.list_namespaced_custom_object(*TRAINER[:2], self.ns, TRAINER[2])
        for j in jobs["items"]:
            owners = [o for o in j["metadata"].get("ownerReferences") or [] if o["kind"] == "Trial"]
            if owners and not any(o["uid"] in trials for o in owners):
                self.api.custom.delete_namespaced_custom_object(
                    *TRAINER[:2], self.ns, TRAINER[2], j["metadata"]["name"]
                )
        cms = self.api.core.list_namespaced_config_map(self.ns).items
        for cm in cms:
            owners = cm.metadata.owner_references or []
            if any(o.kind == "Experiment" for o in owners) and not any(
                o.uid in alive for o in owners
            ):
                self.api.core.delete_namespaced_config_map(cm.metadata.name, self.ns)
