"""Signed bundles: the key stays home, and nothing tampered is ever unpickled."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import stat
import zipfile
from pathlib import Path

import pytest

from nbscale import bundle
from nbscale.celljob import prepare_cell
from nbscale.errors import NbscaleError, SignatureError
from nbscale.jobs import submit
from nbscale.results import load_results, write_results
from nbscale.specs import Entry, JobSpec
from nbscale.store import get_store
from nbscale.store.jobs import FAILED, SUCCEEDED, JobRecord, get_job, insert_job, update_job


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


def test_key_is_private_and_never_in_the_bundle(nbscale_home):
    path = bundle.write(nbscale_home / "b.zip", {"kind": "cell"}, {"a.pkl": pickle.dumps(1)})
    key_file = nbscale_home / "keys" / "bundle.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key_hex = key_file.read_text().strip()
    raw = path.read_bytes()
    assert key_hex.encode() not in raw and bytes.fromhex(key_hex) not in raw
    found = bundle.read(path, "cell")
    assert pickle.loads(found.part("a.pkl")) == 1
    assert found.manifest["versions"]["python"] and found.manifest["versions"]["cloudpickle"]


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


def test_a_key_others_can_read_is_refused(nbscale_home):
    bundle.load_key()
    os.chmod(nbscale_home / "keys" / "bundle.key", 0o644)
    with pytest.raises(NbscaleError, match="chmod 600"):
        bundle.write(nbscale_home / "b.zip", {"kind": "cell"}, {})


def test_a_bundle_of_another_kind_is_refused(nbscale_home):
    path = bundle.write(nbscale_home / "r.zip", {"kind": "results"}, {})
    with pytest.raises(SignatureError, match="not a 'cell'"):
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
