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
        retries: 1
        timeout: 600
        cache: true

Each notebook's cell tagged ``parameters`` keeps its defaults; cells above
it run first (its imports), cells below are the step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import SpecError
from . import notebooks
from .model import Cell, Pipeline, Resources, Step
from .parameters import check_value

STEP_KEYS = {
    "name",
    "notebook",
    "depends_on",
    "parameters",
    "resources",
    "retries",
    "timeout",
    "cache",
}
RESOURCE_KEYS = {"cpu", "memory", "gpu", "instance_type"}


def _load_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SpecError(str(path), f"is not valid YAML: {exc}", "fix the file") from exc
    if not isinstance(data, dict) or not isinstance(data.get("steps"), list):
        raise SpecError(str(path), "needs a 'steps:' list", "see examples/pipeline/pipeline.yaml")
    unknown = set(data) - {"name", "parameters", "steps"}
    if unknown:
        raise SpecError(
            str(path), f"has unknown key {sorted(unknown)[0]!r}", "use name, parameters and steps"
        )
    return data


def _resources(where: str, raw: Any) -> Resources:
    if raw is None:
        return Resources()
    if not isinstance(raw, dict) or set(raw) - RESOURCE_KEYS:
        raise SpecError(f"{where}.resources", f"takes only {', '.join(sorted(RESOURCE_KEYS))}")
    cpu, gpu = raw.get("cpu"), raw.get("gpu", 0)
    if cpu is not None and (not isinstance(cpu, int | float) or cpu <= 0):
        raise SpecError(f"{where}.resources.cpu", f"must be a positive number, got {cpu!r}")
    if not isinstance(gpu, int) or gpu < 0:
        raise SpecError(f"{where}.resources.gpu", f"must be a whole number >= 0, got {gpu!r}")
    memory = raw.get("memory")
    return Resources(
        cpu=cpu,
        memory=str(memory) if memory is not None else None,
        gpu=gpu,
        instance_type=raw.get("instance_type"),
    )


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
    defaults = data.get("parameters") or {}
    if not isinstance(defaults, dict):
        raise SpecError("parameters", "must be a mapping of name: default")
    for name, value in defaults.items():
        check_value(name, value)
    steps: dict[str, Step] = {}
    for i, raw in enumerate(data["steps"]):
        where = f"steps[{i}]"
        if not isinstance(raw, dict) or "name" not in raw or "notebook" not in raw:
            raise SpecError(
                where,
                "needs 'name' and 'notebook'",
                "e.g. - {name: prepare, notebook: prepare.ipynb}",
            )
        unknown = set(raw) - STEP_KEYS
        if unknown:
            raise SpecError(
                where,
                f"has unknown key {sorted(unknown)[0]!r}",
                f"use {', '.join(sorted(STEP_KEYS))}",
            )
        name = str(raw["name"])
        if name in steps:
            raise SpecError(where, f"repeats the step name {name!r}", "give each step its own name")
        nb_path = (path.parent / str(raw["notebook"])).resolve()
        if not nb_path.is_file():
            raise SpecError(
                f"{where}.notebook", f"{raw['notebook']} does not exist next to {path.name}"
            )
        prelude, params_cell, body = _split(nb_path)
        depends = raw.get("depends_on") or []
        if isinstance(depends, str):
            depends = [depends]
        fixed = raw.get("parameters") or {}
        if not isinstance(fixed, dict):
            raise SpecError(f"{where}.parameters", "must be a mapping of name: value")
        for pname, value in fixed.items():
            check_value(pname, value)
        timeout = raw.get("timeout")
        if timeout is not None and not isinstance(timeout, int | float):
            raise SpecError(f"{where}.timeout", f"must be seconds, got {timeout!r}")
        retries = raw.get("retries", 0)
        if not isinstance(retries, int):
            raise SpecError(f"{where}.retries", f"must be a whole number, got {retries!r}")
        steps[name] = Step(
            name=name,
            notebook=str(nb_path),
            prelude=prelude,
            parameters_cell=params_cell,
            body=body,
            depends_on=[str(d) for d in depends],
            fixed_parameters=dict(fixed),
            resources=_resources(where, raw.get("resources")),
            retries=retries,
            timeout=float(timeout) if timeout is not None else None,
            cache=bool(raw.get("cache", True)),
        )
    pipeline = Pipeline(
        name=str(data.get("name") or path.parent.name),
        source=str(path),
        kind="yaml",
        directory=str(path.parent),
        steps=steps,
        parameters=dict(defaults),
    )
    pipeline.validate()
    return pipeline
