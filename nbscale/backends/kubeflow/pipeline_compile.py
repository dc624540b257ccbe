"""KFP v2 IR, produced by the ``kfp`` SDK.

Each step is a lightweight Python component that writes its notebook, runs
papermill on it and returns two artifacts: the step's outputs (a folder with
the manifest, one file per value) and the executed notebook. Inputs arrive as
the upstream steps' output artifacts; the pipeline parameters are the
pipeline's typed inputs; resources, retries and caching go on each task.

Without an image of nbscale's (``wheelhouse_uri`` given), each step is a container
component instead, on a stock image (no kfp, no nbscale in it): KFP's launcher, which
KFP puts into every step pod, downloads the input artifacts and uploads the outputs, so
nothing of kfp runs in the image. One more input artifact, brought in by an importer
task from object storage (content-addressed), is nbscale's step wheelhouse (a zip of
wheels built for the pods' platform and the image's Python); the step's command
installs it offline (``pip install --no-index --no-deps``) and runs
``python -m nbscale.pipelines.container_step``, which executes the step's notebook with
papermill. The step's notebook and local modules are its string parameters, as in the
lightweight component, so they are part of KFP's cache key.

The component function has a different signature per step, and the SDK reads
a component's source with ``inspect``; so the functions are written to a
module file and imported, rather than built in memory.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from ...optional import require
from ...pipelines.fingerprint import module_sources
from ...pipelines.manifest import refuse_nodes
from ...pipelines.model import Pipeline, Step
from ...pipelines.step_sweep import refuse_compile
from ...pipelines.stepbook import container_template as notebook_template
from .images import runtime_image
from .manifests import ISTIO_INJECT

# nbscale's image (docker/Dockerfile: nbscale, papermill, ipykernel and kfp, whose executor
# runs the step: components are compiled with install_kfp_package=False), by this version
DEFAULT_IMAGE = runtime_image()
KEY_SECRET = "nbscale-keys"  # a Secret with keys.json = nbscale.keys.export("pipeline")
KEY_MOUNT = "/var/run/secrets/nbscale"
KIND = {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "dict"}

COMPONENT = '''
@dsl.component(base_image={image!r}, install_kfp_package=False)
def {func}(notebook: str, modules: str, outputs: dsl.Output[dsl.Artifact], executed: dsl.Output[dsl.Artifact]{extra}):
    """Step {step} of pipeline {pipeline}: papermill runs the step's notebook."""
    import json
    import os
    import tempfile

    from nbscale.kernel_transport import execute_notebook

    # a step is its own machine: a private nbscale home, and the pipeline key only as the
    # platform delivers it (NBSCALE_KEY_FILE, a Secret volume), never one made up here
    os.environ["NBSCALE_HOME"] = tempfile.mkdtemp(prefix="nbscale-home-")

    source = notebook
    for producer, artifact in {inputs}.items():
        source = source.replace("__NBSCALE_INPUT_%s__" % producer, json.dumps(artifact.path)[1:-1])
    os.makedirs(outputs.path, exist_ok=True)
    source = source.replace("__NBSCALE_OUTPUTS__", json.dumps(outputs.path)[1:-1])
    work = tempfile.mkdtemp()
    for relpath, text in json.loads(modules).items():  # the local modules the step imports
        target = os.path.join(work, relpath)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w") as fh:
            fh.write(text)
    path = os.path.join(work, "{step}.ipynb")
    with open(path, "w") as fh:
        fh.write(source)
    if {timeout}:  # the timeout covers the whole step, as it does locally
        import signal

        def over(signum, frame):
            raise TimeoutError("step {step} ran past its timeout of %s s" % {timeout})

        signal.signal(signal.SIGALRM, over)
        signal.alarm({timeout})
    try:  # the kernel on Unix sockets in a private folder (nbscale.kernel_transport), not TCP
        execute_notebook(path, executed.path, parameters={params}, kernel_name="python3",
                         progress_bar=False, cwd=work)
    finally:
        executed.metadata["step"] = "{step}"
'''


# the stock image's step: the wheelhouse (a zip, $1) installed offline, then the step ($@)
STEP_SCRIPT = (
    'set -e; w="$(mktemp -d)"; python -m zipfile -e "$1" "$w"; {install}; shift; '
    'exec python -m nbscale.pipelines.container_step "$@"'
)
WHEELHOUSE_TASK = "nbscale-wheelhouse"  # the importer task's display name

CONTAINER = '''
@dsl.container_component
def {func}(notebook: str, modules: str, wheels: dsl.Input[dsl.Artifact], outputs: dsl.Output[dsl.Artifact], executed: dsl.Output[dsl.Artifact]{extra}):
    """Step {step} of pipeline {pipeline}: the wheelhouse installed offline, then papermill."""
    return dsl.ContainerSpec(
        image={image!r},
        command={command!r},
        args=[wheels.path, "--notebook", notebook, "--modules", modules,
              "--outputs", outputs.path, "--executed", executed.path{args}],
    )
