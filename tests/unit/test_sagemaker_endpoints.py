"""SageMaker endpoints: the model tarball made from an artifact is reproducible byte for byte."""

from __future__ import annotations

from nbscale.backends.sagemaker.endpoints import model_tarball
from tests.support.serving import make_artifact


def test_model_tarball_is_reproducible(tmp_path):
    artifact, _ = make_artifact(tmp_path / "a", name="same")
    one = model_tarball(artifact, tmp_path / "1.tar.gz").read_bytes()
    two = model_tarball(artifact, tmp_path / "2.tar.gz").read_bytes()
    assert one == two


def test_sagemaker_capture_lines_give_each_requests_rows():
    """The three encodings SageMaker's data capture writes; broken lines are skipped."""
    import base64
    import io
    import json

    import numpy as np

    from nbscale.backends.sagemaker.capture import captured_inputs, hour_key, parse_time

    rows = np.arange(6, dtype=np.float32).reshape(2, 3)
    buf = io.BytesIO()
    np.save(buf, rows, allow_pickle=False)
    parts = [
        {
            "observedContentType": "application/x-npy",
            "encoding": "BASE64",
            "data": base64.b64encode(buf.getvalue()).decode(),
        },
        {
            "observedContentType": "application/json",
            "encoding": "JSON",
            "data": json.dumps({"inputs": [{"shape": [2, 3], "data": rows.ravel().tolist()}]}),
        },
        {"observedContentType": "text/csv", "encoding": "CSV", "data": "0,1,2\n3,4,5"},
        {
            "observedContentType": "application/json",
            "encoding": "BASE64",
            "data": base64.b64encode(b"[[0, 1, 2], [3, 4, 5]]").decode(),
        },
    ]
    lines = [
        json.dumps(
            {
                "captureData": {"endpointInput": {**p, "mode": "INPUT"}},
                "eventMetadata": {"eventId": str(i), "inferenceTime": "2026-12-06T10:15:02Z"},
                "eventVersion": "0",
            }
        )
        for i, p in enumerate(parts)
    ]
    lines.insert(1, '{"captureData": {"endpointInput"')  # a line cut short
    got = list(captured_inputs("\n".join(lines).encode()))
    assert len(got) == 4
    for t, r in got:
        assert t == parse_time("2026-12-06T10:15:02Z") == 1796552102.0
        np.testing.assert_array_equal(r, rows)
    assert hour_key(1796552102.0) == "2026/12/06/10"
