"""A packaged model's lean form: what ``lean`` makes of the saved program, readable without
``torch.export.load`` (whose imports were most of a fresh replica's start), signed like
every file of the artifact, and used only by the torch version that wrote it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nbscale.errors import SignatureError
from nbscale.serving import package
from nbscale.serving.exported import LEAN_CODE, LEAN_TENSORS, lean, load_program
from nbscale.serving.handler import ModelHandler
from nbscale.serving.zygote import _needs_export


class ConvNet(torch.nn.Module):
    """Parameters, running statistics (buffers), a top-level buffer and several operators."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4 * 6 * 6, 10)
        self.register_buffer("scale", torch.tensor(2.0))

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x))) * self.scale
        return torch.softmax(self.fc(y.flatten(1)), -1)


class Branchy(torch.nn.Module):
    """Control flow: its exported graph holds subgraph modules, which have no lean form."""

    def forward(self, x):
        return torch.cond(x.sum() > 0, lambda t: t * 2.0, lambda t: t - 1.0, (x,))


def _convnet() -> ConvNet:
    torch.manual_seed(0)
    model = ConvNet().eval()
    with torch.no_grad():  # running statistics that are not the defaults, so they matter
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model


def _forbid_export_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.export.load was called")

    monkeypatch.setattr(torch.export, "load", refuse)


def test_a_packaged_module_serves_its_lean_form_with_the_programs_exact_numbers(
    tmp_path, monkeypatch
):
    example = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    out = package(_convnet(), tmp_path / "art", "conv", example=example)
    manifest = json.loads((out / "nbscale.json").read_text())
    assert manifest["lean_form"] == {
        "code": LEAN_CODE,
        "tensors": LEAN_TENSORS,
        "torch": torch.__version__,
    }
    signed = json.loads((out / "nbscale.sig").read_text())["files"]
    assert {LEAN_CODE, LEAN_TENSORS} <= set(signed)  # in the signed file list like every file
    # the program as a replica served it before: lean(torch.export.load(...))
    want = lean(torch.export.load(str(out / "model.pt2")))
    _forbid_export_load(monkeypatch)
    served = load_program(out)
    assert served.loaded.startswith("from its lean form")
    for rows in (1, 3, 17):  # the batch axis stays dynamic
        x = torch.from_numpy(np.random.default_rng(rows).random((rows, 1, 8, 8), np.float32))
        with torch.inference_mode():
            assert torch.equal(served(x), want(x))
    # and through the runtime's handler, with the artifact's own inference.py
    handler = ModelHandler(out)
    handler.load()
    with torch.inference_mode():
        expected = want(torch.from_numpy(example)).numpy()
    np.testing.assert_array_equal(handler.run(example), expected)


def test_the_lean_form_is_signed_an_edited_one_is_refused_before_anything_is_read(tmp_path):
    out = package(_convnet(), tmp_path / "art", "conv", example=np.zeros((2, 1, 8, 8), np.float32))
    code = out / LEAN_CODE
    code.write_text(code.read_text().replace("relu", "sigmoid"))
    with pytest.raises(SignatureError, match=f"{LEAN_CODE} changed after the artifact was signed"):
        ModelHandler(out)


def test_another_torch_version_loads_the_program_itself(tmp_path, monkeypatch):
    out = package(_convnet(), tmp_path / "art", "conv", example=np.zeros((2, 1, 8, 8), np.float32))
    manifest = json.loads((out / "nbscale.json").read_text())
    manifest["lean_form"]["torch"] = "2.0.0"  # as if written by another torch
    (out / "nbscale.json").write_text(json.dumps(manifest))  # (load_program trusts its caller's
    served = load_program(out)  # signature check; this test reads the file directly)
    assert served.loaded == "with torch.export.load (its lean form is torch 2.0.0's)"
    x = torch.rand(2, 1, 8, 8)
    with torch.inference_mode():
        assert torch.equal(served(x), lean(torch.export.load(str(out / "model.pt2")))(x))
    argv = ["--model-dir", str(out), "--port", "1"]
    assert _needs_export(argv)  # a zygote imports what torch.export.load needs, first


def test_a_program_without_a_lean_form_is_served_as_before(tmp_path):
    example = np.ones((2, 4), np.float32)
    out = package(Branchy().eval(), tmp_path / "art", "branchy", example=example)
    assert "lean_form" not in json.loads((out / "nbscale.json").read_text())
    assert not (out / LEAN_CODE).exists() and not (out / LEAN_TENSORS).exists()
    handler = ModelHandler(out)
    handler.load()
    assert handler.model.loaded == "with torch.export.load (no lean form)"
    np.testing.assert_array_equal(handler.run(example), example * 2.0)
    np.testing.assert_array_equal(handler.run(-example), -example - 1.0)
    assert _needs_export(["--model-dir", str(out)])


def test_a_zygote_needs_nothing_more_for_a_lean_form_or_a_pickle(tmp_path):
    lean_art = package(
        _convnet(), tmp_path / "lean", "conv", example=np.zeros((2, 1, 8, 8), np.float32)
    )
    assert not _needs_export(["--model-dir", str(lean_art), "--port", "1"])
    from tests.support.serving import Scaler

    pickled = package(Scaler(2.0), tmp_path / "pkl", "scaler")
    assert not _needs_export(["--model-dir", str(pickled)])
    # what the replica itself reports as wrong is not the zygote's to decide
    assert not _needs_export(["--model-dir", str(tmp_path / "absent")])
    assert not _needs_export([])


def test_a_lean_form_that_cannot_be_made_leaves_the_artifact_as_without_it(tmp_path, monkeypatch):
    from nbscale.serving import exported

    def broken(program, directory, example):
        (directory / LEAN_CODE).write_text("half written")
        raise RuntimeError("a torch that FX cannot generate code for")

    monkeypatch.setattr(exported, "write_lean_form", broken)
    example = np.ones((2, 1, 8, 8), np.float32)
    out = package(_convnet(), tmp_path / "art", "conv", example=example)
    assert "lean_form" not in json.loads((out / "nbscale.json").read_text())
    assert not (out / LEAN_CODE).exists() and not (out / LEAN_TENSORS).exists()
    handler = ModelHandler(out)  # signed without them, and served through torch.export.load
    handler.load()
    assert handler.model.loaded == "with torch.export.load (no lean form)"
    assert handler.run(example).shape == (2, 10)
