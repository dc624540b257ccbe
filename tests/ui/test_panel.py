"""The panel in a real browser: Chromium (playwright-core) against JupyterLab on 127.0.0.1.

The browser steps live in extension/ui-tests/panel.test.mjs; this test starts
JupyterLab with the installed extension, a real endpoint with traffic and a
real pipeline run, then runs the script. Set NBSCALE_SCREENSHOTS=docs to
refresh the README's screenshots.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from tests.support import REPO
from tests.support.lab import (
    CHROMIUM,
    EXTENSION,
    running_lab,
)
from tests.support.notebooks import code, write_notebook

QUICKSTART = REPO / "examples" / "quickstart.ipynb"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture
def endpoint_with_traffic():
    import torch

    from nbscale import endpoints

    torch.manual_seed(0)
    ep = endpoints.deploy(torch.nn.Linear(8, 3), name="digits-linear", example=torch.zeros(1, 8))
    stop = threading.Event()

    def traffic():
        x = torch.randn(4, 8).numpy()
        while not stop.is_set():
            with contextlib.suppress(Exception):
                ep.predict(x)
            stop.wait(0.05)

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    yield ep.name
    stop.set()
    thread.join(5)
    with contextlib.suppress(Exception):
        endpoints.endpoint(ep.name).delete()


@pytest.fixture
def pipeline_run(lab):
    from nbscale import pipelines

    path = write_notebook(
        lab["root"] / "flow.ipynb",
        code("rows = list(range(100))", "step:prepare"),
        code("total = sum(rows)\nprint('total', total)", "step:train", "prev:prepare"),
        code("print('report', total)", "step:report", "prev:train"),
    )
    return pipelines.start_run(str(path), detach=True)


@pytest.fixture
def slow_pipeline_run(lab):
    """A detached run whose first step sleeps until the browser cancels it."""
    from nbscale import pipelines

    path = write_notebook(
        lab["root"] / "slowflow.ipynb",
        code("import time\ntime.sleep(300)", "step:wait"),
        code("print('never')", "step:after", "prev:wait"),
    )
    run = pipelines.start_run(str(path), detach=True)
    yield run
    with contextlib.suppress(Exception):
        if not pipelines.get_run(run.id).terminal:
            pipelines.cancel_run(run.id)


def test_panel_submits_follows_charts_and_cancels(
    lab, endpoint_with_traffic, pipeline_run, slow_pipeline_run, tmp_path
):
    root = lab["root"]
    if QUICKSTART.exists():
        # the quickstart trains with %%train (a job of its own) and prints its accuracy
        shutil.copy(QUICKSTART, root / "quick.ipynb")
        log_text, nested = "test accuracy", "train-cell"
    else:
        write_notebook(
            root / "quick.ipynb",
            "import nbscale\nfor epoch in range(epochs):\n    nbscale.log_metric('loss', 1.0 / (epoch + 1), step=epoch)\n",
            "print(f'finished {epochs} epochs')",
            parameters="epochs = 1",
        )
        log_text, nested = "finished 30 epochs", ""
    write_notebook(
        root / "slow.ipynb", "import time\nprint('sleeping', flush=True)\ntime.sleep(300)"
    )
    shots = Path(os.environ.get("NBSCALE_SCREENSHOTS") or tmp_path / "shots")
    if not shots.is_absolute():
        shots = REPO / shots
    shots.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "NBS_URL": lab["url"],
        "NBS_TOKEN": lab["token"],
        "NBS_NOTEBOOK": "quick.ipynb",
        "NBS_SLOW_NOTEBOOK": "slow.ipynb",
        "NBS_PIPELINE_RUN": pipeline_run.id,
        "NBS_SLOW_RUN": slow_pipeline_run.id,
        "NBS_ENDPOINT": endpoint_with_traffic,
        "NBS_LOG_TEXT": log_text,
        "NBS_NESTED_JOB": nested,
        "NBS_SHOTS": str(shots),
        "NBS_CHROMIUM": CHROMIUM,
    }
    try:
        proc = subprocess.run(
            [shutil.which("node") or "node", "ui-tests/panel.test.mjs"],
            cwd=EXTENSION,
            env=env,
            capture_output=True,
            text=True,
            timeout=540,
        )
    finally:
        _cancel_leftovers()
    assert proc.returncode == 0, (
        f"browser test failed:\n{proc.stdout}\n{proc.stderr}\n--- lab log ---\n{lab['log'].read_text()[-4000:]}"
    )
    # what the browser did is in the store too
    from nbscale.jobs import jobs

    statuses = sorted(j.record.status for j in jobs(refresh=False))
    assert statuses == ["CANCELLED", *["SUCCEEDED"] * (len(statuses) - 1)], statuses
    from nbscale import pipelines

    assert pipelines.get_run(slow_pipeline_run.id).status == "CANCELLED"
    for name in (
        "panel-job.png",
        "panel-endpoint.png",
        "panel-pipeline.png",
        "run-as-job-dialog.png",
    ):
        assert (shots / name).stat().st_size > 10_000


def test_panel_says_when_the_server_extension_is_missing(tmp_path):
    # given Lab with the panel but without nbscale's server extension
    with running_lab(
        tmp_path, "--ServerApp.jpserver_extensions=nbscale.server_ext=False", api_path="api/status"
    ) as lab:
        write_notebook(lab["root"] / "quick.ipynb", "print(1)")
        env = {
            **os.environ,
            "NBS_URL": lab["url"],
            "NBS_TOKEN": lab["token"],
            "NBS_NOTEBOOK": "quick.ipynb",
            "NBS_SHOTS": str(tmp_path),
            "NBS_CHROMIUM": CHROMIUM,
            "NBS_SCENARIO": "missing-server",
        }
        # when the panel opens, then it tells the user how to enable the server extension
        proc = subprocess.run(
            [shutil.which("node") or "node", "ui-tests/panel.test.mjs"],
            cwd=EXTENSION,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert proc.returncode == 0, f"browser test failed:\n{proc.stdout}\n{proc.stderr}"


def _cancel_leftovers() -> None:
    from nbscale.jobs import jobs

    for handle in jobs(refresh=True):
        if not handle.record.terminal:
            with contextlib.suppress(Exception):
                handle.cancel()
