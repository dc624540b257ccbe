"""A pipeline from a ``pipeline.yaml`` that lists notebooks.

    name: digits
    parameters: {seed: 0, n_estimators: 50}
    steps:
      - name: prepare
        notebook: prepare.ipynb
      - name: train_a
        notebook: train_a.ipynb
        depends_on: [prepare]
        parameters: {C: 1.0}        # fixed for this step
        resources: {cpu: 2, memory: 2Gi, gpu: 0}
      - name: train_big             # on SageMaker: a TrainingStep on 2 instances
        notebook: train_a.ipynb
        depends_on: [prepare]
        resources: {nodes: 2, gpu: 1}   # gpu (or gpus): per node
        retries: 1
        timeout: 600
        cache: true
      - name: tune
        notebook: train_a.ipynb
        depends_on: [prepare]
        sweep:                      # one run per trial; the best trial's outputs are the step's
          space: {C: "loguniform(1e-3,10)"}      # or "C=loguniform(1e-3,10) ..."
          objective: accuracy:max   # a metric the step logs with nbscale.log_metric
          trials: 8
          parallel: 2
          algorithm: tpe            # tpe, random, grid, bayesian
          pruner: median            # median, halving, none
          max_failed: 3

Each notebook's cell tagged ``parameters`` keeps its defaults; cells above
it run first (its imports), cells below are the step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ..errors import SpecError
from ..sweeps.space import Objective, Space, parse_objective, parse_space
from ..sweeps.spec import ALGORITHMS, MAX_TRIALS, PRUNERS
from . import notebooks, step_sweep
from .model import NAME_RE, Cell, Pipeline, Resources, Step, StepSweep
from .parameters import check_value

MAX_RETRIES = 100


class _Strict(BaseModel):
    # strict: "false" is not a boolean and "3" is not a number; unknown keys are errors
    model_config = ConfigDict(extra="forbid", strict=True)


class ResourcesModel(_Strict):
    cpu: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    memory: str | int | None = Field(None, description='a Kubernetes quantity such as "2Gi"')
    gpu: Annotated[int, Field(ge=0, le=16, validation_alias=AliasChoices("gpu", "gpus"))] = 0
    instance_type: str | None = None
    # more than one: a distributed training step (a SageMaker TrainingStep on that many
    # instances); the local runner and the KFP target refuse it (refuse_nodes)
    nodes: Annotated[int, Field(ge=1, le=100)] = 1


class SweepModel(_Strict):
    """A step's ``sweep:`` block; the space and objective in the words of ``%%train --sweep``."""

    space: Any = Field(description='{NAME: "DIST(...)"}, or one string "NAME=DIST(...) ..."')
    objective: Any = Field(description="METRIC:min or METRIC:max")
    trials: Annotated[int, Field(ge=1, le=MAX_TRIALS)] = 16
    parallel: Annotated[int, Field(ge=1, le=MAX_TRIALS)] = 1
    algorithm: Literal[ALGORITHMS] = "tpe"  # type: ignore[valid-type]
    pruner: Literal[PRUNERS] = "median"  # type: ignore[valid-type]
    max_failed: Annotated[int, Field(ge=0, le=MAX_TRIALS)] = 3
    seed: int | None = None

    @field_validator("space", mode="before")
    @classmethod
    def _space(cls, value: Any) -> Space:
        ok = (
            isinstance(value, str)
            or (isinstance(value, dict) and all(isinstance(v, str) for v in value.values()))
            or (isinstance(value, list) and all(isinstance(v, str) for v in value))
        )
        if not ok:
            shown = repr(value)
            raise ValueError(
                'must be a mapping of NAME: "DIST(...)" (quoted) or one string '
                f'"NAME=DIST(...) ...", got {shown if len(shown) <= 40 else shown[:37] + "..."}'
            )
        try:
            return parse_space(value)  # the sweep grammar's own message, whatever is wrong
        except SpecError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("objective", mode="before")
    @classmethod
    def _objective(cls, value: Any) -> Objective:
        if not isinstance(value, str):
            raise ValueError(f"must be a string METRIC:min or METRIC:max, got {value!r}")
        try:
            return parse_objective(value)
        except SpecError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _grid(self) -> SweepModel:
        if self.algorithm == "grid" and isinstance(self.space, Space):
            try:
                self.space.grid_size()  # a continuous range has no grid
            except SpecError as exc:
                raise ValueError(f"algorithm grid: {exc}") from None
        return self

    def to_step(self) -> StepSweep:
        return StepSweep(
            space=self.space,
            objective=self.objective,
            trials=self.trials,
            parallel=min(self.parallel, self.trials),
            algorithm=self.algorithm,
            pruner=self.pruner,
            max_failed=self.max_failed,
            seed=self.seed,
            given=frozenset(self.model_fields_set),
        )


