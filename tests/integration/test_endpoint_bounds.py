"""The serving process itself refuses limits beyond what a process can honour (the bounds checked
before anything starts are unit tests)."""

from __future__ import annotations


def test_the_server_refuses_limits_beyond_what_a_process_can_honour(tmp_path):
    import subprocess
    import sys

    for option, value in (("--max-body-mb", "1e9"), ("--read-timeout", "inf")):
        proc = subprocess.run(
            [sys.executable, "-m", "nbscale.serving", "--model-dir", str(tmp_path),
             "--insecure-no-auth", option, value],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 2 and "at most" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
