"""The capped log pump: a process that sends its own output through one does not wait for
that pump at its end (it drains only when the process exits), and still waits for the
pumps of the processes it started."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tests.support import wait_for

SCRIPT = textwrap.dedent(
    """
    import json, subprocess, sys
    from pathlib import Path
    from nbscale.logpump import redirect, wait_for_log_pumps

    folder = Path(sys.argv[1])
    own = folder / "supervisor.log"
    redirect(own)  # this process's output now goes through a pump of its own
    print("the supervisor's line", flush=True)
    # a child whose output goes through its pump, as an agent's does, and then ends
    child = subprocess.run(
        [sys.executable, "-c",
         "from nbscale.logpump import redirect; redirect(%r); print('a rank line')"
         % str(folder / "rank-0.log")]
    )
    results = {
        "child_exit": child.returncode,
        "without_exclude": wait_for_log_pumps(folder, timeout=1.0),
        "with_exclude": wait_for_log_pumps(folder, timeout=30.0, exclude=(own,)),
        "rank_log": (folder / "rank-0.log").read_text(),
    }
    (folder / "results.json").write_text(json.dumps(results))
    """
)


def test_the_callers_own_pump_is_not_waited_for_and_the_others_are_drained(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["child_exit"] == 0
    # its own pump cannot drain while it runs: waiting for it only runs out the timeout
    assert results["without_exclude"] is False
    # excluded, the rank's pump (its writer ended) is drained and its line is in the log
    assert results["with_exclude"] is True
    assert results["rank_log"] == "a rank line\n"
    # and the process's own log gets its lines once it has exited (its pump drains then)
    own = tmp_path / "supervisor.log"
    wait_for(lambda: "the supervisor's line" in own.read_text(), 30, what="the own log")
