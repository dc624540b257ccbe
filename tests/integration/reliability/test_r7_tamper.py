"""R7: tampered bundles, results, pipeline artifacts and model artifacts are refused before
anything in them is unpickled or imported.

Every tampered payload is a trap: a pickle whose loading creates a file, or a
``code/inference.py`` whose import creates one. Each case asserts the refusal (a
SignatureError / ArtifactError naming what changed) and that the trap's file does not exist.
The figure in the README reliability section is the count of cases refused with no trap
sprung. (Staged bundles replaced in object storage: tests/test_leave_machine.py, a
tampered upstream artifact under the pipeline cache: tests/test_defects_pipelines.py.)
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from nbscale import bundle
from nbscale.celljob import prepare_cell
from nbscale.errors import NbscaleError, SignatureError
from nbscale.jobs import submit
from nbscale.results import load_results, write_results
from nbscale.specs import Entry, JobSpec
from nbscale.store import get_store
from nbscale.store.jobs import FAILED, SUCCEEDED, JobRecord, get_job, insert_job, update_job
from tests.support.serving import Scaler  # an object with predict(), as scikit-learn's


class _Trap:
    """Unpickling this creates a file: proof that something was unpickled."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _rewrite(path: Path, part: str, data: bytes, fix_hash: bool) -> None:
    """Replace one part, as an attacker would: with or without updating the manifest's hash."""
    with zipfile.ZipFile(path) as zf:
        entries = {n: zf.read(n) for n in zf.namelist()}
    entries[part] = data
    if fix_hash:
        manifest = json.loads(entries["manifest.json"])
        manifest["parts"][part]["sha256"] = hashlib.sha256(data).hexdigest()
        entries["manifest.json"] = json.dumps(manifest, sort_keys=True).encode()
    path.unlink()
    with zipfile.ZipFile(path, "w") as zf:
        for name, value in entries.items():
            zf.writestr(name, value)


# --- bundles (a captured cell's inputs) -------------------------------------------------


@pytest.mark.parametrize("fix_hash", [False, True], ids=["part-only", "part-and-hash"])
def test_a_tampered_part_is_refused_before_unpickling(nbscale_home, tmp_path, fix_hash):
    path = bundle.write(
        nbscale_home / "b.zip", {"kind": "cell"}, {"inputs/x.pkl": pickle.dumps(42)}
    )
    marker = tmp_path / "unpickled"
    _rewrite(path, "inputs/x.pkl", pickle.dumps(_Trap(marker)), fix_hash)
    with pytest.raises(SignatureError):
        bundle.read(path, "cell")
    assert not marker.exists()


def test_a_bundle_signed_with_another_key_is_refused(nbscale_home, tmp_path, monkeypatch):
    path = bundle.write(tmp_path / "b.zip", {"kind": "cell"}, {"p": b"x"})
    monkeypatch.setenv("NBSCALE_HOME", str(tmp_path / "other-home"))
    bundle.load_key()  # the other home gets its own key
    with pytest.raises(SignatureError, match="signature does not match"):
        bundle.read(path, "cell")


@pytest.mark.timeout(180)
def test_workers_refuse_a_tampered_bundle(tmp_path):
    # Given a captured cell whose input an attacker replaced (hash fixed up, signature not)
    spec = JobSpec(entry=Entry("bundle", "pending"), name="tampered", procs_per_node=2)
    prepared = prepare_cell("print('cell-body-ran', x)", {"x": 5}, spec, outputs=[])
    path = prepared.write()
    marker = tmp_path / "unpickled-on-worker"
    _rewrite(path, prepared.capture.inputs[0].part, pickle.dumps(_Trap(marker)), fix_hash=True)
    # When the job runs it
    handle = submit(prepared.spec)
    record = handle.wait(timeout=150)
    # Then every rank refused before unpickling, and the cell never ran
    assert record.status == FAILED
    assert "SignatureError" in record.error and "signature does not match" in record.error
    assert not marker.exists()
    assert "cell-body-ran" not in handle.logs()


