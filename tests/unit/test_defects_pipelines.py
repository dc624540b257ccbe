"""Defects of issue 14 in pipelines: each test failed before its fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from nbscale.errors import SpecError
from nbscale.pipelines.loader import load
from tests.support.pipeline_notebooks import cell, write_notebook


def _step_notebook(path: Path) -> Path:
    return write_notebook(path, [cell("x = 1\nprint(x)")])


def _yaml(folder: Path, text: str) -> Path:
    path = folder / "pipeline.yaml"
    path.write_text(text)
    return path


# -- pipeline.yaml is validated by a model, every error with its path ------------


def test_cache_false_as_a_string_is_an_error_not_true(tmp_path):
    _step_notebook(tmp_path / "a.ipynb")
    path = _yaml(tmp_path, 'steps:\n  - name: a\n    notebook: a.ipynb\n    cache: "false"\n')
    with pytest.raises(SpecError, match=r"steps\[0\]\.cache: must be true or false .*got 'false'"):
        load(path)
    _yaml(tmp_path, "steps:\n  - name: a\n    notebook: a.ipynb\n    cache: false\n")
    assert load(path).steps["a"].cache is False


def test_negative_retries_are_refused(tmp_path):
    _step_notebook(tmp_path / "a.ipynb")
    path = _yaml(tmp_path, "steps:\n  - name: a\n    notebook: a.ipynb\n    retries: -1\n")
    with pytest.raises(SpecError, match=r"steps\[0\]\.retries: must be >= 0, got -1"):
        load(path)


def test_every_error_is_reported_with_its_path(tmp_path):
    _step_notebook(tmp_path / "a.ipynb")
    path = _yaml(
        tmp_path,
        "name: p\n"
        "colour: blue\n"
        "steps:\n"
        "  - name: a\n    notebook: a.ipynb\n    timeout: .inf\n    retries: 2.5\n"
        "  - name: b\n    notebook: a.ipynb\n    resources: {cpu: '2', gpux: 1}\n"
        "  - notebook: a.ipynb\n",
    )
    with pytest.raises(SpecError) as err:
        load(path)
    message = str(err.value)
    for expected in (
        "has 6 errors",
        "colour: is not a known key",
        "steps[0].timeout: must be a finite number, got inf",
        "steps[0].retries: must be a whole number, got 2.5",
        "steps[1].resources.cpu: must be a number, got '2'",
        "steps[1].resources.gpux: is not a known key",
        "steps[2].name: is required",
    ):
        assert expected in message, message


@pytest.mark.parametrize("target", ["/etc/passwd", "../outside.ipynb", "link.ipynb"])
def test_a_step_notebook_outside_the_pipeline_folder_is_refused(tmp_path, target):
    folder = tmp_path / "pipe"
    folder.mkdir()
    _step_notebook(tmp_path / "outside.ipynb")
    (folder / "link.ipynb").symlink_to(tmp_path / "outside.ipynb")
    path = _yaml(folder, f"steps:\n  - name: a\n    notebook: {target}\n")
    with pytest.raises(
        SpecError, match=r"steps\[0\]\.notebook: .* is outside the pipeline's folder"
    ):
        load(path)


def test_a_step_notebook_in_a_subfolder_is_fine(tmp_path):
    (tmp_path / "nbs").mkdir()
    _step_notebook(tmp_path / "nbs" / "a.ipynb")
    path = _yaml(tmp_path, "steps:\n  - name: a\n    notebook: nbs/a.ipynb\n")
    assert load(path).steps["a"].notebook == str(tmp_path / "nbs" / "a.ipynb")


def test_yaml_nested_past_the_parser_is_one_error(tmp_path):
    path = _yaml(tmp_path, "steps: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(SpecError, match="is nested too deeply to read"):
        load(path)
    path.write_bytes(b"steps: \xff\xfe\n")
    with pytest.raises(SpecError, match="is not valid YAML"):
        load(path)


@pytest.mark.parametrize(
    "text",
    [
        '{"cells": 3}',
        '{"cells": [7]}',
        '{"cells": [{"cell_type": "code", "metadata": []}]}',
        '{"cells": [{"cell_type": "code", "metadata": {"tags": "step:a"}}]}',
        '{"cells": ' + "[" * 100_000 + "]" * 100_000 + "}",
        '{"cells": [{"cell_type": "code", "source": [1], "metadata": {"tags": ["step:a"]}}]}',
    ],
    ids=["cells-int", "cell-int", "metadata-list", "tags-str", "deep", "source-ints"],
)
def test_a_malformed_notebook_is_one_error(tmp_path, text):
    (tmp_path / "nb.ipynb").write_text(text)
    with pytest.raises(SpecError, match="notebook|cell"):
        load(tmp_path / "nb.ipynb")


# -- a cache hit re-verifies what it reuses ------------------------------------------
