"""What a pipeline is once parsed: steps made of notebook cells, a DAG, parameters.

Both ways of writing a pipeline (one notebook with Kale-style cell tags, or a
``pipeline.yaml`` of notebooks) end up as this model, so running, caching and
compiling know only one shape.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cpus import allowed_cpus
from ..errors import SpecError
from ..sweeps.space import Objective, Space

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,62}$")


@dataclass(frozen=True)
class Cell:
    """One notebook cell of a step; ``origin`` is its index in the source notebook."""

    kind: str  # "code" or "markdown"
    source: str
    origin: int | None = None
    notebook: str = ""


@dataclass
class Resources:
    cpu: float | None = None
    memory: str | None = None  # Kubernetes-style quantity: "2Gi", "512Mi"
    gpu: int = 0
    instance_type: str | None = None
    nodes: int = 1  # more than one: a distributed training step (SageMaker TrainingStep)

    def to_dict(self) -> dict[str, Any]:
        return {
            k: v
            for k, v in self.__dict__.items()
            if v not in (None, 0) and not (k == "nodes" and v == 1)
        }


@dataclass(frozen=True)
class StepSweep:
    """A step's ``sweep:`` block: its notebook runs once per trial, the best trial's outputs
    become the step's (``nbscale.pipelines.step_sweep``)."""

    space: Space
    objective: Objective
    trials: int = 16
    parallel: int = 1
    algorithm: str = "tpe"
    pruner: str = "median"
    max_failed: int = 3
    seed: int | None = None
    #: the keys the block wrote (the rest are defaults): a target that cannot honour a key
    #: refuses it only where it was asked for
    given: frozenset[str] = frozenset()

    def search(self) -> dict[str, Any]:
        """The ``SweepSpec`` options of this block (how many trials, how they are searched)."""
        return {
            "trials": self.trials,
            "parallel": self.parallel,
            "algorithm": self.algorithm,
            "pruner": self.pruner,
            "max_failed": self.max_failed,
            "seed": self.seed,
        }

    def to_dict(self) -> dict[str, Any]:
        """Everything that decides what the sweep finds: part of the step's cache key."""
        return {
            "space": self.space.to_list(),
            "objective": str(self.objective),
            **self.search(),
        }


@dataclass
class Step:
    name: str
    notebook: str  # the source notebook this step's cells come from
    prelude: list[Cell] = field(default_factory=list)  # runs before the parameters cell
    parameters_cell: str = ""  # default assignments (papermill's "parameters" cell)
    body: list[Cell] = field(default_factory=list)
    depends_on: list[str] = field(default_factory=list)
    fixed_parameters: dict[str, Any] = field(
        default_factory=dict
    )  # per-step values from pipeline.yaml
    resources: Resources = field(default_factory=Resources)
    retries: int = 0
    timeout: float | None = None
    cache: bool = True
    sweep: StepSweep | None = None  # run as a sweep of trials (pipeline.yaml ``sweep:``)
    # filled by dataflow.analyse
    inputs: dict[str, str] = field(default_factory=dict)  # name -> producing step
    outputs: list[str] = field(default_factory=list)
    uses_parameters: list[str] = field(default_factory=list)

    @property
    def code_cells(self) -> list[Cell]:
        return [c for c in self.prelude + self.body if c.kind == "code"]

    def source_text(self) -> str:
        """The code that defines the step's behaviour, parameters cell excluded (values hash apart)."""
        return "\n# --- cell ---\n".join(c.source for c in self.code_cells)


