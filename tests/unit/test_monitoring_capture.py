"""Data capture: sample rate, the 25%-free disk guard on a real small tmpfs, never blocking a request."""

from __future__ import annotations

import random
import subprocess
import threading

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
    cap = DataCapture(small_disk / "capture")
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


def test_a_stalled_writer_never_blocks_offer_it_drops_and_counts(tmp_path, monkeypatch):
    # Given a writer thread stuck on a slow disk
    gate = threading.Event()
    real_encode = DataCapture._encode

    def stuck(self, item):
        gate.wait(30)
        return real_encode(self, item)

    monkeypatch.setattr(DataCapture, "_encode", stuck)
    cap = DataCapture(tmp_path / "cap")
    # When more requests arrive than the queue holds, every offer still returns at once
    done = threading.Event()

    def flood():
        for _ in range(10_050):
            cap.offer("m", None, {"input": np.zeros((1, 4))}, {"output": np.zeros((1, 2))})
        done.set()

    threading.Thread(target=flood, daemon=True).start()
    assert done.wait(30), "offer blocked on the writer"
    # Then the overflow is counted as dropped, not waited for
    assert cap.dropped >= 49
    gate.set()
    cap.flush(30)
    assert cap.written == 10_050 - cap.dropped


def test_capture_rate_samples_that_share_of_requests(tmp_path):
    random.seed(12)
    cap = DataCapture(tmp_path / "cap", sample_rate=0.1)
    for _ in range(2000):
        cap.offer("m", None, {"input": np.zeros((1, 4))}, {"output": np.zeros((1, 2))})
    cap.flush()
    lines = read_capture(tmp_path / "cap")
    assert 140 <= len(lines) <= 260  # binomial(2000, 0.1): mean 200, sd 13
    assert all(len(line["event_id"]) == 32 and line["time"] > 0 for line in lines)
    assert len({line["event_id"] for line in lines}) == len(lines)


def test_bad_capture_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="sample rate"):
        DataCapture(tmp_path, sample_rate=0)
    with pytest.raises(ValueError, match="min_free"):
        DataCapture(tmp_path, min_free=0.5, resume_free=0.3)
