"""A pipeline from one notebook whose cells carry Kale's tags.

``step:NAME`` starts a step, ``prev:NAME`` names a step it depends on,
``imports`` and ``functions`` cells run at the start of every step,
``pipeline-parameters`` holds the parameters (one assignment each), ``skip``
leaves a cell out. An untagged cell joins the step above it, as in Kale.
``no-cache`` on any cell of a step (nbscale's own tag) turns its cache off.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import SpecError
from ..words import count, plural
from . import notebooks
from .model import Cell, Pipeline, Step

STRUCTURAL = ("imports", "functions", "pipeline-parameters", "skip")


def is_tagged(nb: dict) -> bool:
    return any(t.startswith("step:") for cell in nb["cells"] for t in notebooks.tags(cell))


def load(path: Path, nb: dict | None = None) -> Pipeline:
    nb = nb or notebooks.read(path)
    prelude: list[Cell] = []
    params: list[str] = []
    steps: dict[str, Step] = {}
    current: Step | None = None
    warnings: list[str] = []
    loose = 0
    for index, raw in enumerate(nb["cells"]):
        kind = raw.get("cell_type")
        if kind not in ("code", "markdown"):
            continue
        cell = Cell(kind, notebooks.source(raw), index, str(path))
        cell_tags = notebooks.tags(raw)
        if "skip" in cell_tags:
            continue
        if "imports" in cell_tags or "functions" in cell_tags:
            prelude.append(cell)
            continue
        if "pipeline-parameters" in cell_tags:
            params.append(cell.source)
            continue
        names = [t.split(":", 1)[1].strip() for t in cell_tags if t.startswith("step:")]
        if len(names) > 1:
            raise SpecError(
                f"cell {index}",
                f"has two step tags ({', '.join(names)})",
                "keep one step:NAME per cell",
            )
        if names:
            name = names[0]
            if name in steps and steps[name] is not current:
                raise SpecError(
                    f"cell {index}",
                    f"reopens step {name!r} defined earlier",
                    "give the step another name or move the cell next to it",
                )
            current = steps.setdefault(name, Step(name=name, notebook=str(path)))
        prevs = [t.split(":", 1)[1].strip() for t in cell_tags if t.startswith("prev:")]
        if current is None:
            if kind == "code" and cell.source.strip():
                loose += 1
            continue
        if "no-cache" in cell_tags:
            current.cache = False
        for prev in prevs:
            if prev not in current.depends_on:
                current.depends_on.append(prev)
        current.body.append(cell)
    if loose:
        warnings.append(
            f"{count(loose, 'untagged code cell')} before the first step {plural('is', loose)} "
            "not part of the pipeline"
        )
    parameters_cell = "\n".join(params)
    for step in steps.values():
        step.prelude = list(prelude)
        step.parameters_cell = parameters_cell
    from .parameters import defaults_from_source

    pipeline = Pipeline(
        name=path.stem,
        source=str(path),
        kind="tagged",
        directory=str(path.parent),
        steps=steps,
        parameters=defaults_from_source(parameters_cell, "pipeline-parameters cell"),
        warnings=warnings,
    )
    pipeline.validate()
    return pipeline
