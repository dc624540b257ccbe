"""A local sweep against the same trials as a loop of ``nbscale run`` calls (issue 22).

    python benchmarks/bench_sweep.py [--rounds 3] [--trials 16] [--parallel 2] [--seconds 2]

Overhead: each trial's own compute is fixed (``--seconds`` of sleeping after it logs its
metric, whatever its values), so what differs is how trials are started and followed.

- ``sweep``: ``nbscale.sweep`` with ``--trials`` trials, at most ``--parallel`` at once,
  random sampling, no pruning (the Optuna study, the driver loop, one job per trial);
- ``run_loop``: the same number of trials as ``nbscale run SCRIPT`` commands (each waits for
  its job), ``--parallel`` of them at a time from a thread pool, each with its own values in
  ``NBSCALE_PARAMS`` - what a user writes by hand without sweeps.

Each round starts from a fresh nbscale home. Goal: sweep / run_loop <= 1.10.

Pruning: the planted objective of the tests (SGD on c/2 (w-1)^2, c = 100, in a tiny torch
loop; best lr = 0.01) over ``lr=loguniform(1e-5,1e-1)``, 12 trials of 8 steps, 2 at once,
median pruning; the steps the trials ran (their logged values) against 12 x 8. Goal: >= 40%
saved.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import compare, save, summary  # noqa: E402

FIXED = textwrap.dedent(
    """
    import os, time
    import nbscale
    lr = nbscale.param("lr", 0.01)
    nbscale.log_metric("val_loss", (lr - 0.01) ** 2)
    time.sleep(float(os.environ["TRIAL_SECONDS"]))
    """
)

PLANTED = textwrap.dedent(
    """
    import time
    import torch
    import nbscale
    lr = nbscale.param("lr", 0.01)
    w = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([w], lr=lr)
    for step in range(8):
        opt.zero_grad()
        loss = 50.0 * (w - 1).pow(2).sum()
        loss.backward()
        opt.step()
        with torch.no_grad():
            val = 50.0 * (w - 1).pow(2).sum().item()
        nbscale.log_metric("val_loss", min(val, 1e6), step=step)
        time.sleep(0.4)
    """
)


def fresh_home(root: Path, name: str) -> Path:
    home = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root))
    os.environ["NBSCALE_HOME"] = str(home)
    from nbscale import store

    for s in store._stores.values():
        s.close()
    store._stores.clear()
    return home


def run_sweep(root: Path, script: Path, trials: int, parallel: int, seconds: float) -> float:
    import nbscale

    fresh_home(root, "sweep")
    spec = nbscale.JobSpec(
        entry=nbscale.Entry.from_path(str(script)), env={"TRIAL_SECONDS": str(seconds)}
    )
    start = time.perf_counter()
    sweep = nbscale.sweep(
        spec,
        "lr=loguniform(1e-4,1e-1)",
        "val_loss:min",
        trials=trials,
        parallel=parallel,
        algorithm="random",
        pruner="none",
        seed=0,
    )
    elapsed = time.perf_counter() - start
    counts = sweep.view().counts()
    if counts != {"SUCCEEDED": trials}:
        raise RuntimeError(f"the sweep did not run every trial: {counts}")
    return elapsed


def run_loop(root: Path, script: Path, trials: int, parallel: int, seconds: float) -> float:
    home = fresh_home(root, "loop")
    import random

    rng = random.Random(0)
    values = [10 ** rng.uniform(-4, -1) for _ in range(trials)]

    def one(lr: float) -> None:
        env = {
            **os.environ,
            "NBSCALE_HOME": str(home),
            "TRIAL_SECONDS": str(seconds),
            "NBSCALE_PARAMS": json.dumps({"lr": lr}),
        }
        proc = subprocess.run(
            [sys.executable, "-m", "nbscale", "run", str(script)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-2000:])

    start = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(one, values))
    return time.perf_counter() - start


def pruning(root: Path) -> dict:
    import nbscale

    fresh_home(root, "prune")
    script = root / "planted.py"
    script.write_text(PLANTED)
    sweep = nbscale.sweep(
        nbscale.JobSpec(entry=nbscale.Entry.from_path(str(script))),
        "lr=loguniform(1e-5,1e-1)",
        "val_loss:min",
        trials=12,
        parallel=2,
        pruner="median",
        seed=1,
        settings={"startup_trials": 2, "warmup_steps": 1},
    )
    view = sweep.view()
    ran = sum(len(nbscale.job(t.job_id).metrics()) for t in view.trials)
    return {
        "trials": 12,
        "steps_per_trial": 8,
        "steps_ran": ran,
        "saved": round(1 - ran / (12 * 8), 3),
        "counts": view.counts(),
        "best": view.best.to_dict() if view.best else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="nbscale-bench-sweep-"))
    script = root / "fixed.py"
    script.write_text(FIXED)
    samples = compare(
        {
            "run_loop": lambda: run_loop(root, script, args.trials, args.parallel, args.seconds),
            "sweep": lambda: run_sweep(root, script, args.trials, args.parallel, args.seconds),
        },
        rounds=args.rounds,
        warmup=0,
    )
    result = {
        "settings": vars(args),
        "overhead": summary(samples, "run_loop"),
        "pruning": pruning(root),
    }
    save("sweep", result)
    ratio = result["overhead"]["ratio_vs_run_loop"]["sweep"]
    print(f"sweep / run_loop: {ratio:.3f} (goal <= 1.10)")
    print(f"pruning saved {result['pruning']['saved']:.0%} of trial-steps (goal >= 40%)")


if __name__ == "__main__":
    main()
