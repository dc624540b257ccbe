"""The Katib sweep backend through the real ``kubernetes`` client, against kmock's Kubernetes
emulator on 127.0.0.1 (moto's S3 for the code).

The test plays Katib (tests/support/katib_controller.py): its webhook admits the Experiment
nbscale created, its controllers make Trials and TrainJobs from the Experiment's template
with Katib's ``${trialParameters.x}`` substitution, its collector reads the metric lines of
the primary pod's log with the Experiment's own filter, and the status goes back as Katib
writes it. nbscale's view follows; cancel deletes the Experiment. The last test runs a
trial's node container, the exact command of the filled-in TrainJob, as a local process
with its own home and only the pod's environment (tests/support/kubeflow.py)."""

from __future__ import annotations

import datetime
import json
import time
from types import SimpleNamespace

import pytest

from nbscale.backends.kubeflow import manifests as mf
from nbscale.backends.kubeflow.sweeps import KatibSweeps
from nbscale.backends.sweep_base import CANCELLED, FAILED, PENDING, PRUNED, RUNNING, SUCCEEDED
from nbscale.config import load as load_config
from nbscale.errors import SpecError
from nbscale.specs import Entry, JobSpec
from nbscale.store import get_store
from nbscale.store.sweeps import SweepRecord, get_sweep, put_sweep
from nbscale.sweeps.lines import metric_line
from nbscale.sweeps.spec import SweepSpec
from tests.support.katib_controller import KatibController, validate_experiment, validate_trainjob
from tests.support.kube_emulator import condition
from tests.support.kubeflow import NS, run_nodes


@pytest.fixture(autouse=True)
def katib_crds(kube):
    """Katib installed: its resource types declared on the API server."""
    for resource in ("kubeflow.org/v1beta1/experiments", "kubeflow.org/v1beta1/trials"):
        kube.emulator.resources[resource] = {}


SCRIPT = """\
import nbscale

lr = nbscale.param("lr")
batch = nbscale.param("batch")
print("read lr", repr(lr), "batch", repr(batch), type(batch).__name__)
for step in range(3):
    nbscale.log_metric("val_loss", (lr - 0.01) ** 2 + 1.0 / (step + 1), step=step)
"""


def start(tmp_path, **kw):
    script = tmp_path / "tiny.py"
    script.write_text(SCRIPT)
    runtime = kw.pop("max_runtime", None)
    job = JobSpec(
        entry=Entry.from_path(str(script)), name="tiny", backend="kf", nodes=1, max_runtime=runtime
    )
    sweep = SweepSpec(
        job=job,
        space="lr=loguniform(1e-4,1e-1) batch=choice(32,64)",
        objective="val_loss:min",
        **{"trials": 3, "parallel": 2, "max_failed": 1, **kw},
    )
    store = get_store()
    config = load_config()
    backend = KatibSweeps(config.backend("kf"), store)
    now = time.time()
    record = put_sweep(
        store,
        SweepRecord(
            id=sweep.id,
            name=sweep.name,
            backend="kf",
            backend_type="kubeflow",
            status="RUNNING",
            spec=sweep.to_dict(),
            created=now,
            updated=now,
        ),
    )
    return backend, sweep, backend.start(sweep, record)


