"""Small notebooks for tests: code cells with tags, a python3 kernelspec, written to disk."""

from __future__ import annotations

from pathlib import Path

import nbformat


def code(source: str, *tags: str) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(source)
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def write_notebook(
    path: Path, *cells: str | nbformat.NotebookNode, parameters: str | None = None
) -> Path:
    """Write ``cells`` (source strings or ``code(...)`` cells), after a parameters cell if given."""
    body = [code(parameters, "parameters")] if parameters else []
    body += [code(c) if isinstance(c, str) else c for c in cells]
    nb = nbformat.v4.new_notebook(cells=body)
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)
    return path
