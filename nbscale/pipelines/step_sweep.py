"""A pipeline step with a ``sweep:`` block: its notebook runs once per trial, the best wins.

    steps:
      - name: train
        notebook: train.ipynb
        depends_on: [prepare]
        sweep:
          space: {lr: "loguniform(1e-4,1e-1)", layers: "int(2,6)"}   # or "lr=... layers=..."
          objective: val_loss:min
          trials: 8
          parallel: 2

Each trial is an nbscale job of the step's own notebook (the one ``stepbook`` writes, its
inputs loaded from the upstream steps as in any step) with the trial's values as its
papermill parameters; the local sweep engine (Optuna) picks the values, prunes, retries
failed trials and runs at most ``parallel`` at once. Every trial saves the step's outputs
in its job folder; the best trial's outputs and executed notebook become the step's, so
downstream steps read the best trial's values, and ``sweep.json`` beside them says which
trial won and its objective.

Trials are jobs, which this core package does not run: the engine hands the runner a
``SweepSteps`` (``nbscale.pipeline_runs.STEP_SWEEPS``) whose ``run`` drives the sweep.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SpecError
from ..sweeps.logged import unlogged
from . import stepbook
from .dataflow import _assigned, local_imports, names_of, parse
from .fingerprint import local_modules
from .model import Pipeline, Step

RECORD = "sweep.json"  # beside the step's outputs folder: which trial won, its objective
TRIAL_OUTPUTS = "step-outputs"  # in a trial's job folder: the outputs its notebook saved
_SLUG = re.compile(r"[^a-z0-9]+")


@dataclass
class SweepStepRequest:
    """What the engine needs to run one sweep step's trials."""

    pipeline: str
    step: str
    run_id: str
    name: str  # the sweep's name (its trials are jobs <name>-t<N>)
    notebook: str  # the trial notebook (the step notebook, outputs saved in the trial's job)
    folder: str  # the step notebook's folder: where its trials run and its local modules are
    code: str  # the step's code, for the engine's own check that the objective is logged
    parameters: dict[str, Any]  # the step's parameter values; each trial's values go over them
    sweep: Any  # model.StepSweep
    timeout: float | None = None  # each trial's limit (the step's ``timeout``)
    gpus: int = 0
    stop: threading.Event = field(default_factory=threading.Event)  # set: cancel the sweep


@dataclass
class SweepStepResult:
    ok: bool
    error: str | None = None
    sweep_id: str | None = None
    best: dict[str, Any] | None = None  # the best TrialView's to_dict()
    job_dir: str | None = None  # the best trial's job folder
    counts: dict[str, int] = field(default_factory=dict)  # trials by status


@dataclass(frozen=True)
class SweepSteps:
    """How a runner runs sweep steps, handed in by the engine: ``run`` drives the trials;
    ``detached_module`` (``python -m MODULE RUN_ID``) runs a detached run with this same
    ``run``, so a background run can sweep too."""

    run: Callable[[SweepStepRequest], SweepStepResult]
    detached_module: str


# -- checks, when the pipeline is loaded ----------------------------------------------------------
def _sources(pipeline: Pipeline, step: Step) -> list[str]:
    """The step's code (IPython lines turned into Python) and the local modules it imports."""
    texts = []
    for cell in step.code_cells:
        if cell.source.strip():
            texts.append(ast.unparse(parse(cell.source, f"step {step.name}, cell {cell.origin}")))
    roots = [Path(step.notebook).parent]
    if Path(pipeline.directory) not in roots:
        roots.append(Path(pipeline.directory))
    for rel in local_modules(local_imports(step), roots):
        path = Path(rel) if Path(rel).is_absolute() else roots[0] / rel
        try:
            texts.append(path.read_text(errors="replace"))
        except OSError:
            continue
    return texts


def step_parameters(pipeline: Pipeline, step: Step) -> list[str]:
    """The names a trial may set: the step notebook's ``parameters`` cell (pipeline.yaml), and
    the pipeline parameters the step's code reads."""
    declared = _assigned(step.parameters_cell) if pipeline.kind == "yaml" else []
    code = names_of(step.prelude + step.body, f"step {step.name}")
    read = set(code.free) | code.late
    return list(dict.fromkeys([*declared, *(p for p in pipeline.parameters if p in read)]))


def check(pipeline: Pipeline, step: Step, where: str) -> None:
    """Refuse a sweep that cannot work, before anything runs: a swept name the step does not
    take as a parameter, one fixed by the step's ``parameters:``, and an objective its code
    never logs."""
    sweep = step.sweep
    if sweep is None:
        return
    known = step_parameters(pipeline, step)
    for name in sweep.space.names:
        if name in step.fixed_parameters:
            raise SpecError(
                f"{where}.space.{name}",
                f"is also fixed by the step's parameters ({name}: {step.fixed_parameters[name]!r})",
                "sweep it or fix it, not both",
            )
        if name not in known:
            raise SpecError(
                f"{where}.space.{name}",
                f"is not a parameter of step {step.name} "
                f"(its parameters: {', '.join(known) or 'none'})",
                f"assign {name} in the cell tagged 'parameters' of "
                f"{Path(step.notebook).name}, or sweep one of its parameters",
            )
    logged = unlogged(_sources(pipeline, step), sweep.objective.metric)
    if logged is None:
        return
    raise SpecError(
        f"{where}.objective",
        f"step {step.name} never logs {sweep.objective.metric!r} ({logged})",
        f"call nbscale.log_metric({sweep.objective.metric!r}, value) in the step, or name a "
        "metric it logs",
    )