def test_the_experiment_runs_trials_that_nbscales_view_follows(cluster, kube, tmp_path):
    api = cluster
    katib = KatibController(api, NS)
    backend, sweep, record = start(tmp_path)
    name = record.native_id
    assert record.info["namespace"] == NS
    exp = katib.experiment(name)
    validate_experiment(exp)  # what reached the API server
    exp = katib.accept(name)  # and Katib's webhook admits it
    # the user's key Secret, as a job makes it, and the one the trials' pods mount
    secret = backend.jobs.key_secret_name()
    assert api.core.read_namespaced_secret(secret, NS)
    pod = exp["spec"]["trialTemplate"]["trialSpec"]["spec"]["runtimePatches"][0]
    assert f'"secretName": "{secret}"' in json.dumps(pod)
    view = backend.view(get_sweep(get_store(), sweep.id))
    assert view.status == "RUNNING" and view.trials == [] and view.planned == 3

    # Katib starts two trials (parallelTrialCount) from its suggestions
    first = katib.create_trial(name, [{"name": "lr", "value": "0.012"},
                                      {"name": "batch", "value": "64"}])  # fmt: skip
    second = katib.create_trial(name)
    for trial in (first, second):
        job = katib.trainjob(trial)
        validate_trainjob(job)  # each trial's job is a valid TrainJob
        env = {e["name"]: e.get("value") for e in job["spec"]["trainer"]["env"]}
        assert "${" not in json.dumps(job)
        values = {a["name"]: a["value"] for a in katib.trial(trial)["spec"]["parameterAssignments"]}
        assert env["NBSCALE_PARAM_lr"] == values["lr"]
        args = job["spec"]["trainer"]["args"]
        assert args[args.index("--job-id") + 1] == trial
    katib.running(first)
    view = backend.view(get_sweep(get_store(), sweep.id))
    assert {t.job_id: t.status for t in view.trials} == {first: RUNNING, second: PENDING}
    assert sorted(t.number for t in view.trials) == [0, 1]
    (mine,) = [t for t in view.trials if t.job_id == first]
    assert mine.params == {"lr": 0.012, "batch": 64}

    # the first's node pod prints its objective: Katib's collector puts the values in its
    # database and writes no observation on a running Trial, so nbscale reads what the
    # collector reads, the pod's log, and shows the latest value as it comes
    pod = f"{first}-node-0-0"
    api.create_pod(
        NS,
        pod,
        {mf.JOB_LABEL: first, "batch.kubernetes.io/job-completion-index": "0"},
        {"phase": "Running"},
    )
    kube.set_log(NS, pod, ["nbscale: job node 0/1", f"[rank 0] {metric_line('val_loss', 0.5, 0)}"])
    view = backend.view(get_sweep(get_store(), sweep.id))
    (mine,) = [t for t in view.trials if t.job_id == first]
    assert mine.status == RUNNING and (mine.last, mine.steps) == (0.5, 1)
    assert "observation" not in katib.trial(first)["status"]
    kube.set_log(NS, pod, [f"[rank 0] {metric_line('val_loss', 0.25, 1)}"])
    time.sleep(1.05)  # the job backend reads a pod's log at most every second
    view = backend.view(get_sweep(get_store(), sweep.id))
    (mine,) = [t for t in view.trials if t.job_id == first]
    assert mine.status == RUNNING and (mine.last, mine.steps) == (0.25, 2)
    assert mine.value is None and view.best is None
    # the collector read the same lines; the TrainJob completes
    assert [v for _, v in katib.report(first, katib.primary_pod_log(first))] == ["0.5", "0.25"]
    api.patch_trainjob_status(NS, first, {"conditions": [condition("Complete")]})
    assert katib.settle(first) == "Succeeded"
    # the second is stopped early by the median rule
    katib.running(second)
    katib.report(second, [f"[rank 0] {metric_line('val_loss', 3.0)}"])
    katib.early_stop(second)
    # a third never prints its objective: Katib says MetricsUnavailable
    third = katib.create_trial(name)
    api.patch_trainjob_status(NS, third, {"conditions": [condition("Complete")]})
    assert katib.settle(third) == "MetricsUnavailable"
    exp = katib.update_experiment(name)
    assert exp["status"]["conditions"][-1]["type"] == "Succeeded"  # 3 of 3 done

    view = backend.view(get_sweep(get_store(), sweep.id))
    assert view.status == "SUCCEEDED"
    by_name = {t.job_id: t for t in view.trials}
    assert by_name[first].status == SUCCEEDED and by_name[first].value == 0.25
    assert by_name[second].status == PRUNED and by_name[second].value is None
    assert by_name[third].status == FAILED and "never printed the objective" in by_name[third].error
    assert view.best.job_id == first and view.best.params == {"lr": 0.012, "batch": 64}
    assert get_sweep(get_store(), sweep.id).status == "SUCCEEDED"  # the store knows it


