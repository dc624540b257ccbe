"""One torchrun agent of a local job, which records how it ended.

``python -m nbscale.backends.local.agent EXIT_FILE LOG_FILE TORCHRUN_ARGS...`` runs
torchrun's own ``main`` in this process and, however it ends (success, a
failed worker, a signal it catches), writes ``{"code": N, "time": T}`` to
EXIT_FILE by write-then-rename. The supervisor reads these files, so a job
whose supervisor was killed still ends with its true outcome: a supervisor
started again later (or any ``status`` look) finds the agents' own records.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

from ...logpump import redirect
from ...runtime import phases
from .exits import record_exit


def main() -> None:
    target, log, args = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    job_dir = os.environ.get("NBSCALE_JOB_DIR")
    phases.mark(job_dir, "agent: running")
    redirect(log)  # torchrun's own output, size-capped like the ranks' logs
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    phases.mark(job_dir, "agent: torchrun imported")
    code = 1
    try:
        torchrun(args)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except ChildFailedError:
        code = 1  # torchrun already printed which rank failed and why
    except BaseException:  # noqa: BLE001 - whatever ended torchrun, its end is recorded
        traceback.print_exc()
        code = 1
    finally:
        phases.mark(job_dir, "agent: torchrun returned")
        record_exit(target, code)
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
