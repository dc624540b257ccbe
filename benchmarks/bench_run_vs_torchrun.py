"""``nbscale run`` of a fixed 2-process DDP script against raw ``torchrun`` of the same script.

    python benchmarks/bench_run_vs_torchrun.py [--rounds 5] [--gpu]

Wall time from command start to command exit, both launched the same way
(a subprocess), interleaved round by round. Goal: median ratio <= 1.10.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from harness import compare, save, summary, time_command

SCRIPT = str(Path(__file__).resolve().parent / "scripts" / "ddp_fixed.py")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--gpu", action="store_true", help="one GPU per rank, nccl")
    parser.add_argument(
        "--procs", type=int, help="ranks (default 2; with --gpu, one per visible GPU)"
    )
    args = parser.parse_args()
    procs = args.procs or 2
    if args.gpu and not args.procs:
        import torch

        procs = torch.cuda.device_count()  # nccl allows one rank per GPU

    home = tempfile.mkdtemp(prefix="nbscale-bench-")
    env = {**os.environ, "NBSCALE_HOME": home, "OMP_NUM_THREADS": "1"}
    if args.gpu:
        env["BENCH_GPU"] = "1"
    nbscale_cmd = [sys.executable, "-m", "nbscale", "run", "--procs-per-node", str(procs), SCRIPT]
    if args.gpu:
        nbscale_cmd[6:6] = ["--gpus-per-proc", "1"]
    torchrun_cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(procs),
        SCRIPT,
    ]
    samples = compare(
        {
            "torchrun": lambda: time_command(torchrun_cmd, env=env),
            "nbscale": lambda: time_command(nbscale_cmd, env=env),
        },
        rounds=args.rounds,
    )
    result = summary(samples, baseline="torchrun")
    result["goal"] = "nbscale/torchrun median wall ratio <= 1.10"
    result["device"] = "gpu" if args.gpu else "cpu"
    result["ranks"] = procs
    save("run_vs_torchrun" + ("_gpu" if args.gpu else ""), result)


if __name__ == "__main__":
    main()
