"""The shared remote lifecycle: the wait loop (its timeout error and progress lines), the
canonical bundle (deterministic bytes), the dry-run rendering and the log mirror; no process,
no server, no emulator."""

from __future__ import annotations

import hashlib
import io
import json
import types
import zipfile
from pathlib import Path

import pytest
import yaml

from nbscale import bundle
from nbscale.backends.base import DryRun, JobBackend
from nbscale.backends.remote.lifecycle import (
    RemoteJobBackend,
    canonical_bundle,
    route_line,
    wait_for,
)
from nbscale.config import BackendConfig
from nbscale.errors import BackendUnavailable, NbscaleError, WaitTimeout
from nbscale.store import get_store
from nbscale.store.endpoints import EndpointRecord
from nbscale.store.jobs import FAILED, PENDING, RUNNING, SUCCEEDED, JobRecord, get_job, insert_job


# -- the wait loop ----------------------------------------------------------------------------
class Clock:
    """A clock that moves only when the loop sleeps."""

    def __init__(self):
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def states(*seq):
    it = iter(seq)
    last = [None]

    def poll():
        last[0] = next(it, last[0])
        return last[0]

    return poll


def test_a_wait_that_runs_out_of_time_says_what_where_and_what_to_do():
    clock = Clock()
    with pytest.raises(WaitTimeout) as caught:
        wait_for(
            "job train-1",
            states("PENDING", "RUNNING"),
            str,
            lambda s: s == "SUCCEEDED",
            timeout=30,
            interval=10,
            hint="follow it with nbscale logs -f train-1",
            detail=lambda s: "pods starting" if s == "PENDING" else "training",
            clock=clock,
            sleep=clock.sleep,
        )
    err = caught.value
    assert isinstance(err, TimeoutError) and isinstance(err, NbscaleError)
    assert str(err) == (
        "job train-1 is still RUNNING after 30 s (training) (follow it with nbscale logs -f train-1)"
    )
    assert (err.what, err.state, err.timeout, err.detail) == (
        "job train-1",
        "RUNNING",
        30,
        "training",
    )
    assert clock.sleeps == [10] * 4  # polled at 0, 10, 20, 30 and 40, past the deadline


def test_the_hint_can_be_made_from_the_last_value_and_no_timeout_waits_on():
    clock = Clock()
    with pytest.raises(WaitTimeout, match=r"\(ask ns-b\)$"):
        wait_for(
            "endpoint 'a'",
            states({"ns": "ns-a"}, {"ns": "ns-b"}),
            lambda v: "STARTING",
            lambda v: False,
            timeout=1,
            interval=1,
            hint=lambda v: f"ask {v['ns']}",
            clock=clock,
            sleep=clock.sleep,
        )
    clock = Clock()
    done = wait_for(
        "x",
        states(*["A"] * 50, "B"),
        str,
        lambda s: s == "B",
        timeout=None,
        interval=60,
        hint="",
        clock=clock,
        sleep=clock.sleep,
    )
    assert done == "B" and len(clock.sleeps) == 50


def test_progress_is_one_line_per_change_of_state_on_a_stream_when_asked():
    clock = Clock()
    out = io.StringIO()
    seen = []
    got = wait_for(
        "endpoint digits",
        states("Creating", "Creating", "Creating", "Updating", "InService"),
        str,
        lambda s: s == "InService",
        timeout=600,
        interval=5,
        hint="",
        progress=out,
        on_update=seen.append,
        clock=clock,
        sleep=clock.sleep,
    )
    assert got == "InService"
    assert seen == ["Creating", "Creating", "Creating", "Updating", "InService"]
    assert out.getvalue() == (
        "endpoint digits: Creating (0 s)\n"
        "endpoint digits: Updating (15 s)\n"
        "endpoint digits: InService (20 s)\n"
    )
    # the same wait without a stream prints nothing
    clock = Clock()
    wait_for(
        "e",
        states("A", "B"),
        str,
        lambda s: s == "B",
        timeout=9,
        interval=1,
        hint="",
        clock=clock,
        sleep=clock.sleep,
    )


def test_a_failure_is_raised_at_once_as_the_platform_says_it():
    clock = Clock()
    boom = BackendUnavailable("endpoint 'x' failed: CrashLoopBackOff", "kubectl describe isvc x")
    with pytest.raises(BackendUnavailable, match="CrashLoopBackOff") as caught:
        wait_for(
            "endpoint 'x'",
            states("STARTING", "FAILED"),
            str,
            lambda s: s == "READY",
            timeout=600,
            interval=1,
            hint="",
            failure=lambda s: boom if s == "FAILED" else None,
            clock=clock,
            sleep=clock.sleep,
        )
    assert caught.value is boom and clock.sleeps == [1]


