"""A notebook as a job: each rank executes it with papermill in its own kernel.

The kernel inherits the rank's environment (RANK, WORLD_SIZE, MASTER_ADDR...),
so ``torch.distributed`` works inside the notebook as in a script.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from .jobdir import JobDir


def run_notebook(path: str, parameters: dict[str, Any], jobdir: JobDir, rank: int) -> Path:
    from ..kernel_transport import execute_notebook

    if os.environ.get("NBSCALE_SWEEP"):
        # a sweep's trial: its values as papermill parameters, wherever the platform put them
        # (Katib's NBSCALE_PARAM_<name>, SageMaker's hyperparameters.json, nbscale's spec)
        from ..sweeps.params import current

        parameters = {**parameters, **current()}
    out_dir = jobdir.path / "notebooks"
    out_dir.mkdir(exist_ok=True)
    output = out_dir / f"rank-{rank}.ipynb"
    execute_notebook(  # the rank's kernel on Unix sockets in a private folder, not on TCP
        path,
        str(output),
        parameters=parameters,
        stdout_file=sys.stdout,
        stderr_file=sys.stderr,
        progress_bar=False,
        cwd=os.path.dirname(os.path.abspath(path)),
        kernel_name=os.environ.get("NBSCALE_KERNEL", "python3"),
        # the supervisor removes the folder if this rank is killed before it can
        note=str(jobdir.kernel_note(rank)),
        language="python",
    )
    return output
