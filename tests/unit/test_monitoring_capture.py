"""Data capture: sample rate, the 25%-free disk guard on a real small tmpfs, never blocking a request."""

from __future__ import annotations

import random
import threading

import numpy as np
import pytest

from nbscale.serving.capture import DataCapture, read_capture


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


def test_the_disk_floor_is_a_machine_setting_and_a_bad_one_is_named(tmp_path, monkeypatch):
    # Given a machine whose disk is large and already fuller than the default floor allows
    monkeypatch.setenv("NBSCALE_CAPTURE_MIN_FREE", "0.1")
    cap = DataCapture(tmp_path / "a")
    # Then the floor is the machine's, and resuming waits for five points more
    assert (cap.min_free, round(cap.resume_free, 2)) == (0.1, 0.15)
    # And an explicit floor still wins
    assert DataCapture(tmp_path / "b", min_free=0.2).min_free == 0.2
    # When the setting is not a share of the disk, it is refused with what to give
    for bad in ("25%", "1", "-0.1"):
        monkeypatch.setenv("NBSCALE_CAPTURE_MIN_FREE", bad)
        with pytest.raises(ValueError, match="NBSCALE_CAPTURE_MIN_FREE.*from 0 up to"):
            DataCapture(tmp_path / "c")
    # And without it the floor is a quarter of the disk
    monkeypatch.delenv("NBSCALE_CAPTURE_MIN_FREE")
    assert DataCapture(tmp_path / "d").min_free == 0.25