def test_too_many_failures_fail_the_sweep_and_cancel_deletes_it(cluster, kube, tmp_path):
    api = cluster
    katib = KatibController(api, NS)
    backend, sweep, record = start(tmp_path, trials=4, max_failed=1)
    name = record.native_id
    katib.accept(name)
    assert katib.experiment(name)["spec"]["maxFailedTrialCount"] == 2
    trials = [katib.create_trial(name) for _ in range(2)]
    api.patch_trainjob_status(
        NS, trials[0], {"conditions": [condition("Failed", reason="BackoffLimitExceeded")]}
    )
    assert katib.settle(trials[0]) == "Failed"
    assert katib.update_experiment(name)["status"]["conditions"][-1]["type"] == "Running"
    view = backend.view(get_sweep(get_store(), sweep.id))
    assert view.status == "RUNNING" and view.counts() == {FAILED: 1, PENDING: 1}
    (failed,) = [t for t in view.trials if t.job_id == trials[0]]
    assert "Trial has failed" in failed.error

    # cancel: the Experiment goes; Katib's Trials and TrainJobs go with it
    backend.cancel(get_sweep(get_store(), sweep.id))
    assert name not in [e["metadata"]["name"] for e in katib.experiments()]
    katib.collect_garbage()
    assert katib.trials(name) == [] and api.trainjobs(NS) == []
    rec = get_sweep(get_store(), sweep.id)
    assert rec.status == "CANCELLED" and rec.ended is not None
    assert backend.view(rec).status == "CANCELLED"
    deletes = [r for r in kube.writes() if str(r.method).upper().endswith("DELETE")]
    assert any("experiments" in str(r.url) for r in deletes)


def test_a_sweep_katib_cannot_run_sends_nothing(cluster, kube, tmp_path):
    with pytest.raises(SpecError, match="only medianstop"):
        start(tmp_path, pruner="halving")
    assert kube.writes() == [] or all(
        "secrets" in str(r.url) and "minio-creds" in json.dumps(r.data or {}) for r in kube.writes()
    )  # only the fixture's own storage Secret
    assert KatibController(cluster, NS).experiments() == []


def test_an_experiment_deleted_elsewhere_fails_the_sweep(cluster, kube, tmp_path):
    katib = KatibController(cluster, NS)
    backend, sweep, record = start(tmp_path)
    cluster.custom.delete_namespaced_custom_object(
        "kubeflow.org", "v1beta1", NS, "experiments", record.native_id
    )
    view = backend.view(get_sweep(get_store(), sweep.id))
    assert view.status == "FAILED" and "deleted outside nbscale" in view.error
    assert katib.experiments() == []


@pytest.mark.slow
def test_a_trials_container_reads_katibs_value_and_prints_what_the_collector_reads(
    cluster, kube, tmp_path
):
    api = cluster
    katib = KatibController(api, NS)
    backend, sweep, record = start(tmp_path)
    name = record.native_id
    katib.accept(name)
    trial = katib.create_trial(name, [{"name": "lr", "value": "0.0037"},
                                      {"name": "batch", "value": "32"}])  # fmt: skip
    katib.running(trial)
    # the Trainer and the kubelet: the TrainJob's node as a process with the pod's env only
    codes = run_nodes(api, kube, SimpleNamespace(id=trial), tmp_path)
    assert codes == [0]
    lines = katib.primary_pod_log(trial)
    assert "[rank 0] read lr 0.0037 batch 32 int" in lines, lines
    reported = katib.report(trial, lines)
    assert [n for n, _ in reported] == ["val_loss"] * 3
    assert float(reported[-1][1]) == pytest.approx((0.0037 - 0.01) ** 2 + 1.0 / 3)
    assert katib.settle(trial) == "Succeeded"
    view = backend.view(get_sweep(get_store(), sweep.id))
    (t,) = view.trials
    assert t.status == SUCCEEDED and t.params == {"lr": 0.0037, "batch": 32}
    assert t.value == pytest.approx((0.0037 - 0.01) ** 2 + 1.0 / 3)
    # the trial's outputs are its own, where the record says
    import boto3

    key = record.info["outputs_uri"].format(trial=trial).removeprefix("s3://nb-bucket/")
    found = boto3.client("s3").list_objects_v2(Bucket="nb-bucket", Prefix=key)
    assert found.get("KeyCount", 0) > 0
    assert CANCELLED not in view.counts()


