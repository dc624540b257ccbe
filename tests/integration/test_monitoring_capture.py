"""Data capture's 25%-free disk guard on a real small tmpfs (mounted by the test)."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from nbscale.serving import capture as capture_mod
from nbscale.serving.capture import DataCapture, disk_free, read_capture
from nbscale.store import get_store
from nbscale.store.events import CAPTURE_RESUMED, CAPTURE_STOPPED, list_events


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs of its own (needs root, as the test machine runs)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def rows(n: int = 20) -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(0).random((n, 64), dtype=np.float32)}


def test_capture_stops_before_the_disk_has_less_than_a_quarter_free_and_resumes(
    small_disk, monkeypatch
):
    # Given capture on a 4 MiB disk, as a local endpoint's replica (events go to the store)
    monkeypatch.setenv("NBSCALE_ENDPOINT", "guarded")
    monkeypatch.setattr(capture_mod, "RECHECK_S", 0.0)
    cap = DataCapture(small_disk / "capture", min_free=0.25, resume_free=0.30)
    line = rows()  # about 25 KB of JSON per captured request
    # When ten megabytes of requests are captured
    for _ in range(400):
        cap.offer("m", None, line, {"output": np.zeros((20, 10), np.float32)})
        cap.flush()
    # Then writing stopped with at least 25% of the disk still free
    free, total = disk_free(small_disk)
    assert free / total >= 0.25
    assert cap.stopped and cap.skipped > 0 and cap.written > 50
    # And every written line is whole
    assert len(read_capture(small_disk / "capture")) == cap.written
    # And the stop is logged beside the capture and as an endpoint event
    events = (small_disk / "capture" / "capture-events.jsonl").read_text()
    assert '"capture_stopped"' in events
    stored = list_events(get_store(), kind="endpoint", ref="guarded", types=[CAPTURE_STOPPED])
    assert len(stored) == 1 and stored[0]["data"]["free_share"] < 0.3
    # When the captured files are moved away, capture starts again
    for path in (small_disk / "capture").glob("capture-0-*.jsonl"):
        path.unlink()
    before = cap.written
    cap.offer("m", None, line, {"output": np.zeros((20, 10), np.float32)})
    cap.flush()
    assert not cap.stopped and cap.written == before + 1
    assert list_events(get_store(), kind="endpoint", ref="guarded", types=[CAPTURE_RESUMED])
