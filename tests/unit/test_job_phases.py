"""nbscale.runtime.phases: debug timing that writes nothing unless NBSCALE_PHASES=1."""

from __future__ import annotations

from nbscale.runtime import phases


def test_nothing_is_written_when_timing_is_off(tmp_path, monkeypatch):
    monkeypatch.delenv(phases.ENV, raising=False)
    phases.mark(tmp_path, "supervisor: running")
    monkeypatch.setenv(phases.ENV, "0")
    phases.mark(tmp_path, "supervisor: running")
    assert not (tmp_path / phases.FILE).exists()
    assert phases.read(tmp_path) == []


def test_phases_are_read_back_in_time_order_with_their_process_and_extras(tmp_path, monkeypatch):
    monkeypatch.setenv(phases.ENV, "1")
    phases.mark(tmp_path, "worker: entry starts", 20.0, rank=1)
    phases.mark(tmp_path, "submit: job recorded", 10.0)
    phases.mark(tmp_path, "supervisor: running")
    phases.mark(None, "nowhere")  # no job folder: nothing to write to, no error
    rows = phases.read(tmp_path)
    assert [r["phase"] for r in rows] == [
        "submit: job recorded",
        "worker: entry starts",
        "supervisor: running",
    ]
    assert rows[1]["rank"] == 1 and all(r["pid"] > 0 for r in rows)
    assert (tmp_path / phases.FILE).stat().st_mode & 0o777 == 0o600
