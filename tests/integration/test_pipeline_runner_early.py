"""A runner process starts its first notebook handling early: nbformat imported and the step
notebooks' validator compiled in the background, without the IRI grammar, once per process,
and never inside a user's kernel."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

EARLY = """
import json, sys, threading
{prelude}
from nbscale.pipelines import kernels
from nbscale.pipelines.stepbook import NBFORMAT, NBFORMAT_MINOR
kernels.start_early()
first = kernels._early
kernels.start_early()  # a second call starts nothing more
kernels.wait_early()
started = first is not None
compiled = False
if "nbformat.validator" in sys.modules:
    from nbformat.validator import validators
    compiled = any(k[1:3] == (NBFORMAT, NBFORMAT_MINOR) for k in validators)
print(json.dumps({{
    "started": started,
    "once": kernels._early is first,
    "compiled": compiled,
    "grammar": "rfc3987_syntax.syntax_helpers" in sys.modules,
    "threads": sorted(t.name for t in threading.enumerate() if t.name == "nbscale-early"),
}}))
"""


def early(prelude: str = "") -> dict:
    out = subprocess.run(
        [sys.executable, "-c", EARLY.format(prelude=prelude)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_runner_compiles_the_step_notebooks_validator_early_without_the_iri_grammar():
    seen = early()
    assert seen["started"] and seen["once"]
    assert seen["compiled"]  # the first step's papermill finds it compiled
    assert seen["grammar"] is False  # jsonschema came in without building the IRI grammar
    assert seen["threads"] == []  # done, nothing left running


def test_inside_a_users_shell_nothing_is_started_early():
    pytest.importorskip("IPython")
    shell = (
        "from IPython.core.interactiveshell import InteractiveShell\nInteractiveShell.instance()"
    )
    seen = early(shell)
    assert seen["started"] is False
    assert seen["compiled"] is False


def test_ipykernel_imported_by_a_kernelspec_lookup_is_not_a_users_kernel():
    pytest.importorskip("ipykernel")
    # jupyter_client imports it so to find the native kernel's spec, as each run does
    seen = early("import ipykernel.kernelspec")
    assert seen["started"] and seen["compiled"]
