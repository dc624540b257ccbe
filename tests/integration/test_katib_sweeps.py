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

import json
import time
from types import SimpleNamespace

import pytest

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
    job = JobSpec(entry=Entry.from_path(str(script)), name="tiny", backend="kf", nodes=1)
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
    assert api.core.read_namespaced_secret("nbscale-keys", NS)  # as a job makes it
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

    # the first logs its objective, the collector reports it; its TrainJob completes
    katib.report(first, [f"[rank 0] {metric_line('val_loss', 0.5)}",
                         f"[rank 0] {metric_line('val_loss', 0.25)}"])  # fmt: skip
    view = backend.view(get_sweep(get_store(), sweep.id))
    (mine,) = [t for t in view.trials if t.job_id == first]
    assert mine.status == RUNNING and mine.last == 0.25
    assert mine.value is None and view.best is None
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
