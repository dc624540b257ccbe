"""``nbscale pipeline run FLOW --backend NAME`` on an orchestrator elsewhere (KFP, SageMaker).

One driver for every remote pipeline backend: refuse the local runner's options,
start, print the run's id, follow its steps (or detach), terminate it on Ctrl-C,
and exit with its outcome. A backend gives its runner and its words.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from ..errors import SpecError

LOCAL_ONLY = ("only", "from_step", "no_cache", "max_parallel")


def run_remote(
    args: Any,
    parameters: dict[str, Any],
    on_step: Callable[[str, dict], None],
    runner: Any,
    *,
    platform: str,
    cache_note: str,
    run_id: Callable[[Any], str],
    label: str,
    stopped: str,
) -> int:
    """``runner`` has ``start(path, parameters)``, ``follow(run, on_step)`` and ``cancel(id)``;
    the run it returns has ``status``, ``error`` and ``to_dict()``."""
    for option in LOCAL_ONLY:
        if getattr(args, option, None) not in (None, False, []):
            raise SpecError(
                f"--{option.replace('_', '-')}",
                f"is not available for a pipeline on {platform} ({cache_note})",
                "leave it out, or run the pipeline locally",
            )
    run = runner.start(args.path, parameters)
    print(f"{label} {run_id(run)}", file=sys.stderr, flush=True)
    if args.detach:
        print(run_id(run))
        return 0
    try:
        runner.follow(run, on_step)
    except KeyboardInterrupt:
        runner.cancel(run_id(run))
        print(f"nbscale: interrupted; {stopped}", file=sys.stderr)
        return 130
    if getattr(args, "json", False):
        print(json.dumps(run.to_dict(), indent=2))
    else:
        print(f"{label} {run.status}" + (f": {run.error}" if run.error else ""))
    return 0 if run.status == "SUCCEEDED" else 1