def _job_with(records):
    """A ``Job`` whose record comes from a list (``Job.wait`` only calls ``refresh``)."""
    from nbscale.jobs import Job

    job = Job.__new__(Job)
    job._record = records[0]
    it = iter(records)

    def refresh():
        job._record = next(it, job._record)
        return job._record

    job.refresh = refresh
    return job


def _record(status: str, phase: str = "training", **kw) -> JobRecord:
    return JobRecord(
        id="train-1",
        name="train",
        backend="b",
        backend_type="t",
        status=status,
        spec={},
        created=0.0,
        info={"phase": phase},
        **kw,
    )


def test_job_wait_is_the_shared_loop_a_timeout_error_and_progress_lines():
    job = _job_with([_record(PENDING, "queued"), _record(RUNNING)])
    with pytest.raises(TimeoutError) as caught:
        job.wait(timeout=0.05, poll=0.01)
    assert isinstance(caught.value, WaitTimeout)
    assert str(caught.value).startswith("job train-1 is still RUNNING after 0.05 s (training)")
    assert "nbscale cancel train-1" in str(caught.value)
    out = io.StringIO()
    job = _job_with([_record(PENDING, "queued"), _record(RUNNING), _record(SUCCEEDED, "ended")])
    assert job.wait(timeout=5, poll=0.001, progress=out).status == SUCCEEDED
    lines = out.getvalue().splitlines()
    assert [line.rsplit(" (", 1)[0] for line in lines] == [
        "job train-1: PENDING, queued",
        "job train-1: RUNNING, training",
        "job train-1: SUCCEEDED, ended",
    ]
    job = _job_with([_record(FAILED, "ended", error="rank 1: boom", failed_rank=1)])
    with pytest.raises(NbscaleError, match="job train-1 failed: rank 1: boom"):
        job.wait(raise_on_failure=True)


def _endpoint(status: str, sm_state: str | None = None, error: str | None = None):
    config = {"namespace": "team-a"}
    if sm_state:
        config["sagemaker"] = {"last": {"EndpointStatus": sm_state}}
    return EndpointRecord("digits", "b", "t", status, "", 0, "", 1, 1, config=config, error=error)


def _cloud_endpoints(cls, module, monkeypatch, records):
    backend = cls.__new__(cls)
    backend.store = None
    backend.settings = types.SimpleNamespace(poll_seconds=0.001)
    it = iter(records)
    last = [records[0]]
    monkeypatch.setattr(module, "get_endpoint", lambda store, name: last[0])

    def status(rec):
        last[0] = next(it, last[0])
        return last[0]

    backend.status = status
    return backend


def test_the_cloud_endpoint_backends_wait_through_the_same_loop(monkeypatch):
    from nbscale.backends.kubeflow import endpoints as kf
    from nbscale.backends.sagemaker import endpoints as sm

    out = io.StringIO()
    records = [_endpoint("STARTING", "Creating"), _endpoint("READY", "InService")]
    backend = _cloud_endpoints(sm.SageMakerEndpoints, sm, monkeypatch, records)
    backend.progress = out
    assert backend.wait("digits", timeout=5).status == "READY"
    assert out.getvalue().startswith("endpoint digits: Creating (0 s)\n")
    backend = _cloud_endpoints(
        sm.SageMakerEndpoints, sm, monkeypatch, [_endpoint("FAILED", "Failed", "ping failed")]
    )
    backend.progress = None
    with pytest.raises(NbscaleError, match="endpoint digits failed: ping failed"):
        backend.wait("digits", timeout=5)
    backend = _cloud_endpoints(
        sm.SageMakerEndpoints, sm, monkeypatch, [_endpoint("STARTING", "Creating")]
    )
    backend.progress = None
    with pytest.raises(WaitTimeout, match="endpoint digits is still Creating after 0.02 s"):
        backend.wait("digits", timeout=0.02)

    backend = _cloud_endpoints(
        kf.KServeEndpoints, kf, monkeypatch, [_endpoint("STARTING", error="pulling the image")]
    )
    with pytest.raises(WaitTimeout) as caught:
        backend.wait("digits", timeout=0.02)
    assert str(caught.value) == (
        "endpoint 'digits' is still STARTING after 0.02 s (pulling the image) "
        "(kubectl -n team-a describe isvc digits)"
    )
    backend = _cloud_endpoints(
        kf.KServeEndpoints, kf, monkeypatch, [_endpoint("FAILED", error="x")]
    )
    with pytest.raises(BackendUnavailable, match="endpoint 'digits' failed: x"):
        backend.wait("digits", timeout=5)


