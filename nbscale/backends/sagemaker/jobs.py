"""The SageMaker job backend: ``%%train`` cells, scripts and modules as training jobs.

submit: the bundle and the spec go to S3 content-addressed (nothing is sent twice),
the signing key to a Secrets Manager secret (only its ARN travels), then
CreateTrainingJob (``request.build``). status: DescribeTrainingJob, mapped by
``states.map_state``, its ``SecondaryStatusTransitions`` written to the job's log as
they appear; when the job completes, ``model.tar.gz`` (what SageMaker collected from
``/opt/ml/model``) is downloaded and unpacked, ``results.zip`` lands in the job's local
``outputs/`` where ``nbscale.results`` verifies it before loading (only algo-1's
``/opt/ml/model`` is relied on; other hosts' node records come from their log streams).
logs: CloudWatch
Logs, every instance's stream, split by rank (``logs.sync``) and mirrored into the job's folder
by ``RemoteJobBackend``. cancel: StopTrainingJob.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ... import storage
from ...errors import BackendUnavailable, NbscaleError, SpecError
from ...runtime.jobdir import JobDir
from ...specs import JobSpec
from ...store.jobs import ACTIVE, FAILED, SUCCEEDED, JobRecord, add_event, get_job, update_job
from ..base import DryRun
from ..remote.lifecycle import RemoteJobBackend, Travel, canonical_bundle
from . import logs as cw
from . import request as req
from . import secrets as sm_secrets
from .settings import SageMakerSettings, settings
from .states import map_state

KEY_PURPOSES = ("bundle",)
LOG_SETTLE_S = 30.0  # after the end, CloudWatch may still deliver the last lines this long


def client_error(exc: Exception, what: str) -> NbscaleError:
    """One message for an AWS error: what failed, AWS's code and message, what to do."""
    from botocore.exceptions import ClientError, NoCredentialsError, ParamValidationError

    if isinstance(exc, NoCredentialsError):
        return BackendUnavailable(
            f"{what}: no AWS credentials",
            "set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
        )
    if isinstance(exc, ParamValidationError):
        return NbscaleError(f"{what}: {exc}", "a value the AWS API refuses; check the settings")
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code, message = err.get("Code", ""), err.get("Message", "")
        hint = {
            "AccessDeniedException": "the credentials (or the role) lack a SageMaker permission",
            "ResourceLimitExceeded": "ask AWS for a higher quota of that instance type, or pick another",
            "ValidationException": "a setting of the backend or the job has a value SageMaker refuses",
        }.get(code)
        return NbscaleError(f"{what}: {code}: {message}", hint)
    return BackendUnavailable(f"{what}: {exc}", "check the network, the region and endpoint_url")


def _inspect_bundle(spec: dict[str, Any], store: storage.ObjectStore, folder: Path):
    local = Path(spec["entry"]["target"])
    if not local.is_file():
        raise NbscaleError(f"the cell bundle {local} is gone", "run the cell again")
    canonical = canonical_bundle(local, folder / "cell.zip")
    digest = storage.sha256_file(canonical)
    return store.base.child("bundles", "sha256", digest, "cell.zip").uri, canonical


# objects this process put or found in S3 recently: an unchanged re-run sends no HEAD.
# Content-addressed keys never change meaning; the TTL covers a lifecycle rule or a
# person deleting one (SageMaker would then fail the job at once, naming the channel).
KNOWN_TTL = 600.0
_known: dict[str, tuple[float, int]] = {}
_known_lock = threading.Lock()
_wheel_sets: dict[tuple, list[tuple[str, str]]] = {}  # wheel files (name, size, mtime) -> hashes


def put_once(store: storage.ObjectStore, path: Path, uri: str, name: str, area: str) -> str:
    size = path.stat().st_size
    where = f"{store.client.meta.endpoint_url} {uri}"
    with _known_lock:
        seen = _known.get(where)
    if seen and seen[1] == size and time.monotonic() - seen[0] < KNOWN_TTL:
        return uri
    uri = store.put(path, name, area=area)  # a HEAD, and the upload when it is not there
    with _known_lock:
        _known[where] = (time.monotonic(), size)
    return uri


