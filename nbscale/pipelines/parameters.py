"""Pipeline parameters: defaults read from a cell, overrides checked against their type.

Values reach a step through papermill's ``parameters`` cell; papermill's
Python translator quotes them, so a string stays a string and a list a list.
"""

from __future__ import annotations

import ast
from typing import Any

from ..errors import SpecError

TYPES = (bool, int, float, str, list, dict, type(None))


def defaults_from_source(source: str, where: str) -> dict[str, Any]:
    """``name = literal`` lines of a parameters cell, in order."""
    if not source.strip():
        return {}
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise SpecError(where, f"is not valid Python: {exc.msg} (line {exc.lineno})") from exc
    values: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if len(targets) != 1 or not isinstance(targets[0], ast.Name) or node.value is None:
                raise SpecError(
                    where,
                    f"line {node.lineno} is not 'name = value'",
                    "write one parameter per line",
                )
            try:
                values[targets[0].id] = ast.literal_eval(node.value)
            except ValueError as exc:
                raise SpecError(
                    where,
                    f"{targets[0].id} is not a literal value",
                    "parameters must be numbers, strings, booleans, lists or dicts",
                ) from exc
    return values


def check_value(name: str, value: Any) -> Any:
    if not isinstance(value, TYPES):
        raise SpecError(
            f"parameter {name}",
            f"has type {type(value).__name__}",
            "use int, float, str, bool, list or dict",
        )
    return value


def coerce(name: str, value: Any, default: Any) -> Any:
    """The override ``value`` as the type of ``default``; a mismatch is the user's to fix."""
    check_value(name, value)
    if default is None or value is None:
        return value
    want = type(default)
    if want is bool:
        ok = isinstance(value, bool)
    elif want is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif want is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif want is str:
        ok = isinstance(value, str | int | float) and not isinstance(value, bool)
        value = str(value) if ok else value
    else:
        ok = isinstance(value, want)
    if not ok:
        raise SpecError(
            f"parameter {name}",
            f"expects {want.__name__}, got {value!r}",
            f"give a {want.__name__} like the default {default!r}",
        )
    return value


def resolve(defaults: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    values = dict(defaults)
    for name, value in (overrides or {}).items():
        if name not in defaults:
            known = ", ".join(defaults) or "(none)"
            raise SpecError(
                f"parameter {name}", "is not a parameter of this pipeline", f"known: {known}"
            )
        values[name] = coerce(name, value, defaults[name])
    return values


def used_cell(source: str, used: list[str]) -> str:
    """The statements of a parameters cell that assign a parameter the step uses."""
    if not source.strip():
        return ""
    tree = ast.parse(source)
    keep = []
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if any(isinstance(t, ast.Name) and t.id in used for t in targets):
            keep.append(ast.get_source_segment(source, node) or "")
    return "\n".join(keep)