class StepModel(_Strict):
    name: str = Field(pattern=NAME_RE.pattern)
    notebook: str = Field(min_length=1)
    depends_on: list[str] | str = Field(default_factory=list)
    parameters: dict[str, Any] = Field(default_factory=dict)
    resources: ResourcesModel | None = None
    retries: Annotated[int, Field(ge=0, le=MAX_RETRIES)] = 0
    timeout: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    cache: bool = True
    sweep: SweepModel | None = None

    @field_validator("depends_on")
    @classmethod
    def _as_list(cls, value: list[str] | str) -> list[str]:
        return [value] if isinstance(value, str) else value


class PipelineFile(_Strict):
    name: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    steps: list[StepModel] = Field(min_length=1)


def _where(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("float", "int", "str", "list[str]", "bool") or "[" in str(part):
            continue  # pydantic names the union member it tried; the path is enough
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


_MESSAGES = {
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "bool_type": "must be true or false (unquoted)",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "finite_number": "must be a finite number",
    "missing": "is required",
    "extra_forbidden": "is not a known key",
}


def _message(err: dict) -> str:
    kind = err.get("type", "")
    if kind == "value_error":  # a check of ours: its own message, said once
        return str((err.get("ctx") or {}).get("error") or err.get("msg", "is not valid"))
    if kind == "literal_error":
        ctx = err.get("ctx") or {}
        return f"must be one of {ctx.get('expected', '')}, got {err.get('input')!r}"
    msg = _MESSAGES.get(kind)
    if msg is None:
        ctx = err.get("ctx") or {}
        bounds = {
            "greater_than": "must be > {gt}",
            "greater_than_equal": "must be >= {ge}",
            "less_than_equal": "must be <= {le}",
            "too_short": "must have at least {min_length} item(s)",
            "string_too_short": "must not be empty",
            "string_pattern_mismatch": "must use letters, digits, _ and -, starting with a letter",
        }
        msg = bounds[kind].format(**ctx) if kind in bounds else err.get("msg", "is not valid")
    if kind not in ("missing", "extra_forbidden") and "input" in err:
        shown = repr(err["input"])
        msg += f", got {shown if len(shown) <= 40 else shown[:37] + '...'}"
    return msg


def validation_errors(exc: ValidationError) -> list[str]:
    """Every error as ``path: problem`` (``steps[1].cache: must be true or false, got 'false'``)."""
    seen: dict[str, str] = {}
    for err in exc.errors():
        where = _where(err.get("loc", ()))
        seen.setdefault(where, _message(err))  # a union reports each member: keep the first
    return [f"{where}: {msg}" for where, msg in seen.items()]


def _load_yaml(path: Path) -> PipelineFile:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SpecError(str(path), f"is not valid YAML: {exc}", "fix the file") from exc
    except RecursionError:
        raise SpecError(str(path), "is nested too deeply to read", "fix the file") from None
    if not isinstance(data, dict):
        raise SpecError(
            str(path),
            "must be a mapping with a 'steps:' list",
            "see examples/pipeline/pipeline.yaml",
        )
    try:
        return PipelineFile.model_validate(data)
    except ValidationError as exc:
        errors = validation_errors(exc)
        raise SpecError(
            str(path),
            f"has {len(errors)} error{'s' if len(errors) > 1 else ''}: " + "; ".join(errors),
            "see examples/pipeline/pipeline.yaml for the keys a pipeline and a step take",
        ) from None


def _resources(raw: ResourcesModel | None) -> Resources:
    if raw is None:
        return Resources()
    return Resources(
        cpu=raw.cpu,
        memory=str(raw.memory) if raw.memory is not None else None,
        gpu=raw.gpu,
        instance_type=raw.instance_type,
        nodes=raw.nodes,
    )


def refuse_nodes(pipeline: Pipeline, where: str, hint: str) -> None:
    """A runner or compile target that runs each step on one machine: refuse a step with
    ``resources.nodes`` above 1 rather than run it on one node."""
    for name in pipeline.order():
        nodes = pipeline.steps[name].resources.nodes
        if nodes > 1:
            raise SpecError(
                f"step {name} resources.nodes",
                f"asks for {nodes} nodes, and {where} runs a step on one machine",
                hint,
            )


def _notebook(path: Path, where: str, given: str) -> Path:
    """The step's notebook, which must lie inside the pipeline's folder."""
    folder = path.parent.resolve()
    if "\0" in given:
        raise SpecError(f"{where}.notebook", "contains a NUL character")
    try:
        nb_path = (folder / given).resolve()
    except (OSError, RuntimeError, ValueError) as exc:
        raise SpecError(f"{where}.notebook", f"{given!r} is not a usable path ({exc})") from None
    if not nb_path.is_relative_to(folder):
        raise SpecError(
            f"{where}.notebook",
            f"{given!r} is outside the pipeline's folder {folder}",
            f"put the notebook next to {path.name} (or in a folder below it)",
        )
    if nb_path.suffix != ".ipynb":
        raise SpecError(f"{where}.notebook", f"{given!r} is not a .ipynb notebook")
    if not nb_path.is_file():
        raise SpecError(f"{where}.notebook", f"{given} does not exist next to {path.name}")
    return nb_path


def _split(path: Path) -> tuple[list[Cell], str, list[Cell]]:
    nb = notebooks.read(path)
    prelude: list[Cell] = []
    params = ""
    body: list[Cell] = []
    seen_params = False
    for index, raw in enumerate(nb["cells"]):
        kind = raw.get("cell_type")
        if kind not in ("code", "markdown"):
            continue
        cell = Cell(kind, notebooks.source(raw), index, str(path))
        if "parameters" in notebooks.tags(raw) and not seen_params:
            params, seen_params = cell.source, True
        elif "skip" in notebooks.tags(raw):
            continue
        else:
            (body if seen_params else prelude).append(cell)
    if not seen_params:  # no parameters cell: the whole notebook is the step
        body, prelude = prelude, []
    return prelude, params, body


def load(path: Path) -> Pipeline:
    data = _load_yaml(path)
    for name, value in data.parameters.items():
        check_value(name, value)
    steps: dict[str, Step] = {}
    for i, raw in enumerate(data.steps):
        where = f"steps[{i}]"
        if raw.name in steps:
            raise SpecError(
                f"{where}.name",
                f"repeats the step name {raw.name!r}",
                "give each step its own name",
            )
        if raw.sweep is not None and raw.retries:
            raise SpecError(
                f"{where}.retries",
                "a sweep step does not run again as a whole: its failed trials are retried",
                "drop retries and set sweep.max_failed",
            )
        nb_path = _notebook(path, where, raw.notebook)
        prelude, params_cell, body = _split(nb_path)
        for pname, value in raw.parameters.items():
            check_value(pname, value)
        steps[raw.name] = Step(
            name=raw.name,
            notebook=str(nb_path),
            prelude=prelude,
            parameters_cell=params_cell,
            body=body,
            depends_on=list(raw.depends_on),
            fixed_parameters=dict(raw.parameters),
            resources=_resources(raw.resources),
            retries=raw.retries,
            timeout=raw.timeout,
            cache=raw.cache,
            sweep=raw.sweep.to_step() if raw.sweep else None,
        )
    pipeline = Pipeline(
        name=str(data.name or path.parent.name),
        source=str(path),
        kind="yaml",
        directory=str(path.parent),
        steps=steps,
        parameters=dict(data.parameters),
    )
    pipeline.validate()
    for i, raw in enumerate(data.steps):
        step_sweep.check(pipeline, pipeline.steps[raw.name], f"steps[{i}].sweep")
    return pipeline
