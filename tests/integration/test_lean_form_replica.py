"""A replica of a model packaged with its lean form loads it without ``torch.export.load``,
forked by a zygote or started as a process of its own; a model without one is loaded by
``torch.export.load`` as before, and the zygote imports what that needs once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from nbscale.endpoints import deploy
from nbscale.serving import package
from tests.support import wait_for
from tests.support.serving import AUTH, Server, forward, infer_body, make_artifact

PROBE = """
import sys
import torch
from nbscale.serving.exported import load_program
served = load_program(sys.argv[1])
served(torch.zeros(1, 64))
print(served.loaded)
print(*(name in sys.modules for name in ("torch._export.serde.serialize", "torch._dynamo")))
"""


class Branchy(torch.nn.Module):
    """Control flow: its exported graph holds subgraph modules, which have no lean form."""

    def forward(self, x):
        return torch.cond(x.sum() > 0, lambda t: t * 2.0, lambda t: t - 1.0, (x,))


def test_a_fresh_replica_loads_the_lean_form_and_none_of_torch_export(tmp_path):
    out, model = make_artifact(tmp_path / "art")
    server = Server(out, tmp_path).wait_ready()
    try:
        x = np.random.default_rng(0).random((3, 64), dtype=np.float32)
        status, _, body = server.request("POST", "/v2/models/digits/infer", infer_body(x), AUTH)
        assert status == 200, body
        got = np.asarray(json.loads(body)["outputs"][0]["data"], np.float32).reshape(3, 10)
        np.testing.assert_array_equal(got, forward(model, x))
        log = server.log.read_text()
        assert "model loaded from its lean form (model.lean.py, model.lean.pt)" in log, log
    finally:
        server.stop()
    # the same load in a process of its own imports none of torch.export's machinery
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, str(out)], capture_output=True, text=True, timeout=120
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.splitlines() == [
        "from its lean form (model.lean.py, model.lean.pt)",
        "False False",
    ]


def test_a_zygote_forks_replicas_of_either_kind(tmp_path, monkeypatch):
    monkeypatch.setenv("NBSCALE_WARM_ZYGOTE", "0")  # each endpoint's own zygote, from its start
    lean_dir, model = make_artifact(tmp_path / "lean", name="leanmodel")
    plain_dir = package(
        Branchy().eval(), tmp_path / "plain", "plainmodel", example=np.ones((2, 64), np.float32)
    )
    lean_ep = deploy(str(lean_dir), name="leanmodel", replicas=(1, 1))
    plain_ep = deploy(str(plain_dir), name="plainmodel", replicas=(1, 1))
    try:
        x = np.ones((2, 64), np.float32)
        np.testing.assert_array_equal(lean_ep.predict(x), forward(model, x))
        np.testing.assert_array_equal(plain_ep.predict(x), x * 2.0)
        np.testing.assert_array_equal(plain_ep.predict(-x), -x - 1.0)
        plain_ep.scale(2, 2)  # a second replica of the same endpoint
        wait_for(lambda: plain_ep.metrics()["replicas"]["ready"] == 2, 120, what="2 replicas")
        for ep, how, count in (
            (lean_ep, "model loaded from its lean form", 1),
            (plain_ep, "model loaded with torch.export.load (no lean form)", 2),
        ):
            assert {r["started_by"] for r in ep.metrics()["replica_list"]} == {"zygote"}
            text = "".join(p.read_text() for p in _folder(ep).glob("replica-*.log"))
            assert text.count(how) == count, text
        # the zygote of the endpoint without a lean form imported what it needs, once; the
        # other's never did
        said = "imported what torch.export.load needs"
        assert (_folder(plain_ep) / "zygote.log").read_text().count(said) == 1
        assert said not in (_folder(lean_ep) / "zygote.log").read_text()
    finally:
        lean_ep.delete()
        plain_ep.delete()


def _folder(ep) -> Path:
    return Path(ep.record.config["dir"])
