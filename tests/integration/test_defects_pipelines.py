"""Defects of issue 14 in pipelines that need a real run: each test failed before its fix."""

from __future__ import annotations

import json
from pathlib import Path

from nbscale.pipelines import start_run
from tests.support.pipeline_notebooks import cell, write_notebook


def _two_steps(tmp_path: Path) -> Path:
    return write_notebook(
        tmp_path / "flow.ipynb",
        [
            cell("data = list(range(5))", "step:make"),
            cell(
                "total = sum(data)\nopen('total.txt', 'w').write(str(total))",
                "step:use",
                "prev:make",
            ),
        ],
    )


def _reasons(run) -> dict[str, str]:
    return {s["name"]: s["cache_reason"] for s in run.to_dict()["steps"]}


def _outputs_dir(run, step: str) -> Path:
    return Path(run.step(step)["notebook"]).parent / "outputs"


def test_a_tampered_upstream_artifact_is_not_a_cache_hit(tmp_path):
    flow = _two_steps(tmp_path)
    first = start_run(str(flow), detach=False)
    assert first.status == "SUCCEEDED", first.to_dict()
    out = _outputs_dir(first, "make")
    manifest = json.loads((out / "manifest.json").read_text())
    artifact = out / manifest["values"]["data"]["file"]
    artifact.write_bytes(artifact.read_bytes() + b"tampered")

    second = start_run(str(flow), detach=False)
    assert second.status == "SUCCEEDED", second.to_dict()
    reasons = _reasons(second)
    assert reasons["make"].startswith("miss: the cached outputs did not verify")
    assert "output 'data' changed after it was written" in reasons["make"]
    assert reasons["use"].startswith("hit: unchanged since run")  # same values again
    assert (tmp_path / "total.txt").read_text() == "10"

    # a manifest whose signature no longer matches is refused the same way
    out = _outputs_dir(second, "make")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["values"]["data"]["type"] = "builtins.dict"
    (out / "manifest.json").write_text(json.dumps(manifest))
    third = start_run(str(flow), detach=False)
    assert third.status == "SUCCEEDED", third.to_dict()
    assert "the manifest failed verification" in _reasons(third)["make"]