# -- the best trial as a job: its logs and its --outputs come home --------------------------
CELL = """\
import nbscale
loss = (lr - 0.01) ** 2 + 0.5
nbscale.log_metric("val_loss", loss)
seen = lr
"""


def cell_sweep(trials: int = 3):
    """A ``%%train --sweep`` cell on the kf backend, made as the magic makes it: the cell
    captured once into a bundle beside the study (``lr`` not defined yet, so captured as
    None and replaced by the trial's value), the sweep checked and started by the engine."""
    import dataclasses

    from nbscale import paths, sweep_runs
    from nbscale.celljob import prepare_cell

    spec = JobSpec(entry=Entry("module", "placeholder"), name="kf-cell", backend="kf", nodes=1)
    prepared = prepare_cell(CELL, {"lr": None}, spec, outputs=["loss", "seen"])
    folder = paths.home() / "sweeps"
    folder.mkdir(parents=True, exist_ok=True)
    bundle = folder / "kf-cell.cell.zip"
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


def lr(value: str) -> list[dict[str, str]]:
    return [{"name": "lr", "value": value}]


def test_a_trial_is_followed_as_the_job_of_its_trainjob(cluster, kube, tmp_path):
    from nbscale import keys, paths
    from nbscale.backends.kubeflow import manifests as mf
    from nbscale.jobs import job as job_handle
    from nbscale.store.jobs import insert_job
    from tests.support.emulators import PLANTED_SECRET

    api = cluster
    katib = KatibController(api, NS)
    handle = cell_sweep()
    name = handle.record.native_id
    exp = katib.accept(name)
    assert exp["spec"]["trialTemplate"]["retain"] is True  # Katib keeps each trial's job
    first = katib.create_trial(name, lr("0.02"))
    second = katib.create_trial(name, lr("0.003"))
    by = {t.job_id: t for t in handle.view().trials}
    backend = KatibSweeps(load_config().backend("kf"), get_store())
    record = get_sweep(get_store(), handle.id)

    row = backend.trial_job(record, by[first])
    # what KubeflowBackend.submit records for a job, for the TrainJob Katib made
    assert (row.id, row.native_id, row.status) == (first, first, "PENDING")
    assert (row.backend, row.backend_type) == ("kf", "kubeflow")
    assert row.info["namespace"] == NS
    assert row.info["outputs_uri"] == f"s3://nb-bucket/work/jobs/{first}/outputs"
    assert row.info["image"] == "registry.example.com/ml/torch:kernel"
    assert row.info["bundle"] == "configmap"
    assert "configmap" not in row.info  # the Experiment's, shared by every trial
    assert row.info["job_dir"] == str(paths.job_dir(first)) and paths.job_dir(first).is_dir()
    # its spec is the trial's: its values, its sweep and number, the cell's bundle
    assert json.loads(row.spec["env"]["NBSCALE_PARAMS"]) == {"lr": 0.02}
    assert row.spec["tags"]["nbscale-sweep"] == handle.id
    assert row.spec["tags"]["nbscale-trial"] == str(by[first].number)
    assert row.spec["entry"]["kind"] == "bundle" and row.spec["backend"] == "kf"
    text = json.dumps(row.to_dict())
    assert PLANTED_SECRET not in text and keys.load("bundle").hex() not in text

    # the job backend follows it: its pod runs, its log comes home by rank
    insert_job(get_store(), row)
    job = job_handle(first)
    pod = f"{first}-node-0-0"
    api.create_pod(
        NS,
        pod,
        {mf.JOB_LABEL: first, "batch.kubernetes.io/job-completion-index": "0"},
        {"phase": "Running"},
    )
    kube.set_log(NS, pod, ["[rank 0] epoch 1 loss 0.5"])
    assert job.refresh().status == "RUNNING"
    assert "epoch 1 loss 0.5" in job.logs(0)
    # once followed, the stored row is the answer: the cluster is not asked again
    before = len(kube.requests())
    assert backend.trial_job(record, by[first]).info["phase"] == "running"
    assert len(kube.requests()) == before

    # cancelling a trial's job deletes its TrainJob, not the bundle the other trials mount
    other = backend.trial_job(record, by[second])
    insert_job(get_store(), other)
    assert job_handle(second).cancel().status == "CANCELLED"
    assert second not in [t["metadata"]["name"] for t in api.trainjobs(NS)]
    assert api.core.read_namespaced_config_map(f"{name}-bundle", NS)

    # a trial whose TrainJob is not there and that has not ended cannot be a job yet
    third = katib.create_trial(name, lr("0.05"))
    api.custom.delete_namespaced_custom_object(
        "trainer.kubeflow.org", "v1alpha1", NS, "trainjobs", third
    )
    (pending,) = [t for t in handle.view().trials if t.job_id == third]
    assert backend.trial_job(record, pending) is None


