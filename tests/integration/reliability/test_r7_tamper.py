"""R7: tampered bundles, results, pipeline artifacts and model artifacts are refused before
anything in them is unpickled or imported.

Every tampered payload is a trap: a pickle whose loading creates a file, or a
``code/inference.py`` whose import creates one. Each case asserts the refusal (a
SignatureError / ArtifactError naming what changed) and that the trap's file does not exist.
The figure in the README reliability section is the count of cases refused with no trap
sprung. (Staged bundles replaced in object storage: tests/contract/test_leave_machine.py, a
tampered upstream artifact under the pipeline cache: tests/integration/test_defects_pipelines.py.)
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest

from nbscale.celljob import prepare_cell
from nbscale.jobs import submit
from nbscale.specs import Entry, JobSpec
from nbscale.store.jobs import FAILED
from tests.support.serving import Scaler  # an object with predict(), as scikit-learn's
from tests.support.tamper import Trap, rewrite_part, tamper_model

# --- bundles (a captured cell's inputs) -------------------------------------------------


@pytest.mark.timeout(180)
def test_workers_refuse_a_tampered_bundle(tmp_path):
    # Given a captured cell whose input an attacker replaced (hash fixed up, signature not)
    spec = JobSpec(entry=Entry("bundle", "pending"), name="tampered", procs_per_node=2)
    prepared = prepare_cell("print('cell-body-ran', x)", {"x": 5}, spec, outputs=[])
    path = prepared.write()
    marker = tmp_path / "unpickled-on-worker"
    rewrite_part(path, prepared.capture.inputs[0].part, pickle.dumps(Trap(marker)), fix_hash=True)
    # When the job runs it
    handle = submit(prepared.spec)
    record = handle.wait(timeout=150)
    # Then every rank refused before unpickling, and the cell never ran
    assert record.status == FAILED
    assert "SignatureError" in record.error and "signature does not match" in record.error
    assert not marker.exists()
    assert "cell-body-ran" not in handle.logs()


# --- results (a cell job's outputs coming home) -------------------------------------------


# --- pipeline artifacts (values between steps) -------------------------------------------


# --- model artifacts (what an endpoint serves) --------------------------------------------


@pytest.mark.timeout(180)
def test_the_model_server_refuses_a_tampered_artifact_and_exits(tmp_path):
    """The serving runtime as an endpoint starts it: one clear line, exit non-zero,
    the planted handler never imported."""
    from nbscale.serving import package

    art = package(Scaler(2.0), tmp_path / "art", "scaler")
    marker = tmp_path / "trap-sprung"
    tamper_model(art, "edited inference.py", marker)
    (tmp_path / "token").write_text("tok")
    proc = subprocess.run(
        [sys.executable, "-m", "nbscale.serving", "--model-dir", str(art), "--port", "0",
         "--host", "127.0.0.1", "--token-file", str(tmp_path / "token")],
        capture_output=True, text=True, timeout=150, env=os.environ.copy(),
    )  # fmt: skip
    assert proc.returncode != 0
    assert "code/inference.py changed after the artifact was signed" in proc.stderr, proc.stderr
    assert not marker.exists()