def env_secret_name(settings: SageMakerSettings, job_id: str) -> str:
    return f"nbscale/{settings.name}/jobs/{job_id}/env"


def _stamp(value: Any) -> float | None:
    if value is None:
        return None
    return value.timestamp() if hasattr(value, "timestamp") else float(value)


def _prefix(uri: str) -> str:
    return uri.rsplit("/", 1)[0] + "/"


class SageMakerBackend(RemoteJobBackend):
    type = "sagemaker"
    supports_spot = True
    file_mount = f"{req.DATA}/code"  # a script or notebook alone, in the code channel

    @classmethod
    def prewarm(cls, bconf) -> None:
        from .settings import prewarm

        prewarm(bconf)

    def __init__(self, config, store):
        super().__init__(config, store)
        self.settings: SageMakerSettings = settings(config)
        self._clients: dict[str, Any] = {}
        self._described: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    # -- plumbing ---------------------------------------------------------------------
    def client(self, service: str):
        with self._lock:
            if service not in self._clients:
                self._clients[service] = self.settings.client(service)
            return self._clients[service]

    def object_store(self) -> storage.ObjectStore:
        store = storage.ObjectStore.from_options(self.settings.storage_options())
        store._client = self.client("s3")  # this process's S3 client: no second model load
        return store

    def limits(self) -> dict[str, int]:
        # SageMaker's own caps: a job runs on at most 100 instances for at most 28 days
        return {"nodes": 100, "max_runtime": 28 * 24 * 3600}

    def check(self) -> dict[str, Any]:
        try:
            self.settings.require_credentials()
            self.client("sagemaker").list_training_jobs(MaxResults=1)
        except NbscaleError as exc:
            return {"reachable": False, "detail": str(exc)}
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            return {"reachable": False, "detail": str(client_error(exc, "ListTrainingJobs"))}
        return {"reachable": True, "detail": f"SageMaker in {self.settings.region}"}

    # -- submit -----------------------------------------------------------------------
    def validate(self, spec: JobSpec) -> None:
        kind = spec.entry.kind
        for warning in self.check_travel(spec.to_dict()):
            print(f"nbscale: warning: {warning}", file=sys.stderr, flush=True)
        if kind == "notebook":  # papermill runs it: the runtime is the step closure
            if not Path(spec.entry.target).is_file():
                raise SpecError("entry", f"notebook {spec.entry.target} does not exist")
            folder = self.settings.wheelhouse
            own_image = spec.image or self.settings.image
            if folder and not own_image and not any(Path(folder).glob("papermill-*.whl")):
                raise SpecError(
                    f"[backends.{self.settings.name}] wheelhouse",
                    f"{folder} has no papermill wheel, which a notebook job runs with",
                    "build the notebook closure there: python -m nbscale.runtime.wheelhouse "
                    f"--kind step -o {folder}",
                )
        if kind == "bundle" and not Path(spec.entry.target).is_file():
            raise SpecError("entry", f"cell bundle {spec.entry.target} does not exist")
        req.check_spec(spec.to_dict(), self.settings)

    def _spec_file(
        self, record: JobRecord, spec: dict[str, Any], folder: Path, travel: Travel | None = None
    ) -> Path:
        from ...runtime.launch import encode_spec

        path = folder / "spec.b64"
        path.write_text(encode_spec(self.container_spec(spec, travel)))
        return path

    def in_container(self, what: str, uri: str) -> str:
        # SageMaker copies each channel's prefix to /opt/ml/input/data/<channel> first
        return f"{req.DATA}/{what}/{uri.rsplit('/', 1)[1]}"

    def training_request(
        self, record: JobRecord, upload: bool, env_secret_arn: str | None = None
    ) -> dict[str, Any]:
        """The exact CreateTrainingJob request; with ``upload`` False nothing is written
        anywhere (``--dry-run``): the S3 locations are computed from the hashes."""
        spec = req.resolve(record.spec, self.settings)  # the node's real processes and GPUs
        if spec.get("secret_env") and env_secret_arn is None:
            env_secret_arn = (
                f"arn:aws:secretsmanager:{self.settings.region}:ACCOUNT:secret:"
                f"{env_secret_name(self.settings, record.id)} (created at submit)"
            )
        store = self.object_store()
        # the job's folder and requirements first: the spec names them
        travel = self.stage_travel(spec, store, upload)
        with tempfile.TemporaryDirectory(prefix="nbscale-sm-") as tmp:
            spec_path = self._spec_file(record, spec, Path(tmp), travel)
            spec_uri = store.base.child(
                "specs", "sha256", storage.sha256_file(spec_path), "spec.b64"
            ).uri
            bundle_uri = local = code_uri = script = None
            if spec["entry"]["kind"] == "bundle":
                bundle_uri, local = _inspect_bundle(spec, store, Path(tmp))
            if travel.code_uri:
                code_uri = travel.code_uri  # a script or notebook is in its folder
            elif spec["entry"]["kind"] in ("script", "notebook"):
                script = Path(spec["entry"]["target"])
                if not script.is_file():
                    raise NbscaleError(
                        f"the {spec['entry']['kind']} {script} is gone", "check the path"
                    )
                code_uri = store.base.child(
                    "code", "sha256", storage.sha256_file(script), script.name
                ).uri
            sm = self.client("secretsmanager")
            if upload:
                # independent requests, sent together: the bundle's upload is the long one
                with ThreadPoolExecutor(4, thread_name_prefix="nbscale-sm-stage") as pool:
                    bundle_f = local and pool.submit(
                        put_once, store, local, bundle_uri, "cell.zip", "bundles"
                    )
                    spec_f = pool.submit(put_once, store, spec_path, spec_uri, "spec.b64", "specs")
                    arn_f = pool.submit(
                        sm_secrets.ensure, sm, self.settings.key_secret_name, KEY_PURPOSES
                    )
                    runtime_f = pool.submit(self._runtime_channel, spec, store, True)
                    code_f = script and pool.submit(
                        put_once, store, script, code_uri, script.name, "code"
                    )
                    bundle_uri = bundle_f.result() if bundle_f else None
                    code_uri = code_f.result() if code_f else code_uri
                    spec_uri, arn, runtime = spec_f.result(), arn_f.result(), runtime_f.result()
            else:
                name = sm_secrets.secret_name(self.settings.key_secret_name, KEY_PURPOSES)
                arn = sm_secrets.lookup(sm, self.settings.key_secret_name, KEY_PURPOSES) or (
                    f"arn:aws:secretsmanager:{self.settings.region}:ACCOUNT:secret:{name} "
                    "(created at submit)"
                )
                runtime = self._runtime_channel(spec, store, False)
        staged = req.Staged(
            bundle_prefix=_prefix(bundle_uri) if bundle_uri else None,
            spec_prefix=_prefix(spec_uri),
            runtime_prefix=runtime,
            key_secret_arn=arn,
            code_prefix=_prefix(code_uri) if code_uri else None,
            requirements_prefix=(
                _prefix(travel.requirements_uri) if travel.requirements_uri else None
            ),
            env_secret_arn=env_secret_arn,
        )
        return req.build(
            record.id, spec, self.settings, staged, metric_names=self.logged_metrics(spec)
        )

    def _runtime_channel(
        self, spec: dict[str, Any], store: storage.ObjectStore, upload: bool
    ) -> str | None:
        """A stock image has no nbscale: its runtime wheels go as the ``runtime`` channel,
        under a prefix named by the hash of the whole set (an unchanged set is not sent)."""
        if spec.get("image") or self.settings.image:
            return None  # an image of its own brings nbscale (the Dockerfile's runtime image)
        # a notebook runs under papermill: the step closure (papermill, ipykernel) goes with it
        kind = "step" if spec.get("entry", {}).get("kind") == "notebook" else "job"
        if self.settings.wheelhouse:
            folder = Path(self.settings.wheelhouse)
        else:
            from ...runtime import wheelhouse

            try:
                folder = wheelhouse.build(kind)
            except wheelhouse.WheelhouseError as exc:
                raise NbscaleError(
                    f"the runtime wheels for a stock image could not be built: {exc}",
                    f"build them once with python -m nbscale.runtime.wheelhouse --kind {kind} "
                    f"-o DIR and set wheelhouse = DIR in [backends.{self.settings.name}], or set "
                    "image",
                ) from None
        wheels = sorted(folder.glob("*.whl"))
        stamp = tuple((w.name, w.stat().st_size, w.stat().st_mtime_ns) for w in wheels)
        with _known_lock:
            cached = _wheel_sets.get(stamp)
        if cached is None:
            cached = [(w.name, storage.sha256_file(w)) for w in wheels]
            with _known_lock:
                _wheel_sets[stamp] = cached
        digests = cached
        set_hash = hashlib.sha256(json.dumps(digests).encode()).hexdigest()
        base = store.base.child("runtime", set_hash)
        complete = base.child("COMPLETE").uri
        where = f"{store.client.meta.endpoint_url} {complete}"
        with _known_lock:
            seen = _known.get(where)
        if seen and time.monotonic() - seen[0] < KNOWN_TTL:
            return base.uri.rstrip("/") + "/"
        if upload and not store.exists(complete):
            for wheel in wheels:
                store.put_at(wheel, base.child(wheel.name).uri)
            with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
                json.dump(digests, fh)
            try:
                store.put_at(fh.name, complete)  # written last
            finally:
                Path(fh.name).unlink(missing_ok=True)
        if upload:
            with _known_lock:
                _known[where] = (time.monotonic(), 0)
        return base.uri.rstrip("/") + "/"

    def _put_env_secret(self, job_id: str, values: dict[str, str]) -> str:
        try:
            return self.client("secretsmanager").create_secret(
                Name=env_secret_name(self.settings, job_id),
                SecretString=json.dumps(values),
                Description="nbscale: the --secret-env values of one training job",
                Tags=[{"Key": "nbscale:job-id", "Value": job_id}],
            )["ARN"]
        except Exception as exc:  # noqa: BLE001 - never the values, only what failed
            raise client_error(exc, "CreateSecret for the job's --secret-env") from None

    def _delete_env_secret(self, arn: str) -> None:
        """The job's secret environment is not kept after the job (nor its 7-day recovery)."""
        import contextlib

        with contextlib.suppress(Exception):
            self.client("secretsmanager").delete_secret(
                SecretId=arn, ForceDeleteWithoutRecovery=True
            )

    def resolve(self, spec: JobSpec) -> JobSpec:
        return JobSpec.from_dict(req.resolve(spec.to_dict(), self.settings))

    def dry_run(self, record: JobRecord) -> DryRun:
        """The exact CreateTrainingJob request, as JSON; nothing uploaded or created."""
        request = self.training_request(record, upload=False)
        key_secret = sm_secrets.secret_name(self.settings.key_secret_name, KEY_PURPOSES)
        notes = [
            *self.travel_notes(record.spec),
            "the inputs would be uploaded to the S3 URIs of InputDataConfig "
            "(content-addressed: those already there are not sent again)",
            f"secret {key_secret} (Secrets Manager) would be created or updated: the signing keys",
        ]
        if record.spec.get("secret_env"):
            notes.append(
                f"secret {env_secret_name(self.settings, record.id)} would hold the "
                "--secret-env values for this job only"
            )
        return DryRun([request], "json", notes)

    def submit(self, record: JobRecord, secrets: Mapping[str, str] | None = None) -> JobRecord:
        self.settings.require_credentials()
        JobDir(record.info["job_dir"]).make()
        env_arn = None
        try:
            if secrets:  # --secret-env: the values go to a secret of this job, never elsewhere
                env_arn = self._put_env_secret(record.id, dict(secrets))
            request = self.training_request(record, upload=True, env_secret_arn=env_arn)
            answer = self.client("sagemaker").create_training_job(**request)
        except BaseException as exc:
            if env_arn:
                self._delete_env_secret(env_arn)
            if isinstance(exc, NbscaleError) or not isinstance(exc, Exception):
                raise
            raise client_error(exc, "CreateTrainingJob") from None
        update_job(
            self.store,
            record.id,
            native_id=request["TrainingJobName"],
            spec=req.resolve(record.spec, self.settings),  # the shape the nodes run
            info_patch={
                "phase": "queued",
                "training_job_arn": answer["TrainingJobArn"],
                "region": self.settings.region,
                "instance_type": request["ResourceConfig"]["InstanceType"],
                "spot": bool(request.get("EnableManagedSpotTraining")),
                "image": request["AlgorithmSpecification"]["TrainingImage"],
                "output_path": request["OutputDataConfig"]["S3OutputPath"],
                "env_secret_arn": env_arn,
                "metrics_defined": [
                    d["Name"]
                    for d in request["AlgorithmSpecification"].get("MetricDefinitions") or []
                ],
            },
            event="submitted",
        )
        return get_job(self.store, record.id)

    # -- status -----------------------------------------------------------------------
    def describe(self, record: JobRecord, fresh: bool = False) -> dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            cached = self._described.get(record.id)
        if cached and not fresh and now - cached[0] < self.settings.poll_seconds:
            return cached[1]
        try:
            found = self.client("sagemaker").describe_training_job(
                TrainingJobName=record.native_id or req.training_job_name(record.id)
            )
        except Exception as exc:  # noqa: BLE001
            raise client_error(exc, f"DescribeTrainingJob {record.native_id}") from None
        with self._lock:
            self._described[record.id] = (now, found)
        return found

    def status(self, record: JobRecord) -> JobRecord:
        if record.status not in ACTIVE or not record.native_id:
            return record
        desc = self.describe(record)
        jobdir = JobDir(record.info["job_dir"])
        for t in cw.record_transitions(jobdir, desc.get("SecondaryStatusTransitions") or []):
            add_event(
                self.store,
                record.id,
                "phase",
                {"status": t.get("Status"), "message": t.get("StatusMessage")},
            )
        mapped = map_state(desc)
        started = desc.get("TrainingStartTime")
        info: dict[str, Any] = {
            "phase": mapped.phase,
            "sagemaker_status": desc.get("TrainingJobStatus"),
            "secondary_status": desc.get("SecondaryStatus"),
        }
        for key, name in (
            ("BillableTimeInSeconds", "billable_seconds"),
            ("TrainingTimeInSeconds", "training_seconds"),
        ):
            if desc.get(key) is not None:
                info[name] = desc[key]
        # a warm pool keeps the instances after the job, billed too (nbscale.cost counts it)
        retained = (desc.get("WarmPoolStatus") or {}).get("ResourceRetainedBillableTimeInSeconds")
        if retained is not None:
            info["retained_billable_seconds"] = retained
        defined = set(record.info.get("metrics_defined") or [])
        final = [  # the metrics the request defined (an image's own are not log_metric's)
            {
                "name": m["MetricName"],
                "value": float(m["Value"]),
                "time": _stamp(m.get("Timestamp")),
            }
            for m in desc.get("FinalMetricDataList") or []
            if m.get("MetricName") in defined and m.get("Value") is not None
        ]
        if final:  # what SageMaker read with the MetricDefinitions, as CloudWatch keeps it
            info["final_metrics"] = final
        fields: dict[str, Any] = {"info_patch": info}
        # a spot interruption or an internal error makes SageMaker start the job again
        restarts = sum(
            1
            for t in desc.get("SecondaryStatusTransitions") or []
            if t.get("Status") == "Restarting"
        )
        if restarts != record.restarts:
            fields["restarts"] = restarts
        if started is not None and record.started is None:
            fields["started"] = started.timestamp()
        if mapped.status in ACTIVE:
            if mapped.status != record.status:
                fields["status"] = mapped.status
            update_job(self.store, record.id, **fields)
            return get_job(self.store, record.id)
        return self._finish(record, desc, mapped, fields)

    def _finish(self, record, desc, mapped, fields) -> JobRecord:
        ended = desc.get("TrainingEndTime") or desc.get("LastModifiedTime")
        fields["ended"] = ended.timestamp() if ended is not None else time.time()
        if mapped.status in (SUCCEEDED, FAILED):
            fields.setdefault("restarts", record.restarts)
        if mapped.status == FAILED:  # the node records that reached CloudWatch name the cause
            with contextlib.suppress(Exception):
                self.fetch_logs(record, JobDir(record.info["job_dir"]))
        ended = self.end(
            record, mapped.status, mapped.error, fields, lambda: self.collect(record, desc)
        )
        if ended and record.info.get("env_secret_arn"):
            self._delete_env_secret(record.info["env_secret_arn"])
        return get_job(self.store, record.id)

    def collect(self, record: JobRecord, desc: dict[str, Any]) -> dict[str, Any]:
        """Bring ``model.tar.gz`` home, unpack it safely, and hand it to ``nbscale.backends.remote.staging``.

        Only what algo-1 (the host of rank 0) wrote is relied on: ``results.zip``. Whether
        SageMaker merged the other hosts' ``/opt/ml/model`` into the archive or not, their
        node records come from their CloudWatch streams when the archive lacks them."""
        from ..remote.staging import collect

        reported = cw.node_records(JobDir(record.info["job_dir"]))
        nodes = int(record.spec.get("nodes") or 1)
        uri = (desc.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
        store = storage.store_for(uri, self.settings.storage_options()) if uri else None
        with tempfile.TemporaryDirectory(prefix="nbscale-sm-out-") as tmp:
            unpacked = Path(tmp) / "model"
            unpacked.mkdir()
            if store is not None and store.exists(uri):
                archive = storage.fetch(uri, Path(tmp) / "model.tar.gz", store=store)
                try:
                    with tarfile.open(archive) as tar:
                        tar.extractall(unpacked, filter="data")  # no links out, no absolute paths
                except (tarfile.TarError, OSError) as exc:
                    raise NbscaleError(f"{uri} is not a readable tar.gz: {exc}") from None
            elif not reported:
                return {}
            local = storage.store_for(str(unpacked))
            return collect(record.id, local, str(unpacked), nodes, reported)

    def metrics(self, record: JobRecord) -> list[dict[str, Any]]:
        """The metric lines of the job's log (``RemoteJobBackend.metrics``); where the log
        has none (its CloudWatch events expired, or it could not be read), the job's
        ``FinalMetricDataList``: each metric's last value SageMaker read, rank 0's."""
        found = super().metrics(record)
        if found:
            return found
        return [
            {"name": m["name"], "value": m["value"], "step": None, "rank": 0, "time": m["time"]}
            for m in record.info.get("final_metrics") or []
        ]

    # -- logs, cancel -------------------------------------------------------------------
    def fetch_logs(self, record: JobRecord, jobdir: JobDir) -> None:
        """New events of every instance's CloudWatch stream (``logs.sync``)."""
        try:
            cw.sync(
                self.client("logs"),
                jobdir,
                record.native_id,
                int(record.spec.get("procs_per_node") or 1),
            )
        except Exception as exc:  # noqa: BLE001
            raise client_error(exc, "reading CloudWatch Logs") from None

    def log_interval(self, record: JobRecord) -> float | None:
        # CloudWatch delivers the last lines a little after the job ends: keep reading a while
        return min(self.settings.poll_seconds, 2.0) if not record.terminal else 0.5

    def logs_settled(self, record: JobRecord) -> bool:
        return record.terminal and time.time() - (record.ended or 0) > LOG_SETTLE_S

    def cancel(self, record: JobRecord) -> JobRecord:
        record = self.status(record)
        if record.status not in ACTIVE or not record.native_id:
            return record
        add_event(self.store, record.id, "cancel-requested")
        try:
            self.client("sagemaker").stop_training_job(TrainingJobName=record.native_id)
        except Exception as exc:  # noqa: BLE001
            from botocore.exceptions import ClientError

            # a job that ended between the status call and the stop: not an error
            if not (
                isinstance(exc, ClientError)
                and exc.response.get("Error", {}).get("Code") == "ValidationException"
            ):
                raise client_error(exc, f"StopTrainingJob {record.native_id}") from None
        update_job(self.store, record.id, info_patch={"phase": "stopping"}, event="stopping")
        with self._lock:
            self._described.pop(record.id, None)
        return get_job(self.store, record.id)
