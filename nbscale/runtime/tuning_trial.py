"""One trial of a pipeline's sweep step compiled for SageMaker Pipelines (a ``Tuning`` step).

    python -m nbscale.runtime.tuning_trial --space JSON --types JSON \
        [--hyperparameters PATH] [--checkpoints DIR] -- PIPELINE_NODE_ARGUMENTS

SageMaker's tuner starts each trial as a training job and writes its values, strings all,
to ``hyperparameters.json`` beside the static ones. This entry

- turns the tuned values (the names in ``--space``) back into their types with the space,
  and reads the pipeline parameters the step uses from the static hyperparameters
  ``nbscale_param_<name>`` (the pipeline's ``Get``; typed by ``--types``, as a step's
  ``--param`` values are);
- appends them to the step's ``nbscale.runtime.pipeline_node`` arguments as ``--param NAME
  VALUE`` and ``--types`` (a tuned value wins over a pipeline parameter of its name), and
  runs the step: its notebook gets them as papermill parameters, and ``nbscale.param``
  reads the same file (``NBSCALE_HYPERPARAMETERS``, ``NBSCALE_SWEEP_SPACE``);
- gives the trial a checkpoint folder of its own under ``--checkpoints`` (the trials of a
  tuning job share its CheckpointConfig's S3 URI), named by its training job;
- prints each value rank 0's notebook logs with ``nbscale.log_metric`` on this process's
  stdout as the metric line (``nbscale.sweeps.lines``) while the notebook runs: the kernel's
  own stdout is the notebook's, and SageMaker's ``MetricDefinitions`` read the job's log.
  The values are read from the file ``log_metric`` appends to in ``NBSCALE_JOB_DIR``, a
  scratch folder of this trial.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

#: the static hyperparameter that carries pipeline parameter NAME's value into a trial
PARAM_PREFIX = "nbscale_param_"
HYPERPARAMETERS = "/opt/ml/input/config/hyperparameters.json"
_KINDS = {bool: "bool", int: "int", float: "float", str: "str"}


def trial_parameters(
    hyperparameters: dict[str, Any], space_list: list[Any], types: dict[str, str]
) -> tuple[list[str], dict[str, str]]:
    """``--param`` arguments and the ``--types`` of every parameter, from what SageMaker wrote."""
    from ..sweeps.space import Space

    space = Space.from_list(space_list)
    args: list[str] = []
    kinds = dict(types)
    for name in types:
        key = PARAM_PREFIX + name
        if key in hyperparameters and name not in space.names:
            args += ["--param", name, str(hyperparameters[key])]
    missing = [n for n in space.names if n not in hyperparameters]
    if missing:
        raise SystemExit(
            f"nbscale: hyperparameters.json has no value for {', '.join(missing)} "
            "(this is not a trial of the step's tuning job)"
        )
    tuned = space.cast({n: hyperparameters[n] for n in space.names})
    for name, value in tuned.items():
        kind = _KINDS.get(type(value), "str")
        kinds[name] = kind
        args += ["--param", name, str(value)]  # container_step types it back by kinds
    return args, kinds


def _echo(path: Path, stop: threading.Event, out) -> None:
    """Print each record appended to ``path`` as a metric line until ``stop`` (then once more)."""
    from ..sweeps.lines import metric_line

    pos, pending = 0, ""
    while True:
        ending = stop.is_set()
        try:
            with open(path) as fh:
                fh.seek(pos)
                pending += fh.read()
                pos = fh.tell()
        except FileNotFoundError:
            pass
        *lines, pending = pending.split("\n")
        for raw in lines:
            try:
                record = json.loads(raw)
                value = float(record["value"])
            except (ValueError, KeyError, TypeError):
                continue
            line = metric_line(str(record["name"]), value, record.get("step"), record.get("time"))
            if line is not None:
                print(line, file=out, flush=True)
        if ending:
            return
        stop.wait(0.25)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print("nbscale: tuning_trial needs -- before the step's arguments", file=sys.stderr)
        return 2
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="nbscale-tuning-trial")
    parser.add_argument("--space", required=True)
    parser.add_argument("--types", default="{}")
    parser.add_argument("--hyperparameters", default=HYPERPARAMETERS)
    parser.add_argument("--checkpoints", help="the job's checkpoint folder (CheckpointConfig)")
    args = parser.parse_args(argv[:split])
    node_args = argv[split + 1 :]
    hyperparameters = json.loads(Path(args.hyperparameters).read_text())
    params, kinds = trial_parameters(
        hyperparameters, json.loads(args.space), json.loads(args.types)
    )
    from ..checkpoint import CHECKPOINT_ENV
    from ..sweeps.spec import SPACE_ENV

    job_dir = tempfile.mkdtemp(prefix="nbscale-trial-")
    job = os.environ.get("TRAINING_JOB_NAME")
    if args.checkpoints and job:
        # one folder per trial: every trial of the tuning job syncs to the same S3 URI
        os.environ[CHECKPOINT_ENV] = os.path.join(args.checkpoints, job)
    os.environ.update(
        {
            "NBSCALE_JOB_DIR": job_dir,  # log_metric's records: echoed below as metric lines
            "NBSCALE_HYPERPARAMETERS": args.hyperparameters,  # nbscale.param in the notebook
            SPACE_ENV: args.space,
        }
    )
    print(
        "nbscale: trial values "
        + json.dumps({n: v for n, v in hyperparameters.items() if n in kinds}, sort_keys=True),
        file=sys.stderr,
        flush=True,
    )
    stop = threading.Event()
    echo = threading.Thread(
        target=_echo,
        args=(Path(job_dir) / "metrics" / "rank-0.jsonl", stop, sys.stdout),
        daemon=True,
    )
    echo.start()
    from .pipeline_node import main as run_node

    try:
        return run_node([*node_args, *params, "--types", json.dumps(kinds, sort_keys=True)])
    finally:
        stop.set()
        echo.join(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
