"""Defining pipelines, seen through the real CLI: the no-cache tag and nbscale pipeline show."""

from __future__ import annotations

from nbscale.pipelines import load
from tests.support.pipeline_notebooks import cell, write_notebook


def test_no_cache_tag_and_show_command(tmp_path, nbscale_cli):
    path = write_notebook(
        tmp_path / "nb.ipynb",
        [
            cell("a = 1", "step:one"),
            cell("b = a", "step:two", "prev:one", "no-cache"),
        ],
    )
    pipeline = load(path)
    assert pipeline.steps["one"].cache and not pipeline.steps["two"].cache
    import json

    shown = json.loads(nbscale_cli("pipeline", "show", str(path), check=True).stdout)
    assert [(s["name"], s["inputs"], s["cache"]) for s in shown["steps"]] == [
        ("one", {}, True),
        ("two", {"a": "one"}, False),
    ]