@pytest.mark.slow
def test_the_best_trials_outputs_come_home_from_its_own_trainjob(cluster, kube, tmp_path):
    from nbscale.results import load_results

    api = cluster
    katib = KatibController(api, NS)
    handle = cell_sweep()
    name = handle.record.native_id
    katib.accept(name)
    best = katib.create_trial(name, lr("0.011"))
    worse = katib.create_trial(name, lr("0.05"))
    stopped = katib.create_trial(name, lr("0.0002"))
    # the Trainer and the kubelet run both trials' exact node commands; the collector reads
    # their objective from the primary pod's log
    for trial in (worse, best):
        katib.running(trial)
        codes = run_nodes(api, kube, SimpleNamespace(id=trial), tmp_path / trial)
        assert codes == [0], katib.primary_pod_log(trial)
        assert [n for n, _ in katib.report(trial, katib.primary_pod_log(trial))] == ["val_loss"]
        assert katib.settle(trial) == "Succeeded"
    katib.running(stopped)
    katib.report(stopped, [f"[rank 0] {metric_line('val_loss', 3.0)}"])
    katib.early_stop(stopped)
    assert katib.update_experiment(name)["status"]["conditions"][-1]["type"] == "Succeeded"

    view = handle.run(poll=0.05, timeout=30)
    assert view.status == "SUCCEEDED" and handle.best.job_id == best
    job = handle.best_job
    assert job.id == best and job.record.status == "RUNNING"
    record = job.refresh()  # the TrainJob is Complete: the outputs come home
    assert record.status == "SUCCEEDED", record.error
    values = load_results(record)
    assert values == {"loss": pytest.approx((0.011 - 0.01) ** 2 + 0.5), "seen": 0.011}
    assert record.exit_code == 0
    assert "outputs written: loss, seen" in job.logs(0)  # its pod's log, by rank
    # the worse trial computed and sent its own outputs: the best's are not those
    worse_key = f"work/jobs/{worse}/outputs/results.zip"
    import boto3

    assert boto3.client("s3").head_object(Bucket="nb-bucket", Key=worse_key)
    # asked again, the sweep gives the same job
    assert handle.best_job.id == best and handle.best_job.record.status == "SUCCEEDED"