# -- the canonical bundle ---------------------------------------------------------------------
def _zip(path: Path, entries: dict[str, bytes], date, compress, mode) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name, date_time=date)
            info.compress_type = compress
            info.external_attr = mode << 16
            zf.writestr(info, data)
    return path


def test_the_canonical_bundle_is_the_same_bytes_whenever_it_was_captured(tmp_path):
    entries = {"manifest.json": b'{"a": 1}', "signature": b"sig", "inputs/000-x.pkl": b"x" * 5000}
    one = _zip(tmp_path / "one.zip", entries, (2024, 5, 1, 12, 0, 0), zipfile.ZIP_DEFLATED, 0o644)
    two = _zip(tmp_path / "two.zip", entries, (2025, 1, 2, 3, 4, 6), zipfile.ZIP_STORED, 0o600)
    (tmp_path / "out").mkdir()
    a = canonical_bundle(one)
    b = canonical_bundle(two, tmp_path / "out" / "cell.zip")
    assert a == tmp_path / "one.canonical.zip" and b == tmp_path / "out" / "cell.zip"
    assert a.read_bytes() == b.read_bytes()
    assert a.stat().st_mode & 0o777 == 0o600
    with zipfile.ZipFile(a) as zf:
        assert {i.filename: zf.read(i) for i in zf.infolist()} == entries
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    # a canonical bundle is its own canonical form: nothing is copied
    assert canonical_bundle(a) == a
    assert canonical_bundle(a, tmp_path / "unused.zip") == a
    assert not (tmp_path / "unused.zip").exists()
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_bundle_nbscale_writes_is_canonical_and_its_digest_stable(tmp_path):
    parts = {"cell.py": b"y = x + 1\n", "inputs/000-x.pkl": b"\x80\x04K\x01."}
    first = bundle.write(tmp_path / "a" / "cell.zip", {"kind": "cell"}, parts, key=b"k" * 32)
    second = bundle.write(tmp_path / "b" / "cell.zip", {"kind": "cell"}, parts, key=b"k" * 32)
    assert canonical_bundle(first) == first  # already canonical: sent as it is
    digest = hashlib.sha256(first.read_bytes()).hexdigest()
    assert hashlib.sha256(second.read_bytes()).hexdigest() == digest


# -- the dry run ------------------------------------------------------------------------------
DOCS = [
    {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "keys"}},
    {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob", "spec": {"b": 1, "a": 2}},
]


def test_a_dry_run_text_is_exactly_the_documents_and_its_notes_are_commentary():
    yaml_run = DryRun(DOCS, "yaml")
    assert yaml_run.text() == yaml.safe_dump_all(DOCS, sort_keys=False, default_flow_style=False)
    assert list(yaml.safe_load_all(yaml_run.text())) == DOCS
    assert str(yaml_run) == yaml_run.text()
    request = {"TrainingJobName": "dry-1", "ResourceConfig": {"InstanceCount": 2}}
    assert DryRun([request], "json").text() == json.dumps(request, indent=2) + "\n"
    assert json.loads(DryRun(DOCS, "json").text()) == DOCS  # several documents: a list
    noted = DryRun(DOCS, "yaml", ["Secret keys would be created or updated"])
    assert noted.text() == yaml_run.text()  # notes never go where the documents go
    assert noted.commentary() == "Secret keys would be created or updated\n"
    assert noted.with_notes("dry run").commentary() == (
        "dry run\nSecret keys would be created or updated\n"
    )
    assert noted.to_dict() == {
        "format": "yaml",
        "documents": DOCS,
        "notes": ["Secret keys would be created or updated"],
    }


def test_show_dry_run_splits_documents_to_stdout_and_commentary_to_stderr():
    import io

    from nbscale.faces.text import show_dry_run

    out, err = io.StringIO(), io.StringIO()
    show_dry_run(
        DryRun(DOCS, "yaml", ["a note"]), "dry run: nothing submitted", "", out=out, err=err
    )
    assert list(yaml.safe_load_all(out.getvalue())) == DOCS
    assert err.getvalue() == "dry run: nothing submitted\na note\n"


