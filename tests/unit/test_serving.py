"""Packaging a model for the serving runtime: what is signed and checked, what is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nbscale.errors import SignatureError
from nbscale.serving import package
from nbscale.serving.handler import ModelHandler
from tests.support.serving import (
    Scaler,
)


def test_a_pickled_predict_object_is_signed_and_checked_before_unpickling(tmp_path):
    out = package(Scaler(2.0), tmp_path / "art", "scaler")
    handler = ModelHandler(out)
    handler.load()
    np.testing.assert_allclose(handler.run(np.ones((2, 4), np.float32)), 2 * np.ones((2, 4)))
    # every file of the artifact is listed, hashed and HMAC-signed in nbscale.sig
    assert "model.pkl" in (out / "nbscale.sig").read_text()
    blob = (out / "model.pkl").read_bytes()
    (out / "model.pkl").write_bytes(blob.replace(b"factor", b"factoR"))
    with pytest.raises(SignatureError, match="model.pkl changed after the artifact was signed"):
        ModelHandler(out)  # refused before anything is unpickled


def test_package_refuses_what_it_cannot_serve(tmp_path):
    from nbscale.errors import SpecError

    with pytest.raises(SpecError, match="neither a torch.nn.Module nor has a predict"):
        package(object(), tmp_path / "a", "x")
    with pytest.raises(SpecError, match="input shape"):
        package(torch.nn.ReLU(), tmp_path / "b", "x")
    assert package(
        torch.nn.ReLU(), tmp_path / "c", "x", example=np.zeros((2, 3), np.float32)
    ).is_dir()
