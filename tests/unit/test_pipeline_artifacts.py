"""Values between steps: each kind in its own format, signed, refused when tampered with."""

from __future__ import annotations

import numpy as np
import pytest

from nbscale.pipelines import artifacts


class Box:
    def __init__(self, value):
        self.value = value


def test_each_kind_round_trips_in_its_own_format(tmp_path):
    torch = pytest.importorskip("torch")
    values = {
        "tensor": torch.arange(6.0).reshape(2, 3),
        "module": torch.nn.Linear(3, 2),
        "array": np.arange(4, dtype=np.int16),
        "scale": lambda v: v * 2,  # cloudpickle: functions by value
        "box": Box([1, "two"]),
    }
    manifest = artifacts.save(values, list(values), tmp_path / "out")
    assert {k: v["format"] for k, v in manifest.items()} == {
        "tensor": "torch",
        "module": "torch",
        "array": "numpy",
        "scale": "pickle",
        "box": "pickle",
    }
    loaded: dict = {}
    artifacts.load(loaded, dict.fromkeys(values, str(tmp_path / "out")))
    assert torch.equal(loaded["tensor"], values["tensor"])
    assert torch.equal(loaded["module"].weight, values["module"].weight)
    assert loaded["array"].dtype == np.int16 and loaded["array"].tolist() == [0, 1, 2, 3]
    assert loaded["scale"](4) == 8 and loaded["box"].value == [1, "two"]


def test_pandas_frames_round_trip(tmp_path):
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    manifest = artifacts.save({"frame": frame, "col": frame["a"]}, ["frame", "col"], tmp_path)
    assert manifest["frame"]["format"] in ("parquet", "pandas-pickle")
    loaded: dict = {}
    artifacts.load(loaded, {"frame": str(tmp_path), "col": str(tmp_path)})
    assert loaded["frame"].equals(frame) and list(loaded["col"]) == [1, 2]


def test_missing_and_unsaveable_values_name_the_variable(tmp_path):
    with pytest.raises(artifacts.ArtifactError, match="did not define 'model'"):
        artifacts.save({}, ["model"], tmp_path)
    import threading

    with pytest.raises(artifacts.ArtifactError, match="cannot save 'lock'"):
        artifacts.save({"lock": threading.Lock()}, ["lock"], tmp_path)
    assert not (tmp_path / "manifest.json").exists()  # nothing looks complete