@dataclass
class Pipeline:
    name: str
    source: str  # path of the notebook or pipeline.yaml
    kind: str  # "tagged" or "yaml"
    directory: str  # where steps run (the kernel's cwd)
    steps: dict[str, Step]
    parameters: dict[str, Any] = field(default_factory=dict)  # defaults
    warnings: list[str] = field(default_factory=list)

    def order(self) -> list[str]:
        """Steps in a topological order (stable: file order among ready steps)."""
        return topological({n: s.depends_on for n, s in self.steps.items()})

    def width(self, selected: list[str]) -> int:
        """How many of ``selected`` can run at once: the most of them at one depth of the DAG."""
        return widest_level({n: s.depends_on for n, s in self.steps.items()}, selected)

    def ancestors(self, name: str) -> set[str]:
        seen: set[str] = set()
        stack = list(self.steps[name].depends_on)
        while stack:
            dep = stack.pop()
            if dep not in seen:
                seen.add(dep)
                stack.extend(self.steps[dep].depends_on)
        return seen

    def descendants(self, name: str) -> set[str]:
        return {s for s in self.steps if name in self.ancestors(s)}

    def validate(self) -> None:
        if not self.steps:
            raise SpecError(
                "pipeline",
                f"{self.source} defines no steps",
                "tag a cell step:NAME, or list steps in pipeline.yaml",
            )
        for step in self.steps.values():
            if not NAME_RE.match(step.name):
                raise SpecError(
                    f"step {step.name!r}",
                    "is not a valid name",
                    "use letters, digits, _ and -, starting with a letter",
                )
            for dep in step.depends_on:
                if dep not in self.steps:
                    raise SpecError(
                        f"step {step.name}",
                        f"depends on unknown step {dep!r}",
                        f"known steps: {', '.join(self.steps)}",
                    )
            if step.retries < 0:
                raise SpecError(f"step {step.name}: retries", "must be >= 0")
            if step.timeout is not None and step.timeout <= 0:
                raise SpecError(
                    f"step {step.name}: timeout", "must be a positive number of seconds"
                )
        self.order()

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "kind": self.kind,
            "parameters": self.parameters,
            "steps": [
                {
                    "name": s.name,
                    "depends_on": s.depends_on,
                    "inputs": s.inputs,
                    "outputs": s.outputs,
                    "parameters": s.uses_parameters,
                    "resources": s.resources.to_dict(),
                    "retries": s.retries,
                    "timeout": s.timeout,
                    "cache": s.cache,
                    **({"sweep": s.sweep.to_dict()} if s.sweep else {}),
                }
                for s in (self.steps[n] for n in self.order())
            ],
            "warnings": self.warnings,
        }


def topological(depends_on: dict[str, list[str]]) -> list[str]:
    """Step names in a topological order of ``depends_on`` (name -> the steps it needs), stable:
    file order among ready steps. A cycle is a ``SpecError`` naming the steps in it."""
    done: list[str] = []
    pending = list(depends_on)
    while pending:
        ready = [s for s in pending if all(d in done for d in depends_on[s])]
        if not ready:
            raise SpecError(
                "pipeline",
                f"has a dependency cycle among {', '.join(pending)}",
                "remove one of the prev:/depends_on links",
            )
        done.extend(ready[:1])
        pending.remove(ready[0])
    return done


def widest_level(depends_on: dict[str, list[str]], selected: list[str]) -> int:
    """The most ``selected`` steps at one depth of the DAG (counting only selected ancestors)."""
    depth: dict[str, int] = {}
    for name in topological(depends_on):
        deps = [d for d in depends_on[name] if d in selected]
        depth[name] = 1 + max((depth[d] for d in deps), default=0)
    levels = [depth[n] for n in selected]
    return max((levels.count(v) for v in set(levels)), default=1)


PIPELINE_FILES = ("pipeline.yaml", "pipeline.yml")
MAX_PARALLEL = 64  # steps at once on this machine, each in a kernel of its own (~100 MiB)


def checked_max_parallel(value: Any) -> int | None:
    """``--max-parallel`` as given (None: the CPU count), or a ``SpecError`` saying what to give."""
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PARALLEL
    ):
        raise SpecError(
            "--max-parallel",
            f"is {value!r}, not a count of steps from 1 to {MAX_PARALLEL}",
            "give how many steps may run at once, like 2 (each runs in a kernel of its own)",
        )
    return value


def steps_at_once(value: Any) -> int:
    """How many steps a run may run at once: ``--max-parallel`` as checked, else the CPUs this
    process may run on. The runner and the first kernel's guess both ask here, so they agree."""
    return checked_max_parallel(value) or allowed_cpus()


def pipeline_file(folder: Path) -> Path | None:
    """The pipeline file a folder given as the pipeline stands for, or None."""
    return next((folder / n for n in PIPELINE_FILES if (folder / n).is_file()), None)


def resolve(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise SpecError("PATH", f"{path} does not exist", "give a tagged .ipynb or a pipeline.yaml")
    return p.resolve()
