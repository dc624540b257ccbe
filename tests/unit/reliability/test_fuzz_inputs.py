"""R4: fuzzing bad input with Hypothesis: the magics' arguments, cell tags, notebooks and
pipeline.yaml (the REST API against a real Jupyter server: tests/integration/reliability/).

The properties: no input crashes (anything but a ``SpecError`` is a bug) and nothing is
stored or started by a refused input. Bounded: a fixed number of examples per property, no
deadline on timings."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nbscale.errors import NbscaleError, SpecError

# the pipeline loader may import IPython's parser, which imports jedi, which raises the
# recursion limit on import; do that now so hypothesis sees a stable limit
with contextlib.suppress(ImportError):
    importlib.import_module("jedi")

FUZZ = settings(
    max_examples=int(os.environ.get("NBSCALE_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)


def _message_says_what(exc: NbscaleError) -> None:
    text = str(exc)
    assert "Traceback" not in text and len(text) > 10
    if isinstance(exc, SpecError):
        assert exc.field and text.startswith(f"{exc.field}: ")
    else:  # NotFound, BackendUnavailable...: the hint says what to do
        assert exc.hint, text


OPTIONS = [
    "--backend",
    "--name",
    "--nodes",
    "--procs-per-node",
    "--gpus-per-proc",
    "--instance-type",
    "--image",
    "--env",
    "--secret-env",
    "--max-runtime",
    "--max-restarts",
    "--checkpoint-dir",
    "--tag",
    "--outputs",
    "--inputs",
    "--log-ranks",
    "--async",
    "--detach",
    "--dry-run",
    "--bogus",
]


VALUES = st.one_of(
    st.sampled_from(
        ["0", "1", "2", "-1", "99999999999999999999", "1e9", "local", "nope", "a,b", "a b", "all"]
    ),
    st.sampled_from(["K=V", "MY_API_TOKEN=x", "=v", "K", "1K=v", "RANK=0", "'", '"', "a=b=c"]),
    st.text(min_size=0, max_size=12),
)


WORDS = st.lists(st.one_of(st.sampled_from(OPTIONS), VALUES), max_size=8)


def _line(words: list[str]) -> str:
    return " ".join(words)


@FUZZ
@given(words=WORDS)
def test_train_arguments_parse_or_give_one_spec_error(words, nbscale_home):
    from magics.train_args import parse_train

    try:
        parsed = parse_train(_line(words))
    except NbscaleError as exc:
        _message_says_what(exc)
    else:
        if parsed is not None:
            spec = parsed.spec
            assert 1 <= spec.nodes <= 512 and 1 <= spec.procs_per_node <= 128
            assert json.dumps(spec.to_dict())  # what would be stored is plain JSON
    assert not (nbscale_home / "bundles").exists() and not (nbscale_home / "jobs").exists()


@FUZZ
@given(words=WORDS)
def test_job_magic_lines_parse_or_give_one_spec_error(words):
    from magics.train_args import parse_job_line, parse_jobs

    for parse in (
        lambda line: parse_job_line(line, "%attach", rank=True, outputs=True),
        lambda line: parse_job_line(line, "%logs", rank=True),
        parse_jobs,
    ):
        try:
            parse(_line(words))
        except NbscaleError as exc:
            _message_says_what(exc)


PIPELINE_WORDS = st.lists(
    st.one_of(
        st.sampled_from(
            ["run", "compile", "status", "runs", "-p", "--only", "--from", "--no-cache"]
            + ["--max-parallel", "--detach", "--target", "kfp", "sagemaker", "-o", "--limit"]
        ),
        VALUES,
    ),
    max_size=7,
)


@FUZZ
@given(words=PIPELINE_WORDS)
def test_pipeline_magic_lines_parse_or_give_one_spec_error(words):
    from magics.pipeline import parse

    try:
        parse(_line(words))
    except NbscaleError as exc:
        _message_says_what(exc)


NAMES = st.sampled_from(["a", "b", "c", "A-1", "_x", "1bad", "", " ", "a b", "x" * 70, "é"])


TAGS = st.one_of(
    st.builds(lambda n: f"step:{n}", NAMES),
    st.builds(lambda n: f"prev:{n}", NAMES),
    st.sampled_from(
        ["skip", "imports", "functions", "pipeline-parameters", "no-cache", "parameters"]
    ),
    st.text(max_size=10),
)


SOURCES = st.sampled_from(
    ["x = 1", "y = x + 1", "print(y)", "z = [x, y]", "def f(:", "", "import os", "x = undefined"]
)


CELLS = st.lists(
    st.tuples(st.sampled_from(["code", "markdown"]), SOURCES, st.lists(TAGS, max_size=3)),
    min_size=0,
    max_size=6,
)


@FUZZ
@given(cells=CELLS)
def test_tagged_notebooks_load_or_give_one_spec_error(cells, tmp_path):
    from nbscale.pipelines.loader import load
    from tests.support.pipeline_notebooks import cell, write_notebook

    path = write_notebook(
        tmp_path / "fuzz.ipynb", [cell(src, *tags, kind=kind) for kind, src, tags in cells]
    )
    try:
        pipeline = load(path)
    except NbscaleError as exc:
        _message_says_what(exc)
    else:
        assert pipeline.steps and pipeline.order()


JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)


NOTEBOOK_SHAPES = st.fixed_dictionaries(
    {
        "cells": st.one_of(
            JSON,
            st.lists(
                st.one_of(
                    JSON,
                    st.fixed_dictionaries(
                        {"cell_type": st.sampled_from(["code", "markdown", "raw", 3])},
                        optional={
                            "source": st.one_of(
                                SOURCES,
                                JSON,
                                st.lists(st.one_of(SOURCES, st.integers()), max_size=3),
                            ),
                            "metadata": st.one_of(
                                st.fixed_dictionaries({"tags": st.one_of(st.lists(TAGS), JSON)}),
                                JSON,
                            ),
                        },
                    ),
                ),
                max_size=4,
            ),
        )
    },
    optional={"metadata": JSON, "nbformat": JSON},
)


@FUZZ
@given(nb=st.one_of(NOTEBOOK_SHAPES, JSON))
def test_notebooks_of_any_shape_load_or_give_one_error(nb, tmp_path):
    from nbscale.pipelines.loader import load
    from nbscale.specs import Entry

    path = tmp_path / "shape.ipynb"
    path.write_text(json.dumps(nb))
    for attempt in (lambda: load(path), lambda: Entry.from_path(str(path))):
        try:
            attempt()
        except NbscaleError as exc:
            _message_says_what(exc)


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["true", "false", "a.ipynb", "../a.ipynb", "/etc/passwd", "2Gi", "a", ""]),
)


STEP = st.fixed_dictionaries(
    {"name": st.one_of(NAMES, SCALARS), "notebook": st.one_of(st.just("a.ipynb"), SCALARS)},
    optional={
        "depends_on": st.one_of(NAMES, st.lists(NAMES, max_size=2), SCALARS),
        "parameters": st.one_of(st.dictionaries(NAMES, SCALARS, max_size=2), SCALARS),
        "resources": st.one_of(
            st.dictionaries(
                st.sampled_from(["cpu", "memory", "gpu", "instance_type", "disk"]),
                SCALARS,
                max_size=3,
            ),
            SCALARS,
        ),
        "retries": SCALARS,
        "timeout": SCALARS,
        "cache": SCALARS,
        "colour": SCALARS,
    },
)


PIPELINE = st.one_of(
    st.fixed_dictionaries(
        {"steps": st.one_of(st.lists(STEP, max_size=3), SCALARS)},
        optional={"name": SCALARS, "parameters": st.dictionaries(NAMES, SCALARS, max_size=2)},
    ),
    SCALARS,
    st.lists(SCALARS, max_size=2),
)


@FUZZ
@given(data=PIPELINE)
def test_pipeline_yaml_loads_or_gives_one_spec_error(data, tmp_path):
    from nbscale.pipelines.loader import load
    from tests.support.pipeline_notebooks import cell, write_notebook

    write_notebook(tmp_path / "a.ipynb", [cell("x = 1")])
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(data))
    try:
        pipeline = load(tmp_path / "pipeline.yaml")
    except NbscaleError as exc:
        _message_says_what(exc)
    else:
        for step in pipeline.steps.values():
            assert step.retries >= 0 and isinstance(step.cache, bool)
            assert Path(step.notebook).is_relative_to(tmp_path)