@pytest.mark.slow
def test_a_best_trial_whose_trainjob_katib_deleted_comes_home_from_object_storage(
    cluster, kube, tmp_path
):
    from nbscale.results import load_results

    api = cluster
    katib = KatibController(api, NS)
    handle = cell_sweep(trials=2)
    name = handle.record.native_id
    katib.accept(name)
    # an Experiment made before nbscale retained its trials' jobs: Katib deletes each one
    # as its Trial completes
    api.custom.patch_namespaced_custom_object(
        "kubeflow.org", "v1beta1", NS, "experiments", name,
        {"spec": {"trialTemplate": {"retain": False}}},
    )  # fmt: skip
    best = katib.create_trial(name, lr("0.009"))
    failed = katib.create_trial(name, lr("0.07"))
    katib.running(best)
    assert run_nodes(api, kube, SimpleNamespace(id=best), tmp_path / best) == [0]
    katib.report(best, katib.primary_pod_log(best))
    assert katib.settle(best) == "Succeeded"
    api.patch_trainjob_status(NS, failed, {"conditions": [condition("Failed")]})
    assert katib.settle(failed) == "Failed"
    assert api.trainjobs(NS) == []  # Katib deleted both
    katib.update_experiment(name)

    view = handle.run(poll=0.05, timeout=30)
    assert view.status == "SUCCEEDED" and handle.best.job_id == best
    job = handle.best_job
    record = job.refresh()
    assert record.status == "SUCCEEDED", record.error
    assert load_results(record) == {"loss": pytest.approx((0.009 - 0.01) ** 2 + 0.5), "seen": 0.009}
    assert "deleted its TrainJob" in record.info["phase"]


# -- the budget: --max-cost stops Katib starting trials -------------------------------------
PRICE = 3.6  # USD per node hour on the priced kf backend: a trial of 1000 s costs $1.00
RUN_S = 1000


@pytest.fixture
def priced_kf(cluster, nbscale_home):
    """The kf backend with a price per node hour."""
    config = nbscale_home / "config.toml"
    text = config.read_text()
    config.write_text(
        text.replace("[backends.kf]\n", f"[backends.kf]\nprice_per_node_hour = {PRICE}\n")
    )
    return cluster


