"""The panel's drift view and running-now list in a real browser (Chromium, playwright-core)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import pytest

from tests.support import wait_for
from tests.support.lab import run_browser_script
from tests.support.notebooks import write_notebook

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture
def drifting_endpoint():
    from nbscale import endpoints
    from nbscale.backends.local.endpoints import endpoint_dir
    from nbscale.serving.capture import read_capture
    from tests.support.serving import mlp

    rng = np.random.default_rng(4)
    ep = endpoints.deploy(mlp(), name="watched", baseline=rng.normal(size=(4000, 64)))
    for _ in range(15):
        x = rng.normal(size=(20, 64)).astype(np.float32)
        x[:, 11] += 1.0
        ep.predict(x)
    wait_for(lambda: len(read_capture(endpoint_dir("watched") / "capture")) >= 15, 30)
    yield ep.name
    with contextlib.suppress(Exception):
        endpoints.endpoint(ep.name).delete()


def test_panel_shows_drift_per_window_and_what_runs(lab, drifting_endpoint, tmp_path):
    write_notebook(lab["root"] / "empty.ipynb", "1 + 1")
    shots = Path(os.environ.get("NBSCALE_SCREENSHOTS") or tmp_path / "shots")
    run_browser_script(
        lab,
        "drift.test.mjs",
        shots,
        NBS_NOTEBOOK="empty.ipynb",
        NBS_ENDPOINT=drifting_endpoint,
        NBS_FEATURE="f11",
    )
    assert (shots / "panel-drift.png").stat().st_size > 10_000
