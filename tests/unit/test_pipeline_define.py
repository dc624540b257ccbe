"""Defining pipelines: tags, pipeline.yaml, data flow found by AST, checks before anything runs."""

from __future__ import annotations

import pytest

from nbscale.errors import SpecError
from nbscale.pipelines import load, runs, start_run
from nbscale.pipelines.parameters import resolve
from tests.support import REPO
from tests.support.pipeline_notebooks import cell, diamond, write_notebook

EXAMPLES = REPO / "examples" / "pipeline"


def test_tagged_notebook_becomes_a_dag_with_inputs_outputs_and_parameters(tmp_path):
    (tmp_path / "helper.py").write_text("def twice(v):\n    return 2 * v\n")
    pipeline = load(diamond(tmp_path / "flow.ipynb"))

    assert pipeline.order() == ["prepare", "left", "right", "join"]
    assert pipeline.steps["join"].depends_on == ["left", "right"]
    assert pipeline.steps["left"].inputs == {"data": "prepare"}
    assert pipeline.steps["join"].inputs == {"left": "left", "right": "right"}
    assert sorted(pipeline.steps["prepare"].outputs) == ["data"]  # 'secret' is read by nobody
    assert pipeline.steps["left"].uses_parameters == ["scale"]
    assert pipeline.steps["join"].uses_parameters == ["label"]
    assert pipeline.parameters == {"scale": 2, "label": "x"}
    assert "twice" not in pipeline.steps["left"].inputs  # imports cells run in every step


def test_untagged_cells_join_the_step_above_and_skip_is_left_out(tmp_path):
    path = write_notebook(
        tmp_path / "nb.ipynb",
        [
            cell("loose = 1"),
            cell("a = 1", "step:one"),
            cell("b = a + 1"),
            cell("scratch = b", "skip"),
            cell("c = b", "step:two", "prev:one"),
        ],
    )
    pipeline = load(path)
    assert [c.source for c in pipeline.steps["one"].body] == ["a = 1", "b = a + 1"]
    assert pipeline.steps["two"].inputs == {"b": "one"}
    assert any("before the first step" in w for w in pipeline.warnings)


def test_yaml_example_has_the_same_diamond_with_resources_and_retries():
    pipeline = load(EXAMPLES / "pipeline.yaml")
    tagged = load(EXAMPLES / "digits.ipynb")
    for p in (pipeline, tagged):
        assert p.order() == ["prepare", "train_a", "train_b", "compare"]
        assert p.steps["compare"].inputs == {"acc_a": "train_a", "acc_b": "train_b"}
        assert p.steps["train_a"].uses_parameters == ["C"]
    assert pipeline.steps["train_b"].retries == 1 and pipeline.steps["train_b"].timeout == 600
    assert pipeline.steps["train_a"].resources.memory == "1Gi"


@pytest.mark.parametrize(
    ("cells", "needle"),
    [
        ([cell("x = y + 1", "step:one")], "reads 'y', which no earlier step defines"),
        ([cell("a = 1", "step:one"), cell("b = a", "step:two")], "add prev:one"),
        (
            [
                cell("import numpy as np", "step:one"),
                cell("z = np.zeros(2)", "step:two", "prev:one"),
            ],
            "module imported there",
        ),
        (
            [
                cell("fh = open('f.txt', 'w')", "step:one"),
                cell("fh.write('x')", "step:two", "prev:one"),
            ],
            "open file",
        ),
        (
            [
                cell("g = (i for i in range(3))", "step:one"),
                cell("list(g)", "step:two", "prev:one"),
            ],
            "generator",
        ),
        ([cell("a = 1", "step:one", "prev:two"), cell("b = 2", "step:two", "prev:one")], "cycle"),
        ([cell("a = 1", "step:one", "prev:ghost")], "unknown step 'ghost'"),
        ([cell("x = 1")], "step:NAME"),
    ],
)
def test_bad_pipelines_are_reported_before_anything_runs(tmp_path, cells, needle):
    path = write_notebook(tmp_path / "bad.ipynb", cells)
    with pytest.raises(SpecError) as err:
        start_run(str(path), detach=False)
    assert needle in str(err.value)
    assert runs() == []  # nothing recorded


def test_names_read_inside_functions_and_comprehensions_are_found(tmp_path):
    path = write_notebook(
        tmp_path / "nb.ipynb",
        [
            cell("weights = [1, 2]\nfactor = 3", "step:one"),
            cell(
                "def score(v):\n    return v * factor\nvals = [score(w) for w in weights]",
                "step:two",
                "prev:one",
            ),
        ],
    )
    assert load(path).steps["two"].inputs == {"factor": "one", "weights": "one"}


def test_ipython_syntax_in_a_step_is_understood(tmp_path):
    path = write_notebook(
        tmp_path / "nb.ipynb",
        [
            cell("%matplotlib inline\na = 1", "step:one"),
            cell("!echo hi\nb = a", "step:two", "prev:one"),
        ],
    )
    assert load(path).steps["two"].inputs == {"a": "one"}


def test_parameters_are_typed_like_their_defaults():
    defaults = {"n": 3, "lr": 0.1, "name": "run", "flag": False, "layers": [1, 2]}
    assert resolve(defaults, {"n": 5, "lr": 1, "name": 7, "flag": True, "layers": [3]}) == {
        "n": 5,
        "lr": 1.0,
        "name": "7",
        "flag": True,
        "layers": [3],
    }
    with pytest.raises(SpecError, match="parameter n: expects int, got 'many'"):
        resolve(defaults, {"n": "many"})
    with pytest.raises(SpecError, match="expects bool"):
        resolve(defaults, {"flag": 1})
    with pytest.raises(SpecError, match="not a parameter of this pipeline.*known: n, lr"):
        resolve(defaults, {"epochs": 1})


def test_yaml_errors_name_the_field(tmp_path):
    (tmp_path / "a.ipynb").write_text((EXAMPLES / "compare.ipynb").read_text())
    (tmp_path / "pipeline.yaml").write_text(
        "steps:\n  - name: a\n    notebook: a.ipynb\n    retries: many\n"
    )
    with pytest.raises(SpecError, match=r"steps\[0\].retries: must be a whole number"):
        load(tmp_path / "pipeline.yaml")
    (tmp_path / "pipeline.yaml").write_text("steps:\n  - name: a\n    notebok: a.ipynb\n")
    with pytest.raises(
        SpecError, match=r"steps\[0\].notebook: is required; steps\[0\].notebok: is not a known key"
    ):
        load(tmp_path / "pipeline.yaml")