def _stamp(t: float) -> str:
    return datetime.datetime.fromtimestamp(int(t), datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def playing_katib(api, katib: KatibController, name: str):
    """Katib between two of nbscale's looks: its Experiment controller makes the Trials its
    spec allows, stamped now, and they run (the controller passes again on their events until
    it has nothing to do, so the Experiment's status counts them); before the next look they
    end, each ``RUN_S`` after its start, having logged the objective, and nbscale looks before
    the controller comes back; and so on. The tick to call on each look, and the Trials made,
    in order."""
    made: list[str] = []
    phase = ["make"]

    def tick(view) -> None:
        if phase[0] == "make":
            while new := katib.reconcile(name, start=_stamp(time.time())):
                for trial in new:
                    katib.running(trial)
                    made.append(trial)
            phase[0] = "end"
            return
        for trial in made:
            t = katib.trial(trial)
            if not any(c["type"] == "Running" and c["status"] == "True"
                       for c in t["status"]["conditions"]):  # fmt: skip
                continue
            katib.report(trial, [f"[rank 0] {metric_line('val_loss', 0.5)}"])
            api.patch_trainjob_status(NS, trial, {"conditions": [condition("Complete")]})
            start = datetime.datetime.fromisoformat(t["status"]["startTime"].replace("Z", "+00:00"))
            assert katib.settle(trial, completion=_stamp(start.timestamp() + RUN_S)) == "Succeeded"
        phase[0] = "make"

    return tick, made


def _experiment_patches(kube) -> list:
    return [
        r
        for r in kube.writes()
        if str(r.method).upper().endswith("PATCH")
        and "/experiments/" in str(r.url)
        and "/status" not in str(r.url)
    ]


def test_max_cost_lowers_the_experiments_trial_count_once_the_spend_reaches_it(
    priced_kf, kube, tmp_path
):
    from nbscale import sweep_runs
    from nbscale.sweeps.table import text
    from tests.support.katib_controller import admit

    api = priced_kf
    katib = KatibController(api, NS)
    backend, sweep, record = start(tmp_path, trials=6, parallel=2, max_cost=1.5)
    name = record.native_id
    # up front each TrainJob gets 250 s, its share; a Trial's time (startTime to
    # completionTime) also holds its wait for nodes, so here each is 1000 s: what the
    # follower, which adds up the Trials' time, refines
    assert (
        katib.experiment(name)["spec"]["trialTemplate"]["trialSpec"]["spec"][
            "activeDeadlineSeconds"
        ]
        == 250
    )
    katib.accept(name)
    tick, made = playing_katib(api, katib, name)

    view = sweep_runs.get(sweep.id).run(on_update=tick, poll=0.01, timeout=60)

    # two trials of $1.00 each reached the $1.50: Katib's webhook admits no maxTrialCount
    # at or below the Trials it has made, so nbscale asked for the least it admits: 3
    exp = katib.experiment(name)
    assert exp["spec"]["maxTrialCount"] == 3
    assert exp["spec"]["parallelTrialCount"] == 2 and exp["spec"]["maxFailedTrialCount"] == 2
    (patch,) = _experiment_patches(kube)
    assert patch.data["spec"] == {"maxTrialCount": 3}
    edited_to_two = {**exp, "spec": {**exp["spec"], "maxTrialCount": 2}}
    assert any(
        "greater than status.trials" in e
        for e in admit(edited_to_two, {**exp, "status": {**exp["status"], "trials": 2}})
    )
    # Katib made the one more it was allowed and no other; the sweep ended when it had
    assert len(made) == 3 and {t["metadata"]["name"] for t in katib.trials(name)} == set(made)
    (done,) = [c for c in exp["status"]["conditions"] if c["type"] == "Succeeded"]
    assert done["reason"] == "ExperimentMaxTrialsReached"
    assert view.status == SUCCEEDED and get_sweep(get_store(), sweep.id).status == "SUCCEEDED"
    assert [t.status for t in view.trials] == [SUCCEEDED] * 3
    # each trial's cost: its 1000 s on one node at $3.60 an hour
    assert [t.cost for t in view.trials] == [pytest.approx(1.0)] * 3
    assert "$1.00" in text(view)
    # the note says why no more trials started, in the view and in the store
    rec = get_sweep(get_store(), sweep.id)
    (note,) = [n for n in rec.info["notes"] if n.startswith("budget:")]
    assert "$2.00 spent" in note and "--max-cost $1.50 is reached" in note
    assert "lowered from 6 to 3" in note and note in view.notes
    assert rec.info["budget"] == {"spent": 2.0, "max_trial_count": 3}
    # following it again (a kernel that came back) edits nothing more
    sweep_runs.get(sweep.id).run(poll=0.01, timeout=10)
    assert len(_experiment_patches(kube)) == 1


def test_a_sweep_without_max_cost_runs_all_its_trials_whatever_they_cost(priced_kf, kube, tmp_path):
    from nbscale import sweep_runs

    api = priced_kf
    katib = KatibController(api, NS)
    backend, sweep, record = start(tmp_path, trials=3, parallel=2)
    name = record.native_id
    katib.accept(name)
    tick, made = playing_katib(api, katib, name)

    view = sweep_runs.get(sweep.id).run(on_update=tick, poll=0.01, timeout=60)

    assert view.status == SUCCEEDED and len(made) == 3
    assert [t.cost for t in view.trials] == [pytest.approx(1.0)] * 3  # $3.00 in all
    assert _experiment_patches(kube) == []
    assert katib.experiment(name)["spec"]["maxTrialCount"] == 3
    assert not [n for n in view.notes if n.startswith("budget:")]


def playing_katib_alone(api, katib: KatibController, name: str, run_s: int = RUN_S) -> list[str]:
    """Katib with no one following the sweep: its controllers make the Trials its spec
    allows and run each to the end (``run_s`` after its start, the objective logged), until
    the Experiment has completed. The Trials made, in order."""
    made: list[str] = []
    t0 = time.time()
    while new := katib.reconcile(name, start=_stamp(t0 + len(made) * run_s)):
        for trial in new:
            katib.running(trial)
            made.append(trial)
            katib.report(trial, [f"[rank 0] {metric_line('val_loss', 0.5)}"])
            api.patch_trainjob_status(NS, trial, {"conditions": [condition("Complete")]})
            t = katib.trial(trial)
            start = datetime.datetime.fromisoformat(t["status"]["startTime"].replace("Z", "+00:00"))
            assert katib.settle(trial, completion=_stamp(start.timestamp() + run_s)) == "Succeeded"
    return made


def test_max_cost_with_max_runtime_caps_the_trials_up_front_with_no_one_following(
    priced_kf, kube, tmp_path
):
    api = priced_kf
    katib = KatibController(api, NS)
    # a trial costs at most 1000 s x 1 node x $3.60/h = $1.00: $3.50 pays for 3 of the 5
    backend, sweep, record = start(tmp_path, trials=5, parallel=2, max_cost=3.5, max_runtime=RUN_S)
    name = record.native_id
    exp = katib.experiment(name)
    validate_experiment(exp)
    assert exp["spec"]["maxTrialCount"] == 3 and exp["spec"]["parallelTrialCount"] == 2
    assert exp["spec"]["maxFailedTrialCount"] <= 3
    template = exp["spec"]["trialTemplate"]["trialSpec"]
    assert template["spec"]["activeDeadlineSeconds"] == RUN_S  # the trial's own bound
    katib.accept(name)  # Katib's webhook admits it
    made = playing_katib_alone(api, katib, name)
    assert len(made) == 3  # Katib itself stopped: nbscale never looked
    (done,) = [
        c for c in katib.experiment(name)["status"]["conditions"] if c["type"] == "Succeeded"
    ]
    assert done["reason"] == "ExperimentMaxTrialsReached"
    assert _experiment_patches(kube) == []
    note = " ".join(get_sweep(get_store(), sweep.id).info["notes"])
    assert "Katib starts at most 3 trials (maxTrialCount)" in note
    view = backend.view(get_sweep(get_store(), sweep.id))
    assert sum(t.cost for t in view.trials) == pytest.approx(3.0) and view.status == SUCCEEDED
    assert any(n.startswith("cost so far $3.00 for 3 trials") for n in view.notes)  # the total


def test_max_cost_without_max_runtime_gives_each_trial_its_share_as_its_deadline(
    priced_kf, kube, tmp_path
):
    api = priced_kf
    katib = KatibController(api, NS)
    # $1.50 for 6 trials on one node at $3.60/h: 250 s each
    backend, sweep, record = start(tmp_path, trials=6, parallel=2, max_cost=1.5)
    name = record.native_id
    exp = katib.experiment(name)
    validate_experiment(exp)
    assert exp["spec"]["maxTrialCount"] == 6
    assert exp["spec"]["trialTemplate"]["trialSpec"]["spec"]["activeDeadlineSeconds"] == 250
    katib.accept(name)
    made = playing_katib_alone(api, katib, name, run_s=250)  # each runs to its deadline
    for trial in made:
        validate_trainjob(katib.trainjob(trial))
        assert katib.trainjob(trial)["spec"]["activeDeadlineSeconds"] == 250
    view = backend.view(get_sweep(get_store(), sweep.id))
    assert len(made) == 6 and sum(t.cost for t in view.trials) == pytest.approx(1.5)
    note = " ".join(get_sweep(get_store(), sweep.id).info["notes"])
    assert "each trial's TrainJob runs at most 250 s" in note


def test_a_budget_that_pays_for_no_trial_is_refused_before_anything_is_sent(
    priced_kf, kube, tmp_path
):
    with pytest.raises(SpecError, match=r"one trial may cost \$1.00"):
        start(tmp_path, trials=3, max_cost=0.5, max_runtime=RUN_S)
    with pytest.raises(SpecError, match="less than 60 s"):
        start(tmp_path, trials=100, max_cost=0.5)
    assert KatibController(priced_kf, NS).experiments() == []
