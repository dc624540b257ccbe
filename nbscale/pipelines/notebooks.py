"""Reading notebooks as plain JSON: fast, and enough to find cells, tags and sources."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import SpecError


def read(path: Path) -> dict[str, Any]:
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise SpecError(
            str(path), f"is not a readable notebook: {exc}", "open and save it in Jupyter"
        ) from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise SpecError(str(path), "is not a Jupyter notebook (no cells)", "give an .ipynb file")
    for i, cell in enumerate(nb["cells"]):
        meta = cell.get("metadata", {}) if isinstance(cell, dict) else None
        src = cell.get("source", "") if isinstance(cell, dict) else None
        if (
            not isinstance(meta, dict)
            or not isinstance(meta.get("tags", []), list)
            or not (
                isinstance(src, str)
                or isinstance(src, list)
                and all(isinstance(x, str) for x in src)
            )
        ):
            raise SpecError(
                f"{path}: cell {i}", "is not a notebook cell", "open and save it in Jupyter"
            )
    return nb


def source(cell: dict[str, Any]) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def tags(cell: dict[str, Any]) -> list[str]:
    return [str(t) for t in (cell.get("metadata", {}).get("tags") or [])]


def kernel_name(nb: dict[str, Any]) -> str:
    return nb.get("metadata", {}).get("kernelspec", {}).get("name") or "python3"