def refuse_compile(pipeline: Pipeline, target: str, platform: str, native: str) -> None:
    """A compile target without sweep steps (KFP; SageMaker Pipelines compiles one into a
    Tuning step): refuse a pipeline with one, saying what to do."""
    swept = [pipeline.steps[n] for n in pipeline.order() if pipeline.steps[n].sweep is not None]
    if not swept:
        return
    step = swept[0]
    sweep = step.sweep
    assert sweep is not None
    command = (
        f"nbscale sweep {Path(step.notebook).name} --sweep '{sweep.space}' --objective "
        f"{sweep.objective} --trials {sweep.trials} --parallel {sweep.parallel} "
        f"--backend <your {platform} backend>"
    )
    raise SpecError(
        f"step {step.name}",
        f"has a sweep: block, and the {target} target cannot compile a sweep step (nbscale "
        f"does not build a {native} inside a {platform} pipeline)",
        f"run the pipeline here (nbscale pipeline run {Path(pipeline.source).name}), or run "
        f"the sweep on {platform} with {command} (or %%train --sweep) and give its best values "
        "to the pipeline as parameters without the sweep: block",
    )


# -- running ----------------------------------------------------------------------------------------
def sweep_name(pipeline: str, step: str) -> str:
    """A sweep name (lower-case letters, digits and '-', at most 40) for the step's trials."""
    slug = _SLUG.sub("-", f"{pipeline}-{step}".lower()).strip("-")[:40].strip("-")
    return slug if slug and slug[0].isalnum() else f"s-{slug}"[:40].strip("-")


def trial_notebook(
    pipeline: Pipeline, step: Step, inputs: dict[str, str], run_id: str, kernel_name: str
) -> dict[str, Any]:
    """The step notebook as each trial runs it: in the step notebook's folder (as a step
    runs), its outputs saved in the trial's own job folder (``$NBSCALE_JOB_DIR``)."""
    nb = stepbook.build(pipeline, step, inputs, "", kernel_name)
    folder = str(Path(step.notebook).parent)
    for cell in nb["cells"]:
        if "nbscale-outputs" in cell["metadata"]["tags"]:
            cell["source"] = (
                f"{stepbook.ARTIFACTS}.save(globals(), {json.dumps(sorted(step.outputs))}, "
                f"__import__('os').path.join(__import__('os').environ['NBSCALE_JOB_DIR'], "
                f"{TRIAL_OUTPUTS!r}))"
            )
    cwd = stepbook._cell("code", f"__import__('os').chdir({folder!r})", ["nbscale-cwd"])
    nb["cells"].insert(1, cwd)
    # the run is part of the notebook, so each run of the step is its own sweep (a sweep of
    # the same notebook would resume the earlier run's study)
    nb["metadata"]["nbscale"].update(run=run_id, sweep=step.sweep.to_dict())
    return nb


def request(
    pipeline: Pipeline,
    step: Step,
    inputs: dict[str, str],
    values: dict[str, Any],
    run_id: str,
    base: Path,
    kernel_name: str,
) -> SweepStepRequest:
    """Write the trial notebook under ``base`` and say what the engine is to run."""
    notebook = stepbook.write(
        trial_notebook(pipeline, step, inputs, run_id, kernel_name), base / "trial.ipynb"
    )
    code = "\n".join(
        line
        for cell in step.code_cells
        for line in cell.source.splitlines()
        if not line.lstrip().startswith(("%", "!"))
    )
    return SweepStepRequest(
        pipeline=pipeline.name,
        step=step.name,
        run_id=run_id,
        name=sweep_name(pipeline.name, step.name),
        notebook=str(notebook),
        folder=str(Path(step.notebook).parent),
        code=code,
        parameters=dict(values),
        sweep=step.sweep,
        timeout=step.timeout,
        gpus=step.resources.gpu,
    )


def adopt(result: SweepStepResult, objective: str, outputs_dir: Path, notebook: Path) -> str | None:
    """Make the best trial's outputs and executed notebook the step's, and write
    ``sweep.json`` beside them; the problem when they cannot be, else None."""
    assert result.job_dir and result.best
    saved = Path(result.job_dir) / TRIAL_OUTPUTS
    if not (saved / "manifest.json").is_file():
        return f"its best trial {result.best['number']} saved no outputs in {saved}"
    if outputs_dir.exists():
        shutil.rmtree(outputs_dir)
    # the manifest is signed over names and hashes, not the folder: a copy verifies the same
    shutil.copytree(saved, outputs_dir)
    executed = Path(result.job_dir) / "notebooks" / "rank-0.ipynb"
    if executed.is_file():
        shutil.copyfile(executed, notebook)
    record = {
        "sweep": result.sweep_id,
        "best_trial": result.best["number"],
        "objective": objective,
        "value": result.best["value"],
        "params": result.best["params"],
        "job": result.best["job_id"],
        "trials": result.counts,
    }
    (outputs_dir.parent / RECORD).write_text(json.dumps(record, indent=1, default=str))
    return None


def read_record(outputs_dir: str | None) -> dict[str, Any] | None:
    """What the sweep of the step whose outputs are in ``outputs_dir`` found, if it swept."""
    if not outputs_dir:
        return None
    try:
        return json.loads((Path(outputs_dir).parent / RECORD).read_text())
    except (OSError, ValueError):
        return None
