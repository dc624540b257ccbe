"""SageMaker endpoints: the model tarball made from an artifact is reproducible byte for byte."""

from __future__ import annotations

from nbscale.backends.sagemaker.endpoints import model_tarball
from tests.support.serving import make_artifact


def test_model_tarball_is_reproducible(tmp_path):
    artifact, _ = make_artifact(tmp_path / "a", name="same")
    one = model_tarball(artifact, tmp_path / "1.tar.gz").read_bytes()
    two = model_tarball(artifact, tmp_path / "2.tar.gz").read_bytes()
    assert one == two
