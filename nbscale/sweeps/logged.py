"""Which metrics code logs, read and not run: the check that a sweep's objective is logged."""

from __future__ import annotations

import ast
from collections.abc import Iterable


def log_metric_names(source: str) -> tuple[set[str], bool]:
    """The names ``source`` passes to ``log_metric`` as literals, and whether it also passes
    one that is not a literal (then any name may be logged). Code that does not parse is not
    judged here (its job reports it): it counts as logging anything."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set(), True
    names, dynamic = set(), False
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if called != "log_metric":
            continue
        arg = (
            node.args[0]
            if node.args
            else next((k.value for k in node.keywords if k.arg == "name"), None)
        )
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            names.add(arg.value)
        else:
            dynamic = True
    return names, dynamic


def unlogged(texts: Iterable[str], metric: str) -> str | None:
    """None when one of ``texts`` may log ``metric``; else what they log instead, in words."""
    seen: set[str] = set()
    for text in texts:
        names, dynamic = log_metric_names(text)
        if dynamic or metric in names:
            return None
        seen |= names
    return f"it logs {', '.join(sorted(seen))}" if seen else "it calls log_metric nowhere"
