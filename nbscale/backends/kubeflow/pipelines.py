"""``nbscale pipeline run FLOW --backend NAME`` on Kubeflow Pipelines.

The flow is compiled by ``nbscale.backends.kubeflow.pipeline_compile`` (one task per notebook step,
each mounting the key Secret), the signing keys are written to that Secret in the
cluster, and a run is started with the kfp SDK ``Client`` (address, credentials and
namespace from ``kfp_access``: the pod's pipelines token, a token or cookie, or none):
the compiled IR goes in the run request (``create_run_from_pipeline_package``). Then
the run is followed with ``get_run``: each task's change of state is reported as it
happens (``on_step(name, {"status", "error"})``, the callback the local runner uses).
Cancel is ``terminate_run``.

Without ``image`` (no image of nbscale's pushed anywhere), the steps run on the stock
pytorch/pytorch image of the kernel's torch and Python (``images.json``): nbscale's step
wheelhouse (nbscale, papermill, ipykernel and their closure) is built for the pods'
platform (Linux x86_64 manylinux) and that image's Python, zipped, put in object storage
under its digest (``storage``), and brought into each step as an input artifact by an
importer task; KFP's launcher downloads it, and the step installs it offline
(``pipeline_compile``). A closure pip cannot build for that platform is refused before
anything is sent, naming the package.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
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
# KFP's own driver/executor tasks, and the importer of the wheelhouse: no step of the flow
_PLUMBING = ("root-driver", "root", "executor", "nbscale-wheelhouse")
_NO_WHEEL = re.compile(r"No matching distribution found for ([A-Za-z0-9_.\-]+)")


@dataclass(frozen=True)
class StockSteps:
    """The steps' stock image and the wheelhouse zip they install (built for its Python)."""

    image: str
    python: str
    archive: Path

    def uri(self, store: Any) -> str:
        """Where the zip is (or will be) in object storage: by its digest."""
        from ... import storage

        digest = storage.sha256_file(self.archive)
        return store.base.child("wheelhouse", "sha256", digest, "wheels.zip").uri


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

    def compile(
        self,
        path: str,
        output: Path,
        key_secret: str | None = None,
        stock: StockSteps | None = None,
        wheelhouse_uri: str | None = None,
    ) -> Any:
        from ...pipelines.loader import load
        from . import pipeline_compile as kfp_target

        pipeline = load(path)
        options: dict[str, Any] = {
            "key_secret": key_secret or self.key_secret(),
            "annotations": pod_annotations(self.settings),
        }
        if self.settings.image:
            options["image"] = self.settings.image  # a prebuilt image with nbscale and papermill
        elif stock is not None:  # the stock image, installing the wheelhouse at wheelhouse_uri
            options["image"] = stock.image
            options["wheelhouse_uri"] = wheelhouse_uri
        kfp_target.compile_pipeline(pipeline, output, **options)
        return pipeline

    def _refuse_no_image(self, why: str) -> SpecError:
        from .images import runtime_image

        name = self.settings.name
        return SpecError(
            f"[backends.{name}] image",
            f"is not set, and {why}",
            f"build docker/Dockerfile, push it (e.g. REGISTRY/{runtime_image()}) and set "
            f'image = "REGISTRY/..." in [backends.{name}] (docs/containers.md)',
        )

    def stock_steps(self, path: str) -> StockSteps | None:
        """Without ``image``: the stock image the steps run on and the step wheelhouse built
        for it (pods' platform, the image's Python); None with ``image``. Refused here,
        before anything is sent, when it cannot be had."""
        if self.settings.image:
            return None
        if not self.settings.wheelhouse:
            raise self._refuse_no_image(
                "wheelhouse = false: a stock image has no nbscale or papermill to run a step"
            )
        if not self.settings.storage:
            raise self._refuse_no_image(
                "storage is not set: on a stock image the steps install nbscale's wheelhouse, "
                'which reaches them from object storage (or set storage = "s3://BUCKET/PREFIX")'
            )
        from ...pipelines.loader import load
        from ...runtime import wheelhouse
        from .images import stock_image

        pipeline = load(path)
        gpu = any(pipeline.steps[n].resources.gpu for n in pipeline.order())
        image = stock_image(gpu, self.settings.name)
        python = self._image_python(image)
        try:
            folder = wheelhouse.build("step", None, list(wheelhouse.POD_PLATFORMS), python)
        except wheelhouse.WheelhouseError as exc:
            found = _NO_WHEEL.search(str(exc))
            what = (
                f"pip finds no wheel of {found.group(1)} for it"
                if found
                else f"pip failed: {str(exc)[-600:]}"
            )
            raise self._refuse_no_image(
                f"nbscale's step wheelhouse cannot be built for the stock image {image} "
                f"(Linux x86_64 manylinux, Python {python}): {what}"
            ) from None
        return StockSteps(image, python, wheelhouse.zipped(folder))

    @staticmethod
    def _image_python(image: str) -> str:
        """The Python of a stock image, as the image table lists it."""
        from .images import table

        for entry in table().get("entries") or []:
            if entry.get("image") == image:
                return str(entry["python"])
        from ..images import kernel_versions

        return kernel_versions().python

    def plan(self, path: str, parameters: dict[str, Any] | None = None) -> DryRun:
        """The pipeline package ``start`` would upload (KFP IR YAML), nothing sent."""
        import yaml

        key_secret = self.key_secret()
        stock = self.stock_steps(path)
        uri = stock.uri(self._store()) if stock else None
        with tempfile.TemporaryDirectory(prefix="nbscale-kfp-") as tmp:
            package = Path(tmp) / "pipeline.yaml"
            pipeline = self.compile(path, package, key_secret, stock, uri)
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
        if stock:
            notes.append(
                f"the steps run on the stock image {stock.image}; nbscale's step wheelhouse "
                f"(built for Linux x86_64, Python {stock.python}) would be uploaded to {uri} "
                "and installed offline in each step"
            )
        return DryRun(documents, "yaml", notes)

    def _store(self):
        from ... import storage

        return storage.ObjectStore.from_options(self.settings.storage_options())

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
        from .kfp_access import with_note

        # no image: the stock one and the wheelhouse, built (or refused) before anything is sent
        stock = self.stock_steps(path)
        store = self._store() if stock else None
        uri = stock.uri(store) if stock else None
        cluster = connect(self.settings)
        key_secret = self.key_secret(connected=True)  # the user's own: the steps mount it
        with tempfile.TemporaryDirectory(prefix="nbscale-kfp-") as tmp:
            package = Path(tmp) / "pipeline.yaml"
            pipeline = self.compile(path, package, key_secret, stock, uri)
            self._check_parameters(pipeline, parameters)
            if stock:  # content-addressed: sent once, the URI the package names
                sent = store.put(stock.archive, "wheels.zip", area="wheelhouse")
                if sent != uri:  # the package must name what was sent
                    raise NbscaleError(f"the wheelhouse went to {sent}, not to {uri}")
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