# --- results (a cell job's outputs coming home) -------------------------------------------


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
    _rewrite(outputs / "results.zip", part, pickle.dumps(_Trap(marker)), fix_hash=True)
    with pytest.raises(SignatureError):
        load_results(rec)
    assert not marker.exists()

    write_results(outputs, "another-job", {"n": 4})  # a valid file, but of another job
    with pytest.raises(SignatureError, match="not cell-abc123"):
        load_results(rec)
    update_job(get_store(), job_id, only_if_active=False, status=FAILED)
    with pytest.raises(NbscaleError, match="only a succeeded job has results"):
        load_results(get_job(get_store(), job_id))


# --- pipeline artifacts (values between steps) -------------------------------------------


class Box:
    def __init__(self, value):
        self.value = value


def test_tampered_pipeline_artifacts_and_manifests_are_refused_before_unpickling(tmp_path):
    from nbscale.pipelines import artifacts

    marker = tmp_path / "unpickled"
    out = tmp_path / "step"
    artifacts.save({"box": Box(1)}, ["box"], out)
    (out / "box.pkl").write_bytes(pickle.dumps(_Trap(marker)))  # a swapped value
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


# --- model artifacts (what an endpoint serves) --------------------------------------------


IMPORT_TRAP = "\nopen({marker!r}, 'w').close()  # planted: runs when the module is imported\n"


def _tamper_model(art: Path, how: str, marker: Path) -> str:
    """Change the artifact as an attacker would; return what the refusal must name."""
    code = art / "code" / "inference.py"
    if how == "swapped pickle":
        (art / "model.pkl").write_bytes(pickle.dumps(_Trap(marker)))
        return "model.pkl changed"
    if how == "edited inference.py":
        code.write_text(code.read_text() + IMPORT_TRAP.format(marker=str(marker)))
        return "code/inference.py changed"
    if how == "added helper module":
        (art / "code" / "helper.py").write_text(IMPORT_TRAP.format(marker=str(marker)))
        return "code/helper.py added"
    if how == "signature rewritten":
        code.write_text(code.read_text() + IMPORT_TRAP.format(marker=str(marker)))
        sig = json.loads((art / "nbscale.sig").read_text())
        sig["files"]["code/inference.py"] = hashlib.sha256(code.read_bytes()).hexdigest()
        (art / "nbscale.sig").write_text(json.dumps(sig))
        return "signature does not match the model key"
    if how == "planted bytecode":
        # a .pyc beside the code: never read, bytecode is cached outside the artifact
        cache = art / "code" / "__pycache__"
        cache.mkdir()
        tag = sys.implementation.cache_tag
        (cache / f"inference.{tag}.pyc").write_bytes(b"not bytecode")
        return ""
    raise AssertionError(how)


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
    names = _tamper_model(art, how, marker)
    with pytest.raises(SignatureError, match=names):
        ModelHandler(art)
    assert not marker.exists()


def test_planted_bytecode_is_never_read(tmp_path):
    from nbscale.serving import package
    from nbscale.serving.handler import ModelHandler

    art = package(Scaler(2.0), tmp_path / "art", "scaler")
    _tamper_model(art, "planted bytecode", tmp_path / "unused")
    handler = ModelHandler(art)  # __pycache__ is not part of the artifact, and not read
    handler.load()
    np.testing.assert_allclose(handler.run(np.ones((2, 4), np.float32)), 2 * np.ones((2, 4)))


@pytest.mark.timeout(180)
def test_the_model_server_refuses_a_tampered_artifact_and_exits(tmp_path):
    """The serving runtime as an endpoint starts it: one clear line, exit non-zero,
    the planted handler never imported."""
    from nbscale.serving import package

    art = package(Scaler(2.0), tmp_path / "art", "scaler")
    marker = tmp_path / "trap-sprung"
    _tamper_model(art, "edited inference.py", marker)
    (tmp_path / "token").write_text("tok")
    proc = subprocess.run(
        [sys.executable, "-m", "nbscale.serving", "--model-dir", str(art), "--port", "0",
         "--host", "127.0.0.1", "--token-file", str(tmp_path / "token")],
        capture_output=True, text=True, timeout=150, env=os.environ.copy(),
    )  # fmt: skip
    assert proc.returncode != 0
    assert "code/inference.py changed after the artifact was signed" in proc.stderr, proc.stderr
    assert not marker.exists()