class Inline(JobBackend):
    type = "inline"

    def submit(self, record, secrets=None):
        return record

    status = cancel = submit

    def ranks(self, record):
        return []

    def logs(self, record, rank, offset=0, max_bytes=1 << 20):
        raise NotImplementedError

    def metrics(self, record):
        return []


def test_a_backend_that_sends_nothing_shows_its_spec_and_has_a_no_op_prewarm():
    backend = Inline(BackendConfig("mine", "inline"), None)
    assert backend.sends_request is False
    assert Inline.prewarm(BackendConfig("mine", "inline")) is None  # a classmethod, no getattr
    record = _record(PENDING)
    record.spec = {"name": "train", "entry": {"kind": "module", "target": "m"}}
    dry = backend.dry_run(record)
    assert dry.format == "json" and dry.documents == [record.spec]
    assert dry.notes == ["the inline backend sends no platform request: it runs this spec"]


# -- the remote base: container spec, log mirror, end -----------------------------------------
class Platform(RemoteJobBackend):
    type = "fake"
    file_mount = "/opt/files"
    container_drops = ("secret_env",)

    def __init__(self, config, store):
        super().__init__(config, store)
        self.fetches = 0

    def submit(self, record, secrets=None):
        return record

    status = cancel = submit

    def dry_run(self, record):
        return DryRun([{"kind": "Request", "spec": self.container_spec(record.spec)}], "json")

    def fetch_logs(self, record, jobdir):
        self.fetches += 1
        path = jobdir.log(0)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as fh:
            fh.write(f"line {self.fetches}\n")


def _stored(tmp_path, status=RUNNING) -> JobRecord:
    record = JobRecord(
        id="fake-1",
        name="fake",
        backend="fake",
        backend_type="fake",
        status=status,
        spec={"nodes": 1, "entry": {"kind": "script", "target": str(tmp_path / "train.py")}},
        created=1.0,
        native_id="native-1",
        info={"job_dir": str(tmp_path / "job")},
    )
    insert_job(get_store(), record)
    return record


def test_the_container_spec_has_no_local_path(tmp_path):
    backend = Platform(BackendConfig("fake", "fake"), get_store())
    spec = {
        "entry": {"kind": "script", "target": str(tmp_path / "train.py")},
        "checkpoint_dir": str(tmp_path / "ckpt"),
        "secret_env": [],
    }
    shown = backend.container_spec(spec)
    assert shown == {
        "entry": {"kind": "script", "target": "/opt/files/train.py"},
        "checkpoint_dir": None,
        # log_metric prints metric lines in the container: the platform and the mirror read them
        "env": {"NBSCALE_METRIC_LINES": "1"},
    }
    assert spec["entry"]["target"] == str(tmp_path / "train.py")  # the caller's is left alone
    bundled = backend.container_spec({"entry": {"kind": "bundle", "target": "/x/c.zip"}})
    assert bundled["entry"]["target"] == "cell.zip"
    assert backend.sends_request is True


def test_logs_are_mirrored_at_most_every_interval_and_no_more_once_final(tmp_path):
    backend = Platform(BackendConfig("fake", "fake"), get_store())
    record = _stored(tmp_path)
    assert backend.ranks(record) == [0]
    assert backend.logs(record, 0).text == "line 1\n"  # within the interval: not fetched again
    backend._log_times[record.id] -= 5
    assert backend.logs(record, 0).text == "line 1\nline 2\n"
    backend.mirror_logs(record, final=True)
    assert backend.fetches == 3
    assert get_job(get_store(), record.id).info["logs_complete"] is True
    backend._log_times[record.id] -= 5
    backend.ranks(record)
    assert backend.fetches == 3 and backend.metrics(record) == []
    ended = JobRecord(**{**record.__dict__, "status": SUCCEEDED})
    assert backend.log_interval(ended) is None  # an ended job's text came with the final fetch


def test_the_end_collects_the_outputs_and_names_the_root_cause(tmp_path):
    backend = Platform(BackendConfig("fake", "fake"), get_store())
    record = _stored(tmp_path)
    collected = {
        "error": {"rank": 1, "message": "boom", "traceback": "Traceback..."},
        "exit_code": 1,
        "restarts": 2,
    }
    assert backend.end(record, FAILED, "Failed: BackoffLimitExceeded", {}, lambda: collected)
    ended = get_job(get_store(), record.id)
    assert (ended.status, ended.error, ended.failed_rank, ended.exit_code, ended.restarts) == (
        FAILED,
        "rank 1: boom",
        1,
        1,
        2,
    )
    assert ended.info["phase"] == "ended" and ended.info["traceback"] == "Traceback..."
    assert not backend.end(record, SUCCEEDED, None, {}, lambda: {})  # ended already


