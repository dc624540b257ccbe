"""examples/pipeline: the digits diamond runs in both forms and the results agree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nbscale.pipelines import get_run, start_run
from tests.support import REPO

EXAMPLES = REPO / "examples" / "pipeline"
pytestmark = pytest.mark.timeout(300)


def best_line(notebook: str) -> str:
    cells = json.loads(Path(notebook).read_text())["cells"]
    text = "".join("".join(o.get("text", "")) for c in cells for o in c.get("outputs", []))
    return next(line for line in text.splitlines() if line.startswith("best:"))


def test_both_forms_of_the_digits_example_run_and_agree(nbscale_cli):
    tagged = start_run(str(EXAMPLES / "digits.ipynb"), detach=False)
    assert tagged.status == "SUCCEEDED", tagged.error
    proc = nbscale_cli("pipeline", "run", str(EXAMPLES / "pipeline.yaml"), "--json", check=True)
    from_yaml = get_run(json.loads(proc.stdout)["id"])
    assert from_yaml.status == "SUCCEEDED"
    assert [s["name"] for s in from_yaml.to_dict()["steps"]] == [
        "prepare",
        "train_a",
        "train_b",
        "compare",
    ]
    assert best_line(tagged.step("compare")["notebook"]) == best_line(
        from_yaml.step("compare")["notebook"]
    )
