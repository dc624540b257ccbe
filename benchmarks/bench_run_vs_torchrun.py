"""``nbscale run`` of a script against raw ``torchrun`` of the same script, with nbscale's phases.

    python benchmarks/bench_run_vs_torchrun.py [--rounds 5] [--gpu] [--case ddp|tiny|both]

Wall time from command start to command exit, both launched the same way (a
subprocess), interleaved round by round. Cases:

- ``ddp``: a fixed 2-process DDP script (``scripts/ddp_fixed.py``); goal: median
  ratio <= 1.10 (issue 23: <= 1.05x for the ``%%train`` cell, see
  ``bench_train_magic.py``).
- ``tiny``: a one-line script (``print``), ``nbscale run tiny.py`` against
  ``torchrun --standalone --nproc-per-node=1 tiny.py``; goal: within 0.5 s of
  torchrun's own time.

nbscale runs with ``NBSCALE_PHASES=1``, so each of its processes writes when it
reached each phase to the job's ``phases.jsonl`` (``nbscale.runtime.phases``);
``phase_breakdown`` turns those times, with the command's own start and exit,
into the fixed costs: the CLI until the job is recorded, the supervisor's start,
the agent's start, torchrun's import, the rank's start, the script, the end of
the job and the CLI noticing it. Each round also checks that nothing was lost:
the job's last log line is the script's last line and its exit code is 0.
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import sys
import tempfile
from pathlib import Path

from harness import save, timed_command

SCRIPT = str(Path(__file__).resolve().parent / "scripts" / "ddp_fixed.py")
TINY_LINE = 'print("tiny: the one line of this script")\n'

# (label, from phase, to phase): each a span between two recorded instants; "start" is the
# command's launch and "exit" its end, both seen by this benchmark
SPANS = [
    ("CLI: python start, imports, spec, job recorded", "start", "submit: job recorded"),
    ("cell: to the kernel, magic's arguments", "start", "capture: starts"),
    ("cell: capture", "capture: starts", "capture: done"),
    ("cell: spec", "capture: done", "bundle: write starts"),
    ("cell: bundle write", "bundle: write starts", "bundle: written"),
    ("cell: submit checks, job recorded", "bundle: written", "submit: job recorded"),
    ("submit: job folder and spec", "submit: job recorded", "submit: supervisor starts"),
    ("supervisor: python start and imports", "submit: supervisor starts", "supervisor: imported"),
    ("supervisor: fork, port, cgroup", "supervisor: imported", "supervisor: spawning agents"),
    ("supervisor: spawn agents", "supervisor: spawning agents", "supervisor: agents spawned"),
    ("agent: python start and imports", "supervisor: agents spawned", "agent: running"),
    ("agent: torch.distributed.run import", "agent: running", "agent: torchrun imported"),
    ("rank: rendezvous, spawn, python start", "agent: torchrun imported", "worker: running"),
    ("rank: log pump start", "worker: running", "worker: log pump started"),
    ("rank: spec read", "worker: log pump started", "worker: entry starts"),
    ("rank: the entry itself (script or cell)", "worker: entry starts", "worker: entry returned"),
    ("agent: ranks exit, torchrun returns", "worker: entry returned", "agent: torchrun returned"),
    (
        "supervisor: notices the agents ended",
        "agent: torchrun returned",
        "supervisor: agents ended",
    ),
    (
        "supervisor: sweep of the job's processes",
        "supervisor: agents ended",
        "supervisor: processes stopped",
    ),
    ("supervisor: log pumps drained", "supervisor: processes stopped", "supervisor: logs drained"),
    ("supervisor: end recorded", "supervisor: logs drained", "supervisor: end recorded"),
    ("client: notices the end, results back, exits", "supervisor: end recorded", "exit"),
]


def phase_times(job_dir: str | Path, started: float, ended: float) -> dict[str, float]:
    """Each phase's instant (the first for the first phases of ranks, the last for their ends)."""
    from nbscale.runtime import phases

    times: dict[str, float] = {"start": started, "exit": ended}
    for row in phases.read(job_dir):
        name, t = row["phase"], row["t"]
        last = name in ("worker: entry returned", "agent: torchrun returned")
        if name not in times or (last and t > times[name]) or (not last and t < times[name]):
            times[name] = t
    return times


def phase_breakdown(times: dict[str, float]) -> dict[str, float]:
    """Seconds in each span of ``SPANS`` whose two ends were recorded."""
    spans = SPANS
    if "capture: starts" in times:  # a cell: the spans from the send are the cell's
        spans = [s for s in SPANS if not s[0].startswith("CLI:")]
    return {label: times[b] - times[a] for label, a, b in spans if a in times and b in times}


