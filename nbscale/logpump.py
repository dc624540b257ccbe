"""Size-capped logs with rotation for a local job's ranks, agents and supervisor.

A process that logs calls :func:`redirect` early: its stdout and stderr become
a pipe read by a small pump process (this file run as a script: standard
library only, started in a few milliseconds, no ``NBSCALE_JOB_ID`` in its
environment so cancel waits for the writers, not for it). The pump appends to
``PATH``; when ``PATH`` would pass ``max_bytes`` it is renamed to
``rotated/NAME.START`` (START: the offset of its first byte in the whole
stream) and a new ``PATH`` begins; only the newest rotated segment is kept.
So a log never takes more than twice ``max_bytes`` (``$NBSCALE_LOG_MAX_BYTES``,
default 64 MiB; a segment may pass it by up to 4 KiB to end on a whole line), and offsets stay those of the whole stream:
:func:`read` answers any offset, saying how many bytes rotation dropped.

A full disk: the pump gives back the rotated segment, and when that is not
enough it writes a one-line error record (when given ``--error-file``), stops
the writer (``--kill``) with SIGTERM and discards what is left, so the job
ends with "disk full" instead of hanging or dying silently.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_MAX_BYTES = 64 << 20
KEEP_ROTATED = 1
PIPE_BYTES = 1 << 20
LINE_SLACK = 4096  # a segment may pass the cap by this much to end on a whole line


def max_bytes() -> int:
    raw = os.environ.get("NBSCALE_LOG_MAX_BYTES")
    if not raw:
        return DEFAULT_MAX_BYTES
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1024:
        raise SystemExit(f"NBSCALE_LOG_MAX_BYTES must be a whole number >= 1024, got {raw!r}")
    return value


def _rotated_dir(path: Path) -> Path:
    return path.parent / "rotated"


def segments(path: Path) -> list[tuple[int, Path]]:
    """The rotated segments of ``path``, oldest first, as ``(start offset, file)``."""
    folder = _rotated_dir(path)
    prefix = path.name + "."
    found = []
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    for name in names:
        if name.startswith(prefix) and name[len(prefix) :].isdigit():
            found.append((int(name[len(prefix) :]), folder / name))
    return sorted(found)


def _current_start(rotated: list[tuple[int, Path]]) -> int:
    if not rotated:
        return 0
    start, last = rotated[-1]
    try:
        return start + last.stat().st_size
    except OSError:
        return start


def read(path: Path, offset: int, limit: int) -> tuple[bytes, int]:
    """Up to ``limit`` bytes of the whole stream from ``offset``; returns ``(data, next)``.

    An offset that rotation dropped yields a note saying how many bytes are
    gone and continues at the oldest byte still kept.
    """
    for _ in range(20):  # a rotation between listing and opening: look again
        before = segments(path)
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            fh = None
        after = segments(path)
        if before != after or (fh is None and after and not path.exists()):
            if fh:
                fh.close()
            time.sleep(0.005)
            continue
        break
    try:
        start = _current_start(after)
        kept_from = after[0][0] if after else 0
        if offset < kept_from:
            note = f"[nbscale: {kept_from - offset} bytes of this log were dropped by rotation]\n"
            return note.encode(), kept_from
        if offset >= start:
            if fh is None:
                return b"", offset
            fh.seek(offset - start)
            data = fh.read(limit)
            return data, offset + len(data)
        for seg_start, seg in after:  # the offset is inside a rotated segment
            try:
                size = seg.stat().st_size
                if seg_start <= offset < seg_start + size:
                    with open(seg, "rb") as sfh:
                        sfh.seek(offset - seg_start)
                        data = sfh.read(min(limit, seg_start + size - offset))
                    return data, offset + len(data)
            except OSError:
                continue
        return b"", start  # a gap (a segment removed meanwhile): go on from the current file
    finally:
        if fh:
            fh.close()


class CappedWriter:
    def __init__(self, path: Path, limit: int):
        self.path = path
        self.limit = limit
        path.parent.mkdir(parents=True, exist_ok=True)
        self.start = _current_start(segments(path))
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.size = os.fstat(self.fd).st_size
        self.ends_line = True

    def _rotate(self) -> None:
        os.close(self.fd)
        folder = _rotated_dir(self.path)
        folder.mkdir(exist_ok=True)
        os.replace(self.path, folder / f"{self.path.name}.{self.start}")
        for _, old in segments(self.path)[:-KEEP_ROTATED]:
            old.unlink(missing_ok=True)
        self.start += self.size
        self.size = 0
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def free_rotated(self) -> bool:
        freed = False
        for _, old in segments(self.path):
            old.unlink(missing_ok=True)
            freed = True
        return freed

    def write(self, data: bytes) -> None:
        while data:
            room = self.limit - self.size
            if len(data) <= room:
                self._write_all(data)
                return
            if self.size == 0:  # more than a whole file: fill it, ending on a whole line
                cut = data.rfind(b"\n", 0, self.limit) + 1 or self.limit
                self._write_all(data[:cut])
                data = data[cut:]
            else:
                cut = data.rfind(b"\n", 0, room) + 1  # keep lines whole where they fit
                if not cut and not self.ends_line:
                    # finish the line the file ends with (a little over the cap) so that
                    # every segment starts at the beginning of a line
                    cut = data.find(b"\n", 0, LINE_SLACK) + 1
                if cut:
                    self._write_all(data[:cut])
                    data = data[cut:]
            self._rotate()

    def _write_all(self, data: bytes) -> None:
        if data:
            self.ends_line = data.endswith(b"\n")
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            self.size += written
            view = view[written:]


def _disk_full(args: argparse.Namespace, writer: CappedWriter | None) -> None:
    message = (
        f"disk full: could not write the log {args.path} "
        f"({os.strerror(errno.ENOSPC)}); free space on that disk or print less"
    )
    if args.error_file:
        record = {
            "rank": args.rank,
            "type": "DiskFull",
            "message": message,
            "traceback": "",
            "time": time.time(),
            "restart": 0,
        }
        try:
            Path(args.error_file).parent.mkdir(parents=True, exist_ok=True)
            Path(args.error_file).write_text(json.dumps(record))
        except OSError:
            pass
    if args.kill:
        with contextlib.suppress(OSError):
            os.kill(args.kill, signal.SIGTERM)


def pump(args: argparse.Namespace) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # end with the writers (EOF), not before
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    writer: CappedWriter | None = None
    failed = False
    try:
        writer = CappedWriter(Path(args.path), args.max_bytes)
    except OSError as exc:
        failed = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        if failed:
            _disk_full(args, None)
    while True:
        try:
            data = os.read(0, PIPE_BYTES)
        except InterruptedError:
            continue
        if not data:
            return
        if writer is None or failed:
            continue  # discard: nowhere to put it
        try:
            writer.write(data)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                failed = True
                continue
            writer.free_rotated()  # give back what rotation kept, then try once more
            with contextlib.suppress(OSError):
                writer.write(b"\n[nbscale: disk full; this log stops here]\n")
            failed = True
            _disk_full(args, writer)


def redirect(
    path: Path | str,
    kill_on_full: bool = False,
    error_file: Path | str | None = None,
    rank: int | None = None,
) -> None:
    """Send this process's stdout and stderr (file descriptors 1 and 2) to a capped log."""
    limit = max_bytes()
    sys.stdout.flush()
    sys.stderr.flush()
    command = [sys.executable, "-I", "-S", os.path.abspath(__file__), str(path), str(limit)]
    if kill_on_full:
        command += ["--kill", str(os.getpid())]
    if error_file:
        command += ["--error-file", str(error_file), "--rank", str(rank or 0)]
    env = {k: v for k, v in os.environ.items() if k != "NBSCALE_JOB_ID"}
    try:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            close_fds=True,
        )
    except OSError:  # no pump: write the file directly, uncapped, rather than lose the output
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        return
    assert proc.stdin is not None
    fd = proc.stdin.fileno()
    with contextlib.suppress(OSError, AttributeError):  # fewer, larger hand-overs (Linux)
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    proc.stdin.close()  # fds 1 and 2 keep the pipe open; EOF when this process and its children end
    proc.returncode = 0  # never waited for: it outlives us by the time it takes to drain the pipe


def wait_for_log_pumps(
    folder: Path | str, timeout: float = 5.0, exclude: tuple[Path | str, ...] = ()
) -> bool:
    """Wait until the pumps writing logs under ``folder`` have drained (their writers ended);
    return whether they did within ``timeout`` seconds.

    ``exclude`` names logs whose pump must not be waited for: the caller's own log (its
    writer is the caller, so that pump cannot end before the caller does)."""
    import psutil  # not needed by the pump itself

    needle = str(folder)
    skip = {str(p) for p in exclude}
    me = os.path.abspath(__file__)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = False
        for proc in psutil.process_iter(["cmdline"]):
            cmd = proc.info.get("cmdline") or []
            if len(cmd) > 4 and cmd[3] == me and cmd[4].startswith(needle) and cmd[4] not in skip:
                try:
                    busy = busy or proc.status() != psutil.STATUS_ZOMBIE
                except psutil.Error:
                    continue
        if not busy:
            return True
        time.sleep(0.02)
    return False


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("max_bytes", type=int)
    parser.add_argument("--kill", type=int)
    parser.add_argument("--error-file")
    parser.add_argument("--rank", type=int, default=0)
    pump(parser.parse_args())


if __name__ == "__main__":
    main()
