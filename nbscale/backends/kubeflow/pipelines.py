"""``nbscale pipeline run FLOW --backend NAME`` on Kubeflow Pipelines.

The flow is compiled by ``nbscale.backends.kubeflow.pipeline_compile`` (one task per notebook step,
each mounting the key Secret), the signing keys are written to that Secret in the
cluster, and a run is started with the kfp SDK ``Client`` (address, credentials and
namespace from ``kfp_access``: the pod's pipelines token, a token or cookie, or none):
the compiled IR goes in the run request (``create_run_from_pipeline_package``). Then
the run is followed with ``get_run``: each task's change of state is reported as it
happens (``on_step(name, {"status", "error"})``, the callback the local runner uses).
Cancel is ``terminate_run``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from ...errors import NbscaleError, SpecError
from ..base import DryRun
from ..remote.pipelines import RemotePipelines
from .manifests import pod_annotations
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
        from . import kfp_access

        if not conf.kfp_host and not kfp_access.sa_token_path().is_file():
            kfp_access.resolve(conf)  # the one message: no kfp_host, no pipelines token
        self.settings = conf
        self._client = None
        self._access: kfp_access.Access | None = None
        self._health: dict[str, Any] | None = None

    @property
    def access(self):
        """The API's address and credentials (``kfp_access``), found once."""
        if self._access is None:
            from . import kfp_access

            self._access = kfp_access.resolve(self.settings)
        return self._access

    def health(self) -> dict[str, Any]:
        if self._health is None:
            from . import kfp_access

            self._health = kfp_access.healthz(self.access.host, self.settings.name)
        return self._health

    def _check_reachable(self) -> None:
        self.health()

    def namespace(self, kube_namespace: str) -> tuple[str, str]:
        """Where the runs, their step pods and the key Secret are, and why there."""
        from . import kfp_access

        return kfp_access.run_namespace(
            self.settings, bool(self.health().get("multi_user")), kube_namespace
        )

    def client(self, namespace: str | None = None):
        """The kfp SDK's ``Client``; ``namespace``: the profile namespace of a multi-user KFP
        (a standalone KFP takes none)."""
        if self._client is None:
            from ...optional import require

            kfp = require("kfp", "kubeflow")
            self._check_reachable()
            access = self.access
            with warnings.catch_warnings():
                # "only works with Kubeflow Pipeline v2.0.0-beta.2 and later": said every time
                warnings.simplefilter("ignore", FutureWarning)
                self._client = kfp.Client(
                    host=access.host,
                    namespace=namespace or "kubeflow",  # "kubeflow": the SDK sends none
                    **access.client_args,
                )
        return self._client

    def _refused(self, exc: Exception, what: str) -> NbscaleError:
        """The SDK's error as one message; a refusal names where the credentials came from
        (never their value)."""
        status = getattr(exc, "status", None)
        if status in (401, 403):
            return NbscaleError(
                f"{what}: Kubeflow Pipelines at {self.access.host} refused the call "
                f"({status} {getattr(exc, 'reason', '')}); credentials used: {self.access.source}",
                "in a Kubeflow notebook mount the pipelines token (PodDefault "
                "'access-ml-pipeline'); else set NBSCALE_KFP_TOKEN / NBSCALE_KFP_COOKIE or "
                f"kfp_secret in [backends.{self.settings.name}]",
            )
        return NbscaleError(f"{what} on {self.access.host}: {exc}")

    def key_secret(self, connected: bool = False) -> str:
        """The user's own key Secret, the one the steps mount (``user_key_secret_name``)."""
        from .cluster import connect
        from .jobs import user_key_secret_name

        return user_key_secret_name(self.settings, lambda: connect(self.settings), connected)

    def compile(self, path: str, output: Path, key_secret: str | None = None) -> Any:
        from ...pipelines.loader import load
        from . import pipeline_compile as kfp_target

        pipeline = load(path)
        options: dict[str, Any] = {
            "key_secret": key_secret or self.key_secret(),
            "annotations": pod_annotations(self.settings),
        }
        if self.settings.image:
            options["image"] = self.settings.image  # a prebuilt image with nbscale and papermill
        kfp_target.compile_pipeline(pipeline, output, **options)
        return pipeline

    def plan(self, path: str, parameters: dict[str, Any] | None = None) -> DryRun:
        """The pipeline package ``start`` would upload (KFP IR YAML), nothing sent."""
        import yaml

        key_secret = self.key_secret()
        with tempfile.TemporaryDirectory(prefix="nbscale-kfp-") as tmp:
            package = Path(tmp) / "pipeline.yaml"
            pipeline = self.compile(path, package, key_secret)
            self._check_parameters(pipeline, parameters)
            documents = [d for d in yaml.safe_load_all(package.read_text()) if d]
        s = self.settings
        where = (
            f"namespace {s.kfp_namespace}"
            if s.kfp_namespace
            else "the profile namespace (multi-user KFP) or KFP's own (standalone)"
        )
        arguments = ", ".join(f"{k}={v!r}" for k, v in (parameters or {}).items()) or "none"
        notes = [
            f"a run of this package would be created on {s.kfp_host or 'the in-cluster KFP'} "
            f"in experiment {s.kfp_experiment!r}, {where}; arguments: {arguments}",
            f"Secret {key_secret} would be created or updated in that namespace for the tasks "
            "to mount (the signing keys; its data is never shown)",
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
        from .images import runtime_image
        from .jobs import ensure_key_secret
        from .kfp_access import with_note

        if not self.settings.image:
            # the compiled default names nbscale's image by version: no registry has it
            # until it is built and pushed; a pod that cannot pull it would only hang
            raise SpecError(
                f"[backends.{self.settings.name}] image",
                "is not set; a KFP step runs in nbscale's image (nbscale, papermill, "
                "ipykernel and kfp), which must be in a registry the cluster pulls from",
                f"build docker/Dockerfile, push it (e.g. REGISTRY/{runtime_image()}) and set "
                'image = "REGISTRY/..." in the table (docs/containers.md)',
            )
        cluster = connect(self.settings)
        key_secret = self.key_secret(connected=True)  # the user's own: the steps mount it
        with tempfile.TemporaryDirectory(prefix="nbscale-kfp-") as tmp:
            package = Path(tmp) / "pipeline.yaml"
            pipeline = self.compile(path, package, key_secret)
            self._check_parameters(pipeline, parameters)
            namespace, why = self.namespace(cluster.namespace)
            # the tasks mount the key Secret: it must be where their pods run
            try:
                ensure_key_secret(
                    dataclasses.replace(cluster, namespace=namespace),
                    self.settings,
                    user=cluster.user,
                )
            except NbscaleError as exc:
                raise with_note(
                    exc, f"the pipeline's steps run in namespace {namespace} ({why})"
                ) from None
            multi_user = bool(self.health().get("multi_user"))
            client = self.client(namespace if multi_user else None)
            try:
                # the SDK prints its UI links: to stderr, so stdout stays the run id
                with contextlib.redirect_stdout(sys.stderr):
                    result = client.create_run_from_pipeline_package(
                        str(package),
                        arguments=dict(parameters or {}),
                        run_name=f"{pipeline.name}-{int(time.time())}",
                        experiment_name=self.settings.kfp_experiment,
                        # a standalone KFP has no namespaces: its runs are in its own
                        namespace=namespace if multi_user else None,
                    )
            except Exception as exc:  # noqa: BLE001 - the SDK's errors, as one message
                raise self._refused(exc, f"starting the run in namespace {namespace}") from None
        return KFPRun(result.run_id)

    def refresh(self, run: KFPRun, on_step: Callable[[str, dict], None] | None = None) -> KFPRun:
        try:
            found = self.client().get_run(run.run_id)
        except Exception as exc:  # noqa: BLE001
            raise self._refused(exc, f"reading run {run.run_id}") from None
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
            raise self._refused(exc, f"terminating run {run_id}") from None


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
