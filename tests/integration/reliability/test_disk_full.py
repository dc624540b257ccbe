"""Logs capped with rotation, and a full disk: a rank log that fills an 8 MB home ends the
job with a clear error, the store stays intact with no half-written record, and every
later command prints one clear line instead of a traceback."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

import nbscale
from nbscale.backends.local.processes import job_processes
from nbscale.store import StoreFull, get_store
from nbscale.store.jobs import ACTIVE, STATUSES, list_jobs
from tests.support import wait_for

pytestmark = pytest.mark.timeout(240)

CHATTY = textwrap.dedent("""
    import sys
    for i in range(int(sys.argv[1])):
        print(f"line {i:06d} " + "x" * 40)
    print("the end", flush=True)
""")


def test_rank_logs_are_capped_and_rotated_and_readers_keep_their_place(write_script, monkeypatch):
    monkeypatch.setenv("NBSCALE_LOG_MAX_BYTES", "8192")
    script = write_script("chatty.py", CHATTY)
    job = nbscale.submit(
        nbscale.JobSpec(entry=nbscale.Entry.from_path(str(script)), args=("3000",))
    )
    streamed = [line for _, line in job.follow()]  # read while it writes and rotates
    record = job.wait(timeout=120)
    assert record.status == "SUCCEEDED", job.logs()
    logs = Path(record.info["job_dir"]) / "logs"
    cap = 8192 + 4096  # a segment may pass the cap to end on a whole line
    assert (logs / "rank-0.log").stat().st_size <= cap
    rotated = list((logs / "rotated").iterdir())
    assert len(rotated) == 1 and rotated[0].stat().st_size <= cap
    # what is kept is the newest part of the stream, whole lines, in order, with a note first
    text = job.logs(0).splitlines()
    assert text[0].startswith("[nbscale: ") and "dropped by rotation" in text[0]
    numbers = [int(line.split()[1]) for line in text[1:-1]]
    assert numbers == list(range(numbers[0], 3000)) and text[-1] == "the end"
    assert 8192 // 48 <= len(numbers) <= 2 * cap // 48
    # the live reader saw every line in order (it kept up with the rotation) or was told
    # exactly what it missed; nothing is duplicated
    got = [int(line.split()[1]) for line in streamed if line.startswith("line ")]
    assert got == sorted(set(got)) and got[-1] == 2999 and streamed[-1] == "the end"
    assert job.ranks() == [0]


@pytest.fixture
def small_home(tmp_path, monkeypatch):
    """An 8 MB tmpfs as $NBSCALE_HOME (needs the right to mount, as root in a container)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", f"nbscale-{uuid.uuid4().hex[:6]}", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    home = mount / "home"
    monkeypatch.setenv("NBSCALE_HOME", str(home))
    from nbscale import store

    store._stores.clear()
    try:
        yield home
    finally:
        for s in store._stores.values():
            s.close()
        store._stores.clear()
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _integrity(home: Path) -> str:
    conn = sqlite3.connect(home / "nbscale.db")
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def _fill(path: Path) -> None:
    try:
        with open(path, "ab") as fh:
            while True:
                fh.write(b"\0" * 4096)
                fh.flush()
    except OSError:
        pass  # full


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nbscale", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
    )


def test_a_rank_log_that_fills_the_disk_fails_the_job_clearly_and_the_store_survives(
    small_home, write_script
):
    script = write_script("chatty.py", CHATTY)
    job = nbscale.submit(
        nbscale.JobSpec(
            entry=nbscale.Entry.from_path(str(script)), procs_per_node=2, args=("10000000",)
        )
    )
    record = job.wait(timeout=180)
    assert record.status == "FAILED"
    assert "disk full" in record.error.lower(), record.error
    print(f"disk full: the job's error: {record.error}")
    wait_for(lambda: job_processes(job.id) == [], 30, what="no process left")
    assert _integrity(small_home) == "ok"
    rows, total = list_jobs(get_store())
    assert total == 1 and all(r.status in STATUSES and r.status not in ACTIVE for r in rows)

    # keep the disk full (whatever the job's end gave back) for the commands that follow
    _fill(small_home / "filler")
    # each command answers or says what is wrong in one line, without a traceback
    other = write_script("other.py", "print('hi')\n")
    for args in (("status", job.id), ("jobs",), ("run", str(other))):
        done = _cli(*args)
        out = (done.stdout + done.stderr).strip()
        print(f"disk full: nbscale {args[0]} -> {out!r}")
        assert "Traceback" not in out and "OperationalError" not in out, out
        if args[0] == "run":
            assert done.returncode != 0 and len(done.stderr.strip().splitlines()) == 1, out
            assert "full" in done.stderr or "No space" in done.stderr, out
        else:
            assert done.returncode == 0 and job.id in out, out
    assert _integrity(small_home) == "ok"
    rows, _ = list_jobs(get_store())
    assert all(r.status not in ACTIVE for r in rows)  # a refused run left nothing running


def test_a_store_write_on_a_full_disk_is_one_clear_error_and_nothing_half_written(small_home):
    store = get_store()
    list_jobs(store)  # creates the database and its reserve
    filler = small_home / "filler"
    _fill(filler)
    store.release_reserve()  # as if an earlier write had used it already
    big = "y" * (1 << 20)
    with pytest.raises(StoreFull, match="disk holding the nbscale store is full"):
        for i in range(50):
            store.execute(
                "INSERT INTO events (kind, ref, time, type, data) VALUES ('job', ?, 0, 'x', ?)",
                (f"r{i}", big),
            )
    assert _integrity(small_home) == "ok"
    filler.unlink()
    # after space comes back the store works again and holds only whole rows
    count = store.query_one("SELECT COUNT(*) FROM events WHERE type = 'x'")[0]
    assert all(len(r["data"]) == len(big) for r in store.query("SELECT data FROM events"))
    store.execute(
        "INSERT INTO events (kind, ref, time, type, data) VALUES ('job', 'z', 0, 'x', '{}')"
    )
    assert store.query_one("SELECT COUNT(*) FROM events WHERE type = 'x'")[0] == count + 1
