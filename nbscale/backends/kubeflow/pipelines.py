"""``nbscale pipeline run FLOW --backend NAME`` on Kubeflow Pipelines.

The flow is compiled by ``nbscale.backends.kubeflow.pipeline_compile`` (one task per notebook step,
each mounting the key Secret), the signing keys are written to that Secret in the
cluster, and a run is started with the kfp SDK ``Client`` against ``kfp_host``: the
compiled IR goes in the run request (``create_run_from_pipeline_package``). Then
the run is followed with ``get_run``: each task's change of state is reported as it
happens (``on_step(name, {"status", "error"})``, the callback the local runner uses).
Cancel is ``terminate_run``.
"""

from __future__ import annotations

import contextlib
import http.client
import sys
import tempfile
import time
import urllib.parse
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from ...errors import BackendUnavailable, NbscaleError, SpecError
from ..base import DryRun
from ..remote.pipelines import RemotePipelines
from .settings import KubeflowSettings, settings

STATES = {
    "PENDING": "PENDING",
    "RUNNING": "RUNNING",
    "SUCCEEDED": "SUCCEEDED",
    "SKIPPED": "SKIPPED",
    "FAILED": "FAILED",
    "CANCELING": "RUNNING",
    "CANCELED": "CANCELLED",
    "PAUSED": "RUNNING",
    "RUNTIME_STATE_UNSPECIFIED": "PENDING",
}
TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}
# KFP's own driver/executor tasks that are no step of the flow
_PLUMBING = ("root-driver", "root", "executor")


@dataclass
class KFPRun:
    run_id: str
    status: str = "PENDING"
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "status": self.status,
            "error": self.error,
            "steps": [{"name": k, **v} for k, v in self.steps.items()],
        }


def _state(value: Any) -> str:
    text = str(getattr(value, "value", value) or "RUNTIME_STATE_UNSPECIFIED").upper()
    return STATES.get(text, "RUNNING")