def test_a_job_whose_outputs_cannot_be_had_fails(tmp_path):
    backend = Platform(BackendConfig("fake", "fake"), get_store())
    record = _stored(tmp_path)

    def gone():
        raise NbscaleError("no results.zip")

    assert backend.end(record, SUCCEEDED, None, {}, gone)
    ended = get_job(get_store(), record.id)
    assert ended.status == FAILED
    assert ended.error == "the job's outputs could not be collected: no results.zip"


def test_a_line_goes_to_its_rank_or_to_the_nodes_first_rank_with_its_source():
    assert route_line("[rank 3] loss 0.5", 2, "node 1") == (3, "loss 0.5")
    assert route_line("[rank 3]x", 2, "node 1") == (3, "x")
    assert route_line("Collecting torch", 2, "node 1") == (2, "[node 1] Collecting torch")
    assert route_line("", 4, "algo-2") == (4, "[algo-2] ")


class Metered(Platform):
    """A platform whose mirror brings each fetch's text: rank 0's metric lines among others."""

    def __init__(self, config, store, texts):
        super().__init__(config, store)
        self.texts = list(texts)

    def fetch_logs(self, record, jobdir):
        if not self.texts:
            return
        for rank, text in self.texts.pop(0).items():
            path = jobdir.log(rank)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as fh:
                fh.write(text)

    def log_interval(self, record):
        return 0.0


def test_metrics_come_from_the_metric_lines_of_the_mirrored_logs_while_the_job_runs(tmp_path):
    from nbscale.sweeps.lines import metric_line

    first = metric_line("loss", 0.5, step=1, when=100.0)
    second = metric_line("loss", 0.25, step=2, when=101.5)
    backend = Metered(
        BackendConfig("fake", "fake"),
        get_store(),
        [
            {0: f"epoch 1\n{first}\n[algo-1] pip said {first[:9]}\n{second[:20]}"},
            {0: second[20:] + "\n", 1: f"{metric_line('acc', 0.9, when=101.0)}\n"},
        ],
    )
    record = _stored(tmp_path)
    assert backend.metrics(record) == [
        {"name": "loss", "value": 0.5, "step": 1, "time": 100.0, "rank": 0}
    ]  # the half-written line is not read yet
    got = backend.metrics(record)
    assert got == [
        {"name": "loss", "value": 0.5, "step": 1, "time": 100.0, "rank": 0},
        {"name": "acc", "value": 0.9, "step": None, "time": 101.0, "rank": 1},
        {"name": "loss", "value": 0.25, "step": 2, "time": 101.5, "rank": 0},
    ]
    assert backend.metrics(record) == got  # read on from where it stopped: nothing twice


def test_a_record_that_came_home_and_its_metric_line_count_once(tmp_path):
    from nbscale.runtime.jobdir import JobDir
    from nbscale.sweeps.lines import metric_line

    line = metric_line("loss", 0.5, step=1, when=100.0)
    backend = Metered(BackendConfig("fake", "fake"), get_store(), [{0: line + "\n"}])
    record = _stored(tmp_path)
    jobdir = JobDir(record.info["job_dir"]).make()
    jobdir.metrics_file(0).parent.mkdir(parents=True, exist_ok=True)
    jobdir.metrics_file(0).write_text(
        '{"name": "loss", "value": 0.5, "step": 1, "time": 100.0001, "rank": 0}\n'
    )
    assert [m["value"] for m in backend.metrics(record)] == [0.5]


def test_metrics_read_so_far_are_kept_when_the_log_cannot_be_fetched_now(tmp_path):
    from nbscale.errors import NbscaleError
    from nbscale.sweeps.lines import metric_line

    class Flaky(Metered):
        def fetch_logs(self, record, jobdir):
            if not self.texts:
                raise NbscaleError("reading CloudWatch Logs: the network is down")
            super().fetch_logs(record, jobdir)

    line = metric_line("loss", 0.5, step=1, when=100.0)
    backend = Flaky(BackendConfig("fake", "fake"), get_store(), [{0: line + "\n"}])
    record = _stored(tmp_path)
    assert [m["value"] for m in backend.metrics(record)] == [0.5]
    assert [m["value"] for m in backend.metrics(record)] == [0.5]  # not an error
