"""Builders for the small notebooks the pipeline tests run (no tests here)."""

from __future__ import annotations

import json
from pathlib import Path


def cell(source: str, *tags: str, kind: str = "code") -> dict:
    out = {"cell_type": kind, "metadata": {"tags": list(tags)}, "source": source}
    if kind == "code":
        out.update(outputs=[], execution_count=None)
    return out


def write_notebook(path: Path, cells: list[dict]) -> Path:
    for i, c in enumerate(cells):
        c["id"] = f"c{i}"
    nb = {
        "cells": cells,
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
        },
    }
    path.write_text(json.dumps(nb))
    return path


def probe_flow(folder: Path, params: str, probe: str, use: str) -> Path:
    """``folder/flow.ipynb``: a parameters cell, then step ``probe`` and step ``use`` after it
    (for tests that look at the kernel a step ran on)."""
    folder.mkdir(parents=True, exist_ok=True)
    return write_notebook(
        folder / "flow.ipynb",
        [
            cell(params, "pipeline-parameters"),
            cell(probe, "step:probe"),
            cell(use, "step:use", "prev:probe"),
        ],
    )


def diamond(
    path: Path, sleep: float = 0.0, extra_a: str = "", params: str = "scale = 2\nlabel = 'x'"
) -> Path:
    """prepare -> left and right -> join, writing when each step ran into marks.txt."""
    mark = (
        "import time\nwith open('marks.txt', 'a') as fh:\n"
        "    fh.write(f'{STEP} start {time.time()}\\n')\n"
    )
    end = "\nwith open('marks.txt', 'a') as fh:\n    fh.write(f'{STEP} end {time.time()}\\n')\n"
    return write_notebook(
        path,
        [
            cell("import time\nfrom helper import twice", "imports"),
            cell(params, "pipeline-parameters"),
            cell(
                "STEP = 'prepare'\n"
                + mark
                + "data = list(range(5))\nsecret = 'only-in-prepare'"
                + end,
                "step:prepare",
            ),
            cell(
                "STEP = 'left'\n"
                + mark
                + f"time.sleep({sleep})\n"
                + extra_a
                + "left = [twice(v) * scale for v in data]"
                + end,
                "step:left",
                "prev:prepare",
            ),
            cell(
                "STEP = 'right'\n" + mark + f"time.sleep({sleep})\n"
                "assert 'secret' not in globals(), 'a step saw another step\\'s variable'\n"
                "import os\nopen('threads.txt', 'w').write(os.environ.get('OMP_NUM_THREADS', 'unset'))\n"
                "right = sum(data)" + end,
                "step:right",
                "prev:prepare",
            ),
            cell(
                "STEP = 'join'\n" + mark + "result = (left, right, label)\n"
                "with open('result.txt', 'w') as fh:\n    fh.write(repr(result))" + end,
                "step:join",
                "prev:left",
                "prev:right",
            ),
        ],
    )
