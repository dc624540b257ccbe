"""A pipeline step on one node of a SageMaker TrainingStep (or a step that reads one's outputs).

    python -m nbscale.runtime.pipeline_node [--unpack DIR ...] [--fingerprint HEX] \
        -- CONTAINER_STEP_ARGUMENTS

A training step's outputs reach S3 as SageMaker's ``model.tar.gz`` (what the job left in
``/opt/ml/model``); each ``--unpack DIR`` holding one is unpacked in place before the
step runs, so ``--input PRODUCER=DIR/outputs`` is the producer's outputs folder as a
Processing step's would be.

On a training job's hosts (``resourceconfig.json``) every host runs the step notebook
with the torch distributed variables of its node set (``MASTER_ADDR``, ``MASTER_PORT``,
``WORLD_SIZE`` = nodes, ``RANK`` = ``NODE_RANK`` = the host's index, one process per
node that sees all of the node's GPUs); only rank 0 writes the step's outputs and
executed notebook where SageMaker uploads them, the other ranks write theirs to a
scratch folder. ``--fingerprint`` is the step's cache key (``nbscale.pipelines
.fingerprint``); it only has to be in the request, so an edited step misses
SageMaker's cache, and is echoed to the log.
"""

from __future__ import annotations

import argparse
import os
import sys
import tarfile
import tempfile
from pathlib import Path

ARCHIVE = "model.tar.gz"


def unpack(folder: str) -> bool:
    """Unpack ``folder/model.tar.gz`` into ``folder``; False when there is none."""
    archive = Path(folder) / ARCHIVE
    if not archive.is_file():
        return False
    with tarfile.open(archive) as tar:
        try:
            tar.extractall(folder, filter="data")  # no links out, no absolute paths
        except TypeError:  # a Python without extraction filters: the same rules by hand
            for member in tar.getmembers():
                parts = Path(member.name).parts
                if (
                    member.name.startswith("/")
                    or ".." in parts
                    or not (member.isfile() or member.isdir())
                ):
                    raise ValueError(f"{archive}: refusing {member.name!r}") from None
            tar.extractall(folder)  # noqa: S202 - every member checked above
    archive.unlink()
    return True


def _replace(args: list[str], flag: str, value: str) -> list[str]:
    out = list(args)
    if flag in out:
        out[out.index(flag) + 1] = value
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print("nbscale: pipeline_node needs -- before the step's arguments", file=sys.stderr)
        return 2
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="nbscale-pipeline-node")
    parser.add_argument("--unpack", action="append", default=[], metavar="DIR")
    parser.add_argument("--fingerprint")
    args = parser.parse_args(argv[:split])
    step_args = argv[split + 1 :]
    for folder in args.unpack:
        if not unpack(folder):
            print(f"nbscale: no {ARCHIVE} in {folder}", file=sys.stderr)
            return 1

    from .launch import node_layout

    layout = node_layout({})
    if layout["platform"] == "sagemaker":
        os.environ.update(
            {
                "MASTER_ADDR": str(layout["master_addr"]),
                "MASTER_PORT": str(layout["master_port"]),
                "WORLD_SIZE": str(layout["nnodes"]),
                "RANK": str(layout["node_rank"]),
                "NODE_RANK": str(layout["node_rank"]),
                "LOCAL_RANK": "0",
                "LOCAL_WORLD_SIZE": "1",
            }
        )
        if layout["node_rank"] != 0:  # only rank 0's outputs are the step's
            scratch = tempfile.mkdtemp(prefix="nbscale-rank-")
            step_args = _replace(step_args, "--outputs", os.path.join(scratch, "outputs"))
            step_args = _replace(step_args, "--executed", os.path.join(scratch, "notebook"))
        print(
            f"nbscale: step node {layout['node_rank']} of {layout['nnodes']}"
            + (f", fingerprint {args.fingerprint}" if args.fingerprint else ""),
            file=sys.stderr,
        )
    from ..pipelines.container_step import main as run_step

    return run_step(step_args)


if __name__ == "__main__":
    sys.exit(main())
