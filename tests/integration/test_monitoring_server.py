"""The panel's monitoring routes: drift per window of a real endpoint, and what runs with its cost."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from tests.support import wait_for

pytest_plugins = ["pytest_jupyter.jupyter_server"]


@pytest.fixture
def drifting_endpoint():
    from nbscale import endpoints
    from nbscale.backends.local.endpoints import endpoint_dir
    from nbscale.serving.capture import read_capture
    from tests.support.serving import mlp

    rng = np.random.default_rng(3)
    ep = endpoints.deploy(mlp(), name="mon", baseline=rng.normal(size=(4000, 64)))
    for _ in range(15):
        x = rng.normal(size=(20, 64)).astype(np.float32)
        x[:, 7] += 1.0  # feature f7 moved by one standard deviation
        ep.predict(x)
    wait_for(lambda: len(read_capture(endpoint_dir("mon") / "capture")) >= 15, 30)
    yield ep
    with contextlib.suppress(Exception):
        endpoints.endpoint("mon").delete()


async def test_drift_route_lists_windows_with_drifting_features_first(
    fetch,
    drifting_endpoint,
):
    code, body = await fetch("endpoints", "mon", "drift", params={"window": "1d"})
    assert code == 200, body
    assert body["endpoint"] == "mon" and body["captured_rows"] == 300
    assert body["drifting"][0] == "f7" and body["alerts"] == 1
    window = body["windows"][0]
    assert window["rows"] == 300 and window["drifting"][0] == "f7"
    first = window["features"][0]
    assert first["feature"] == "f7" and first["drifting"] and first["p_value"] < 1e-6
    assert {"ks", "psi", "psi_threshold", "share"} <= set(first)
    # a bad window is a 400, an unknown endpoint a 404
    code, body = await fetch("endpoints", "mon", "drift", params={"window": "soon"})
    assert code == 400 and "not a duration" in body["message"]
    code, body = await fetch("endpoints", "nope", "drift")
    assert code == 404
    # the idle list has the endpoint and what it costs per hour (free locally)
    code, body = await fetch("idle")
    assert code == 200 and [i["name"] for i in body["items"]] == ["mon"]
    assert body["items"][0]["kind"] == "endpoint" and body["cost_per_hour"] == 0.0
