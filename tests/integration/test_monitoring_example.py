"""examples/endpoint.ipynb runs headless with papermill: train, deploy with a baseline, normal and
drifted traffic, metrics, drift, scale, cost, undeploy."""

from __future__ import annotations

import nbformat
import papermill

from nbscale.backends.local.endpoints import ENDPOINT_ENV
from nbscale.backends.local.processes import tagged_processes
from nbscale.endpoints import endpoints
from tests.support import REPO

EXAMPLE = REPO / "examples" / "endpoint.ipynb"


def _texts(nb) -> list[str]:
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            out.append(str(o.get("text") or (o.get("data") or {}).get("text/plain") or ""))
    return out


def test_endpoint_example_runs_with_papermill(tmp_path):
    out = tmp_path / "endpoint-out.ipynb"
    papermill.execute_notebook(
        str(EXAMPLE),
        str(out),
        parameters={"name": "example-ep", "epochs": 10, "watch_looks": 2},
        cwd=str(tmp_path),
        kernel_name="python3",
        progress_bar=False,
        execution_timeout=300,
    )
    texts = "\n".join(_texts(nbformat.read(out, as_version=4)))
    assert "test accuracy" in texts
    assert "no drift in 64 features" in texts  # the held-out digits look like the training set
    assert "of 64 pixels drift" in texts  # the darker scanner does not
    assert "Invocations" in texts and "ModelLatency_p50" in texts
    assert "endpoint example-ep undeployed" in texts
    assert endpoints() == [] and tagged_processes(ENDPOINT_ENV, "example-ep") == []