class KFPPipelines:
    def __init__(self, conf: KubeflowSettings):
        if not conf.kfp_host:
            raise SpecError(
                f"[backends.{conf.name}] kfp_host",
                "is not set; pipelines on Kubeflow need the Kubeflow Pipelines API",
                'add kfp_host = "http://ml-pipeline-ui.kubeflow:80" (or a port-forward)',
            )
        self.settings = conf
        self._client = None

    def _check_reachable(self) -> None:
        url = urllib.parse.urlsplit(self.settings.kfp_host)
        cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        conn = cls(url.hostname, url.port, timeout=5)
        try:
            conn.request("GET", url.path.rstrip("/") + "/apis/v2beta1/healthz")
            conn.getresponse().read()
        except OSError as exc:
            raise BackendUnavailable(
                f"the Kubeflow Pipelines API at {self.settings.kfp_host} cannot be reached: {exc}",
                f"check kfp_host in [backends.{self.settings.name}] (kubectl -n kubeflow "
                "port-forward svc/ml-pipeline-ui 8080:80)",
            ) from None
        finally:
            conn.close()

    def client(self):
        if self._client is None:
            from ...optional import require

            kfp = require("kfp", "kubeflow")
            self._check_reachable()
            with warnings.catch_warnings():
                # "only works with Kubeflow Pipeline v2.0.0-beta.2 and later": said every time
                warnings.simplefilter("ignore", FutureWarning)
                self._client = kfp.Client(
                    host=self.settings.kfp_host, namespace=self.settings.kfp_namespace
                )
        return self._client

    def compile(self, path: str, output: Path) -> Any:
        from ...pipelines.loader import load
        from . import pipeline_compile as kfp_target

        pipeline = load(path)
        options: dict[str, Any] = {"key_secret": self.settings.key_secret}
        if self.settings.image:
            options["image"] = self.settings.image  # a prebuilt image with nbscale and papermill
        kfp_target.compile_pipeline(pipeline, output, **options)
        return pipeline

    def plan(self, path: str, parameters: dict[str, Any] | None = None) -> DryRun:
        """The pipeline package ``start`` would upload (KFP IR YAML), nothing sent."""
        import yaml

        with tempfile.TemporaryDirectory(prefix="nbscale-kfp-") as tmp:
            package = Path(tmp) / "pipeline.yaml"
            pipeline = self.compile(path, package)
            self._check_parameters(pipeline, parameters)
            documents = [d for d in yaml.safe_load_all(package.read_text()) if d]
        s = self.settings
        where = f"namespace {s.kfp_namespace}" if s.kfp_namespace else "KFP's own namespace"
        arguments = ", ".join(f"{k}={v!r}" for k, v in (parameters or {}).items()) or "none"
        notes = [
            f"a run of this package would be created on {s.kfp_host} in experiment "
            f"{s.kfp_experiment!r}, {where}; arguments: {arguments}",
            f"Secret {s.key_secret} would be created or updated for the tasks to mount "
            "(the signing keys; its data is never shown)",
        ]
        return DryRun(documents, "yaml", notes)

    @staticmethod
    def _check_parameters(pipeline: Any, parameters: dict[str, Any] | None) -> None:
        unknown = sorted(set(parameters or {}) - set(pipeline.parameters))
        if unknown:
            raise SpecError(
                "-p",
                f"the pipeline has no parameter {unknown[0]!r}",
                f"its parameters: {', '.join(sorted(pipeline.parameters)) or '(none)'}",
            )

    def start(self, path: str, parameters: dict[str, Any] | None = None) -> KFPRun:
        from .cluster import connect
        from .jobs import ensure_key_secret

        with tempfile.TemporaryDirectory(prefix="nbscale-kfp-") as tmp:
            package = Path(tmp) / "pipeline.yaml"
            pipeline = self.compile(path, package)
            self._check_parameters(pipeline, parameters)
            cluster = connect(self.settings)
            ensure_key_secret(cluster, self.settings)  # the tasks mount it
            client = self.client()
            try:
                # the SDK prints its UI links: to stderr, so stdout stays the run id
                with contextlib.redirect_stdout(sys.stderr):
                    result = client.create_run_from_pipeline_package(
                        str(package),
                        arguments=dict(parameters or {}),
                        run_name=f"{pipeline.name}-{int(time.time())}",
                        experiment_name=self.settings.kfp_experiment,
                        namespace=self.settings.kfp_namespace,
                    )
            except Exception as exc:  # noqa: BLE001 - the SDK's errors, as one message
                raise NbscaleError(f"starting the run on {self.settings.kfp_host}: {exc}") from None
        return KFPRun(result.run_id)

    def refresh(self, run: KFPRun, on_step: Callable[[str, dict], None] | None = None) -> KFPRun:
        try:
            found = self.client().get_run(run.run_id)
        except Exception as exc:  # noqa: BLE001
            raise NbscaleError(f"reading run {run.run_id}: {exc}") from None
        run.status = _state(found.state)
        if found.error is not None:
            run.error = getattr(found.error, "message", None) or str(found.error)
        details = getattr(found, "run_details", None)
        for task in getattr(details, "task_details", None) or []:
            name = task.display_name or task.task_id
            if not name or name in _PLUMBING or name.endswith("-driver"):
                continue
            status = _state(task.state)
            error = getattr(task.error, "message", None) if task.error is not None else None
            now = {"status": status, "error": error}
            if run.steps.get(name) != now:
                run.steps[name] = now
                if on_step:
                    on_step(name, now)
        return run

    def follow(self, run: KFPRun, on_step: Callable[[str, dict], None] | None = None) -> KFPRun:
        while True:
            self.refresh(run, on_step)
            if run.status in TERMINAL:
                return run
            time.sleep(max(self.settings.poll_seconds, 0.2))

    def cancel(self, run_id: str) -> None:
        try:
            self.client().terminate_run(run_id)
        except Exception as exc:  # noqa: BLE001
            raise NbscaleError(f"terminating run {run_id}: {exc}") from None


class KubeflowPipelineBackend(RemotePipelines):
    """Pipeline runs on Kubeflow Pipelines, recorded and followed here."""

    type = "kubeflow"
    title = "Kubeflow"
    cache_note = "its tasks cache by KFP's cache"
    label = "kfp run"
    compile_options = ("image", "key_secret", "key_mount")
    compile_suffix = ".kfp.yaml"

    @classmethod
    def compile(cls, pipeline: Any, output: Path, **options: Any) -> None:
        from .pipeline_compile import compile_pipeline

        compile_pipeline(pipeline, output, **options)

    @cached_property
    def runner(self) -> KFPPipelines:
        return KFPPipelines(settings(self.config))

    @property
    def poll(self) -> float:
        return max(self.runner.settings.poll_seconds, 0.2)

    def remote_id(self, handle: KFPRun) -> str:
        return handle.run_id

    def resume(self, remote_id: str) -> KFPRun:
        return KFPRun(remote_id)

    def cancel_unrecorded(self, remote_id: str) -> str:
        self.runner.cancel(remote_id)
        return f"kfp run {remote_id}: terminating"
