"""Typed values from the command line: ``-p epochs 5`` gives an int, as papermill does."""

from __future__ import annotations

import json
from typing import Any

from ..errors import SpecError


def typed_value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text[:1] in "[{":
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text


def parse_env(
    pairs: list[str] | None, option: str = "--env", example: str = "LR=0.1"
) -> dict[str, str]:
    """``K=V`` pairs of a repeatable option; a bad one is an error naming ``option``."""
    env = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SpecError(option, f"{pair!r} is not KEY=VALUE", f"write e.g. {option} {example}")
        env[key] = value
    return env
