"""The cache key of a step: its source, parameters, inputs and the local modules it imports.

Each part is hashed apart and kept with the cache entry, so a miss can say
which part changed.
"""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path
from typing import Any

from .dataflow import local_imports
from .model import Pipeline, Step
from .stepbook import parameters_source

FORMAT = 1  # bump when the step notebook or artifact layout changes


def _h(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=repr).encode()).hexdigest()


def _module_files(name: str, roots: list[Path]) -> list[Path]:
    top = name.split(".")[0]
    for root in roots:
        if (root / f"{top}.py").is_file():
            return [root / f"{top}.py"]
        if (root / top / "__init__.py").is_file():
            return sorted(p for p in (root / top).rglob("*.py") if "__pycache__" not in p.parts)
    return []


def local_modules(modules: set[str], roots: list[Path]) -> dict[str, str]:
    """``relative path -> sha256`` of every module file found under ``roots``, following their imports."""
    seen: dict[str, str] = {}
    todo = sorted(modules)
    while todo:
        for path in _module_files(todo.pop(), roots):
            key = str(path)
            if key in seen:
                continue
            data = path.read_bytes()
            seen[key] = hashlib.sha256(data).hexdigest()
            try:
                tree = ast.parse(data)
            except SyntaxError:
                continue
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    todo += [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    todo.append(node.module)
    base = roots[0]
    return {
        (str(Path(k).relative_to(base)) if Path(k).is_relative_to(base) else k): v
        for k, v in sorted(seen.items())
    }


def components(
    pipeline: Pipeline,
    step: Step,
    values: dict[str, Any],
    input_digests: dict[str, str],
    kernel_name: str,
) -> dict[str, Any]:
    roots = [Path(step.notebook).parent]
    if Path(pipeline.directory) not in roots:
        roots.append(Path(pipeline.directory))
    parts = {
        "source": _h(
            [
                FORMAT,
                kernel_name,
                step.source_text(),
                sorted(step.outputs),
                parameters_source(pipeline, step),
            ]
        ),
        "parameters": values,
        "inputs": input_digests,
        "modules": local_modules(local_imports(step), roots),
    }
    if step.sweep is not None:  # only a sweep step has it: other steps' keys stay as they were
        parts["sweep"] = step.sweep.to_dict()
    return parts


def key(parts: dict[str, Any]) -> str:
    return _h(parts)


def explain(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    """Why a step misses the cache, in words."""
    if old is None:
        return "miss: first run of this step"
    reasons = []
    if old.get("source") != new["source"]:
        reasons.append("source changed")
    changed = sorted(
        k
        for k in set(old.get("parameters", {})) | set(new["parameters"])
        if old.get("parameters", {}).get(k, object) != new["parameters"].get(k, object)
    )
    if changed:
        reasons.append("parameter " + ", ".join(changed) + " changed")
    inputs = sorted(
        k
        for k in set(old.get("inputs", {})) | set(new["inputs"])
        if old.get("inputs", {}).get(k) != new["inputs"].get(k)
    )
    if inputs:
        reasons.append("input " + ", ".join(inputs) + " changed")
    modules = sorted(
        k
        for k in set(old.get("modules", {})) | set(new["modules"])
        if old.get("modules", {}).get(k) != new["modules"].get(k)
    )
    if modules:
        reasons.append("module " + ", ".join(modules) + " changed")
    if old.get("sweep") != new.get("sweep"):
        old_sweep, new_sweep = old.get("sweep") or {}, new.get("sweep") or {}
        keys = sorted(
            k for k in set(old_sweep) | set(new_sweep) if old_sweep.get(k) != new_sweep.get(k)
        )
        if not old_sweep or not new_sweep:
            reasons.append("sweep block " + ("added" if new_sweep else "removed"))
        else:
            reasons.append("sweep " + ", ".join(keys) + " changed")
    return "miss: " + ("; ".join(reasons) if reasons else "no cached outputs")


def module_sources(pipeline: Pipeline, step: Step) -> dict[str, str]:
    """The local modules a step imports, by path relative to its notebook, to travel with it."""
    base = Path(step.notebook).parent
    found = local_modules(local_imports(step), [base])
    return {rel: (base / rel).read_text() for rel in found if not Path(rel).is_absolute()}