'''


def step_command() -> list[str]:
    """The stock image's command: ``sh -c SCRIPT nbscale-step WHEELS.zip STEP-ARGS...``."""
    from ...runtime.wheelhouse import install_command

    return ["sh", "-c", STEP_SCRIPT.format(install=install_command('"$w"')), "nbscale-step"]


def _text(value: Any) -> str:
    """A fixed parameter as the step's command line carries it (typed back by --types)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def _container_source(pipeline: Pipeline, step: Step, image: str) -> str:
    producers = sorted(set(step.inputs.values()))
    params = [*step.uses_parameters]
    extra = "".join(f", in_{_ident(p)}: dsl.Input[dsl.Artifact]" for p in producers)
    extra += "".join(f", {p}: {_annotation(p, pipeline.parameters[p])}" for p in params)
    args = "".join(f", '--in', {p!r}, in_{_ident(p)}.path" for p in producers)
    args += "".join(f", '--param', {p!r}, {p}" for p in params)
    args += "".join(f", '--param', {k!r}, {_text(v)!r}" for k, v in step.fixed_parameters.items())
    types = {p: _annotation(p, pipeline.parameters[p]) for p in params}
    types.update({k: _annotation(k, v) for k, v in step.fixed_parameters.items()})
    args += f", '--types', {json.dumps(types)!r}"
    if step.timeout:
        args += f", '--timeout', {str(int(step.timeout))!r}"
    return CONTAINER.format(
        image=image,
        command=step_command(),
        func=f"step_{_ident(step.name)}",
        extra=extra,
        args=args,
        step=step.name,
        pipeline=pipeline.name,
    )


def _ident(step: str) -> str:
    return step.replace("-", "_")


def _annotation(name: str, value: Any) -> str:
    return KIND.get(type(value), "str")


def _component_source(pipeline: Pipeline, step: Step, image: str) -> str:
    producers = sorted(set(step.inputs.values()))
    params = [*step.uses_parameters]
    extra = "".join(f", in_{_ident(p)}: dsl.Input[dsl.Artifact]" for p in producers)
    extra += "".join(f", {p}: {_annotation(p, pipeline.parameters[p])}" for p in params)
    inputs = "{" + ", ".join(f"{p!r}: in_{_ident(p)}" for p in producers) + "}"
    values = (
        "{"
        + ", ".join(
            [f"{p!r}: {p}" for p in params]
            + [f"{k!r}: {v!r}" for k, v in step.fixed_parameters.items()]
        )
        + "}"
    )
    return COMPONENT.format(
        image=image,
        func=f"step_{_ident(step.name)}",
        extra=extra,
        step=step.name,
        pipeline=pipeline.name,
        inputs=inputs,
        params=values,
        timeout=repr(int(step.timeout)) if step.timeout else "None",
    )


def _load_components(pipeline: Pipeline, image: str, container: bool = False) -> dict[str, Any]:
    source = _container_source if container else _component_source
    code = "from kfp import dsl\n" + "\n".join(
        source(pipeline, pipeline.steps[n], image) for n in pipeline.order()
    )
    folder = Path(tempfile.mkdtemp(prefix="nbscale-kfp-"))
    module_name = f"nbscale_kfp_{abs(hash(code))}"
    path = folder / f"{module_name}.py"
    path.write_text(code)
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return {n: getattr(module, f"step_{_ident(n)}") for n in pipeline.order()}


#: a step pod's annotations by default: no Istio sidecar (without Kubernetes' native
#: sidecars an injected proxy keeps running after the step, so the pod never ends)
STEP_ANNOTATIONS = {ISTIO_INJECT: "false"}


def build(
    pipeline: Pipeline,
    image: str = DEFAULT_IMAGE,
    key_secret: str | None = KEY_SECRET,
    key_mount: str = KEY_MOUNT,
    annotations: dict[str, str] | None = None,
    wheelhouse_uri: str | None = None,
):
    """The ``@dsl.pipeline`` function for ``pipeline``.

    With ``wheelhouse_uri`` (the object-storage URI of the step wheelhouse zip, e.g.
    ``s3://BUCKET/PREFIX/wheelhouse/sha256/DIGEST/wheels.zip``) ``image`` is a stock image
    and each step a container component that installs that wheelhouse (module docstring).

    Every task mounts the Secret ``key_secret`` read-only at ``key_mount`` and finds the
    pipeline key through ``NBSCALE_KEY_FILE``; ``key_secret=None`` compiles without it
    (then no step can verify another's outputs); so does ``""``. Every task's pod gets
    ``annotations`` (default ``STEP_ANNOTATIONS``)."""
    refuse_compile(pipeline, "kfp", "Kubeflow", "Katib Experiment")
    dsl = require("kfp.dsl", "kubeflow")
    pod_annotations = STEP_ANNOTATIONS if annotations is None else annotations
    kubernetes = require("kfp.kubernetes", "kubeflow") if key_secret or pod_annotations else None
    components = _load_components(pipeline, image, container=bool(wheelhouse_uri))

    names = list(pipeline.parameters)

    def body(*args: Any, **kwargs: Any) -> None:
        values = {**dict(zip(names, args, strict=False)), **kwargs}
        tasks: dict[str, Any] = {}
        wheels: dict[str, Any] = {}
        if wheelhouse_uri:  # brought in once; KFP's launcher downloads it into each step pod
            importer = dsl.importer(
                artifact_uri=wheelhouse_uri, artifact_class=dsl.Artifact, reimport=False
            )
            importer.set_display_name(WHEELHOUSE_TASK)
            wheels["wheels"] = importer.output
        for name in pipeline.order():
            step = pipeline.steps[name]
            args = {
                f"in_{_ident(p)}": tasks[p].outputs["outputs"]
                for p in sorted(set(step.inputs.values()))
            }
            args.update({p: values[p] for p in step.uses_parameters})
            task = components[name](
                notebook=notebook_template(pipeline, step),
                modules=json.dumps(module_sources(pipeline, step)),
                **wheels,
                **args,
            )
            task.set_display_name(name)
            task.set_caching_options(step.cache)
            for dep in step.depends_on:
                if dep not in step.inputs.values():
                    task.after(tasks[dep])
            res = step.resources
            if res.cpu:
                task.set_cpu_limit(str(res.cpu))
            if res.memory:
                task.set_memory_limit(res.memory)
            if res.gpu:
                task.set_accelerator_type("nvidia.com/gpu")
                task.set_accelerator_limit(res.gpu)
            if step.retries:
                task.set_retry(num_retries=step.retries)
            if step.timeout and kubernetes is not None:
                kubernetes.set_timeout(task, int(step.timeout))  # the pod's deadline too
            if key_secret:
                kubernetes.use_secret_as_volume(task, secret_name=key_secret, mount_path=key_mount)
                task.set_env_variable("NBSCALE_KEY_FILE", f"{key_mount.rstrip('/')}/keys.json")
            for key, value in sorted(pod_annotations.items()):
                kubernetes.add_pod_annotation(task, key, value)
            tasks[name] = task

    # the SDK reads the pipeline's inputs from the signature: give it a typed one
    import inspect

    body.__signature__ = inspect.Signature(
        [
            inspect.Parameter(
                p, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=v, annotation=type(v)
            )
            for p, v in pipeline.parameters.items()
        ]
    )
    body.__annotations__ = {p: type(v) for p, v in pipeline.parameters.items()}
    body.__name__ = pipeline.name.replace("-", "_")
    return dsl.pipeline(
        name=pipeline.name.replace("_", "-").lower(),
        description=f"compiled by nbscale from {Path(pipeline.source).name}",
    )(body)


def compile_pipeline(
    pipeline: Pipeline,
    output: Path,
    image: str = DEFAULT_IMAGE,
    key_secret: str | None = KEY_SECRET,
    key_mount: str = KEY_MOUNT,
    annotations: dict[str, str] | None = None,
    wheelhouse_uri: str | None = None,
) -> None:
    refuse_compile(pipeline, "kfp", "Kubeflow", "Katib Experiment")  # before kfp is needed
    refuse_nodes(
        pipeline,
        "the kfp target",
        "drop resources.nodes (a KFP task is one pod), or compile for SageMaker Pipelines, "
        "where such a step is a Training step on that many instances",
    )
    compiler = require("kfp.compiler", "kubeflow")
    compiler.Compiler().compile(
        build(pipeline, image, key_secret, key_mount, annotations, wheelhouse_uri), str(output)
    )
