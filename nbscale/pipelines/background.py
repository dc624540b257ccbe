"""``python -m nbscale.pipelines.background RUN_ID``: a detached run, in its own session.

Kept apart from ``runner`` so that ``-m`` does not import the module it runs twice.
SIGTERM unwinds through the runner's cleanup, so the kernels die with the run.
"""

from __future__ import annotations

import faulthandler
import logging
import signal
import sys
from typing import Any

from . import first_kernel


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGTERM, _terminate)
    faulthandler.register(
        signal.SIGUSR1, all_threads=True
    )  # kill -USR1 PID: stacks into runner.log
    # where each run's first kernel came from, into runner.log (nbscale's own records only)
    said = logging.StreamHandler(sys.stderr)
    said.setFormatter(logging.Formatter("nbscale runner: %(message)s"))
    logging.getLogger("nbscale.pipelines").addHandler(said)
    logging.getLogger("nbscale.pipelines").setLevel(logging.INFO)
    first_kernel.start_for_run(argv[0])  # boots while the runner's imports and the DAG's checks run
    try:
        from .runner import execute_run
        from .status import SUCCEEDED

        status = execute_run(argv[0])
    except SystemExit as exc:
        return int(exc.code or 1)
    finally:
        first_kernel.discard()
    return 0 if status == SUCCEEDED else 1


if __name__ == "__main__":
    sys.exit(main())
