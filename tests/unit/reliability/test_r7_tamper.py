"""R7: tampered bundles, results, pipeline artifacts and model artifacts are refused before
anything in them is unpickled or imported (the loaders themselves, in this process).

Every tampered payload is a trap: a pickle whose loading creates a file, or a
``code/inference.py`` whose import creates one. Each case asserts the refusal (a
SignatureError / ArtifactError naming what changed) and that the trap's file does not exist.
The workers and the model server refusing a tampered bundle or artifact:
tests/integration/reliability/test_r7_tamper.py."""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile

import numpy as np
import pytest

from nbscale import bundle
from nbscale.errors import NbscaleError, SignatureError
from nbscale.results import load_results, write_results
from nbscale.store import get_store
from nbscale.store.jobs import FAILED, SUCCEEDED, JobRecord, get_job, insert_job, update_job
from tests.support.serving import Scaler  # an object with predict(), as scikit-learn's
from tests.support.tamper import Trap, rewrite_part, tamper_model


@pytest.mark.parametrize("fix_hash", [False, True], ids=["part-only", "part-and-hash"])
def test_a_tampered_part_is_refused_before_unpickling(nbscale_home, tmp_path, fix_hash):
    path = bundle.write(
        nbscale_home / "b.zip", {"kind": "cell"}, {"inputs/x.pkl": pickle.dumps(42)}
    )
    marker = tmp_path / "unpickled"
    rewrite_part(path, "inputs/x.pkl", pickle.dumps(Trap(marker)), fix_hash)
    with pytest.raises(SignatureError):
        bundle.read(path, "cell")
    assert not marker.exists()


def test_a_bundle_signed_with_another_key_is_refused(nbscale_home, tmp_path, monkeypatch):
    path = bundle.write(tmp_path / "b.zip", {"kind": "cell"}, {"p": b"x"})
    monkeypatch.setenv("NBSCALE_HOME", str(tmp_path / "other-home"))
    bundle.load_key()  # the other home gets its own key
    with pytest.raises(SignatureError, match="signature does not match"):
        bundle.read(path, "cell")


def _fake_finished_job(tmp_path) -> str:
    """A store row of a succeeded cell job whose outputs directory we control."""
    job_dir = tmp_path / "job"
    (job_dir / "outputs").mkdir(parents=True)
    rec = JobRecord(
        id="cell-abc123",
        name="cell",
        backend="local",
        backend_type="local",
        status=SUCCEEDED,
        spec={"entry": {"kind": "bundle", "target": "x"}},
        created=0.0,
        started=0.0,
        ended=1.0,
        info={"job_dir": str(job_dir)},
    )
    insert_job(get_store(), rec)
    return rec.id


def test_results_are_verified_and_bound_to_their_job(tmp_path):
    job_id = _fake_finished_job(tmp_path)
    outputs = tmp_path / "job" / "outputs"
    write_results(outputs, job_id, {"history": [0.5, 0.25], "n": 3})
    rec = get_job(get_store(), job_id)
    assert load_results(rec) == {"history": [0.5, 0.25], "n": 3}
    assert load_results(rec, ["n"]) == {"n": 3}
    with pytest.raises(NbscaleError, match="did not return nope"):
        load_results(rec, ["nope"])

    marker = tmp_path / "unpickled"
    part = next(
        n for n in zipfile.ZipFile(outputs / "results.zip").namelist() if n.endswith("history.pkl")
    )
    rewrite_part(outputs / "results.zip", part, pickle.dumps(Trap(marker)), fix_hash=True)
    with pytest.raises(SignatureError):
        load_results(rec)
    assert not marker.exists()

    write_results(outputs, "another-job", {"n": 4})  # a valid file, but of another job
    with pytest.raises(SignatureError, match="not cell-abc123"):
        load_results(rec)
    update_job(get_store(), job_id, only_if_active=False, status=FAILED)
    with pytest.raises(NbscaleError, match="only a succeeded job has results"):
        load_results(get_job(get_store(), job_id))


class Box:
    def __init__(self, value):
        self.value = value


def test_tampered_pipeline_artifacts_and_manifests_are_refused_before_unpickling(tmp_path):
    from nbscale.pipelines import artifacts

    marker = tmp_path / "unpickled"
    out = tmp_path / "step"
    artifacts.save({"box": Box(1)}, ["box"], out)
    (out / "box.pkl").write_bytes(pickle.dumps(Trap(marker)))  # a swapped value
    with pytest.raises(artifacts.ArtifactError, match="changed after it was written"):
        artifacts.load({}, {"box": str(out)})
    assert not marker.exists()

    # the hash in the manifest fixed up to match: the manifest's signature no longer does
    data = json.loads((out / "manifest.json").read_text())
    data["values"]["box"]["sha256"] = hashlib.sha256((out / "box.pkl").read_bytes()).hexdigest()
    (out / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(artifacts.ArtifactError, match="not signed with this pipeline's key"):
        artifacts.load({}, {"box": str(out)})
    assert not marker.exists()


TAMPERS = [
    "swapped pickle",
    "edited inference.py",
    "added helper module",
    "signature rewritten",
]


@pytest.mark.parametrize("how", TAMPERS)
def test_a_tampered_model_artifact_is_refused_before_import_or_unpickling(tmp_path, how):
    from nbscale.serving import package
    from nbscale.serving.handler import ModelHandler

    art = package(Scaler(2.0), tmp_path / "art", "scaler")
    marker = tmp_path / "trap-sprung"
    names = tamper_model(art, how, marker)
    with pytest.raises(SignatureError, match=names):
        ModelHandler(art)
    assert not marker.exists()


def test_planted_bytecode_is_never_read(tmp_path):
    from nbscale.serving import package
    from nbscale.serving.handler import ModelHandler

    art = package(Scaler(2.0), tmp_path / "art", "scaler")
    tamper_model(art, "planted bytecode", tmp_path / "unused")
    handler = ModelHandler(art)  # __pycache__ is not part of the artifact, and not read
    handler.load()
    np.testing.assert_allclose(handler.run(np.ones((2, 4), np.float32)), 2 * np.ones((2, 4)))
