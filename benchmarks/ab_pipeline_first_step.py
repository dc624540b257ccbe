"""The diamond's first run from a fresh home, alternating two code trees (A/B).

    python benchmarks/ab_pipeline_first_step.py --before REV [--rounds 6] [--warm]

Runs ``nbscale pipeline run examples/pipeline/pipeline.yaml --json`` exactly as
``bench_pipeline.py`` does (its functions, a fresh ``NBSCALE_HOME`` each time), once with
this checkout and once with a worktree of ``REV`` on ``PYTHONPATH``, alternating, so both
sides see the same machine. Reports per side the medians (and ranges) of the command's wall
time, command start to the first step's start, the first step's overhead over its own cells,
and the two added (command start to the first step's cells done), in
``results/pipeline_first_step_ab.json``. With ``--warm`` each measured run is the second of
its home, ``--no-cache`` once the kernel kept warm from the first is ready (the warm path;
``results/pipeline_first_step_ab_warm.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_pipeline as bench  # noqa: E402

FIELDS = ("wall_s", "to_first_step_s", "first_step_overhead_s", "to_first_step_done_s")


def one(env: dict[str, str], warm: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="nbscale-ab-") as tmp:
        root = Path(tmp)
        env = {**bench.kernel_env(root), **env}
        if warm:
            bench.run_nbscale(env, root / "home")
            bench.wait_warm(root / "home")
        extra = ("--no-cache",) if warm else ()
        wall, run = bench.run_nbscale(env, root / "home", *extra)
        assert run["status"] == "SUCCEEDED", run
        first = bench.step_overheads(run)["prepare"]
        bench.shut_pool(root / "home")
    to_first = run["to_first_step_s"]
    return dict(zip(FIELDS, (wall, to_first, first, to_first + first), strict=True))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", required=True, help="the git revision to compare with")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--warm", action="store_true", help="measure runs on a warm kernel")
    args = parser.parse_args()
    repo = HERE.parent
    with tempfile.TemporaryDirectory(prefix="nbscale-ab-tree-") as tree:
        subprocess.run(
            ["git", "-C", str(repo), "worktree", "add", "--detach", "-f", tree, args.before],
            check=True,
            capture_output=True,
        )
        try:
            sides = {"before": {"PYTHONPATH": tree}, "after": {}}
            samples: dict[str, list[dict[str, float]]] = {k: [] for k in sides}
            loads = []
            for i in range(args.rounds):
                for side, env in sides.items():
                    samples[side].append(one(env, args.warm))
                loads.append(os.getloadavg()[0])
                print(
                    f"round {i + 1}: "
                    + ", ".join(
                        f"{s} first step {v[-1]['first_step_overhead_s']:.2f}s"
                        for s, v in samples.items()
                    )
                    + f", load {loads[-1]:.2f}",
                    file=sys.stderr,
                )
        finally:
            subprocess.run(
                ["git", "-C", str(repo), "worktree", "remove", "--force", tree],
                check=False,
                capture_output=True,
            )
    result = {
        "benchmark": "pipeline first step, A/B",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "before": args.before,
        "after": subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
        ).stdout.strip(),
        "rounds": args.rounds,
        "workload": "examples/pipeline/pipeline.yaml, fresh NBSCALE_HOME each run, alternating"
        + ("; the home's second run (--no-cache) on the kernel kept warm" if args.warm else ""),
        "medians_s": {
            side: {
                f: {
                    "median": statistics.median(r[f] for r in rows),
                    "min": min(r[f] for r in rows),
                    "max": max(r[f] for r in rows),
                }
                for f in FIELDS
            }
            for side, rows in samples.items()
        },
        "samples": samples,
        "load_average_by_round": loads,
    }
    name = "pipeline_first_step_ab_warm" if args.warm else "pipeline_first_step_ab"
    out = HERE / "results" / f"{name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["medians_s"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
