"""Side-by-side timing: run each contender in turn, several rounds, report medians and ratios.

Contenders are interleaved round by round (A, B, A, B, ...) so that a noisy
neighbour on this 2-core machine slows both alike instead of one of them.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def time_command(argv: list[str], env: dict | None = None, cwd: str | None = None) -> float:
    return timed_command(argv, env, cwd)[0]


def timed_command(
    argv: list[str], env: dict | None = None, cwd: str | None = None
) -> tuple[float, float, float]:
    """(seconds, wall clock at start, wall clock at the end) of a command that must succeed."""
    started = time.time()
    t0 = time.perf_counter()
    proc = subprocess.run(
        argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return elapsed, started, time.time()


def compare(
    contenders: dict[str, Callable[[], float]], rounds: int, warmup: int = 1
) -> dict[str, list[float]]:
    for _ in range(warmup):
        for run in contenders.values():
            run()
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for i in range(rounds):
        for name, run in contenders.items():
            samples[name].append(run())
            print(f"  round {i + 1}/{rounds} {name}: {samples[name][-1]:.3f}s", file=sys.stderr)
    return samples


def summary(samples: dict[str, list[float]], baseline: str) -> dict:
    medians = {name: statistics.median(values) for name, values in samples.items()}
    return {
        "medians_s": medians,
        "samples_s": samples,
        "ratio_vs_" + baseline: {
            n: medians[n] / medians[baseline] for n in medians if n != baseline
        },
    }


def machine() -> dict:
    info = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


def save(name: str, data: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    data = {
        "benchmark": name,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        **data,
    }
    path.write_text(json.dumps(data, indent=2))
    print(json.dumps({k: v for k, v in data.items() if k != "samples_s"}, indent=2))
    return path