def summarize_phases(rounds: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    labels = [label for label, _, _ in SPANS if any(label in r for r in rounds)]
    return {
        label: {
            "median_s": statistics.median(r[label] for r in rounds if label in r),
            "min_s": min(r[label] for r in rounds if label in r),
            "max_s": max(r[label] for r in rounds if label in r),
        }
        for label in labels
    }


def latest_job_dir(home: str) -> str:
    return max(glob.glob(os.path.join(home, "jobs", "*")), key=os.path.getmtime)


def check_nothing_lost(job_dir: str, last_line: str) -> None:
    """The job's recorded end is SUCCEEDED with exit code 0, and rank 0's log ends with the
    script's last line (the last lines reached the log before the end was recorded)."""
    from nbscale.store import get_store
    from nbscale.store.jobs import get_job

    record = get_job(get_store(), os.path.basename(job_dir))
    log = (Path(job_dir) / "logs" / "rank-0.log").read_text()
    if record.status != "SUCCEEDED" or record.exit_code != 0:
        raise RuntimeError(f"job {record.id}: {record.status}, exit code {record.exit_code}")
    if not log.rstrip("\n").endswith(last_line):
        raise RuntimeError(
            f"job {record.id}: its log does not end with {last_line!r}: {log[-300:]!r}"
        )


def run_case(case: str, rounds: int, procs: int, gpu: bool) -> dict:
    work = tempfile.mkdtemp(prefix="nbscale-bench-run-")
    home = os.path.join(work, "home")
    os.environ["NBSCALE_HOME"] = home  # check_nothing_lost reads this home's store
    env = {**os.environ, "NBSCALE_HOME": home, "OMP_NUM_THREADS": "1"}
    if gpu:
        env["BENCH_GPU"] = "1"
    if case == "tiny":
        script = os.path.join(work, "tiny.py")
        Path(script).write_text(TINY_LINE)
        procs, last_line = 1, "tiny: the one line of this script"
    else:
        script, last_line = SCRIPT, None
    nbscale_cmd = [sys.executable, "-m", "nbscale", "run", "--procs-per-node", str(procs)]
    if gpu:
        nbscale_cmd += ["--gpus-per-proc", "1"]
    nbscale_cmd.append(script)
    torchrun_cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={procs}",
        script,
    ]
    nbscale_env = {**env, "NBSCALE_PHASES": "1"}
    samples: dict[str, list[float]] = {"torchrun": [], "nbscale": []}
    breakdowns: list[dict[str, float]] = []
    for i in range(rounds + 1):  # the first round warms the caches and is not counted
        raw = timed_command(torchrun_cmd, env, cwd=work)[0]
        ours, started, ended = timed_command(nbscale_cmd, nbscale_env, cwd=work)
        job_dir = latest_job_dir(home)
        if last_line is not None:
            check_nothing_lost(job_dir, last_line)
        if i == 0:
            continue
        samples["torchrun"].append(raw)
        samples["nbscale"].append(ours)
        breakdowns.append(phase_breakdown(phase_times(job_dir, started, ended)))
        print(
            f"  {case} round {i}/{rounds}: torchrun {raw:.3f}s nbscale {ours:.3f}s "
            f"load {os.getloadavg()[0]:.2f}",
            file=sys.stderr,
        )
    med = {k: statistics.median(v) for k, v in samples.items()}
    return {
        "script": "one line (print)" if case == "tiny" else "scripts/ddp_fixed.py",
        "ranks": procs,
        "medians_s": med,
        "samples_s": samples,
        "ratio_vs_torchrun": med["nbscale"] / med["torchrun"],
        "difference_s": med["nbscale"] - med["torchrun"],
        "phases_s": summarize_phases(breakdowns),
        "phases_by_round_s": breakdowns,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--gpu", action="store_true", help="one GPU per rank, nccl")
    parser.add_argument(
        "--procs", type=int, help="ranks (default 2; with --gpu, one per visible GPU)"
    )
    parser.add_argument("--case", choices=["ddp", "tiny", "both"], default="both")
    args = parser.parse_args()
    procs = args.procs or 2
    if args.gpu and not args.procs:
        import torch

        procs = torch.cuda.device_count()  # nccl allows one rank per GPU
    cases = ["ddp", "tiny"] if args.case == "both" else [args.case]
    load_before = os.getloadavg()
    result: dict = {
        "goal": "ddp: nbscale/torchrun median wall ratio <= 1.10; "
        "tiny: nbscale within 0.5 s of torchrun",
        "device": "gpu" if args.gpu else "cpu",
        "rounds": args.rounds,
        "nbscale_env": "NBSCALE_PHASES=1 (phase timestamps written to the job folder)",
    }
    for case in cases:
        result[case] = run_case(case, args.rounds, procs, args.gpu)
    if "ddp" in result:  # the fields earlier runs of this benchmark had, for the summary table
        result["medians_s"] = result["ddp"]["medians_s"]
        result["samples_s"] = result["ddp"]["samples_s"]
        result["ratio_vs_torchrun"] = {"nbscale": result["ddp"]["ratio_vs_torchrun"]}
        result["ranks"] = result["ddp"]["ranks"]
    result["load_average_1_5_15"] = {"before": load_before, "after": os.getloadavg()}
    # one case alone goes to a file of its own, so a run of both cases stays whole
    alone = "" if args.case == "both" else f"_{args.case}"
    save("run_vs_torchrun" + alone + ("_gpu" if args.gpu else ""), result)


if __name__ == "__main__":
    main()
