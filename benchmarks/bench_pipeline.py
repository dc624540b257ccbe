"""nbscale pipelines vs plain papermill running the same notebooks one after another.

    python benchmarks/bench_pipeline.py [--rounds 3]

Workload: the digits diamond of examples/pipeline (prepare -> train_a and
train_b -> compare). Both sides execute the *same* step notebooks (the ones
nbscale generates, with the same load/save cells), with the same kernel (a
``python3`` kernelspec pointing at this interpreter, via JUPYTER_PATH).

- papermill (the peer) lives in its own venv, benchmarks/.venvs/papermill,
  made here; it runs the four notebooks one after another with its CLI, one
  ``papermill`` command per notebook, as a shell script or Makefile would.
  The same with papermill's Python API in one process is reported too.
- nbscale runs ``nbscale pipeline run pipeline.yaml`` (CLI, fresh store and home: the
  first run, no kernel warm), then again unchanged (the re-run: every step a cache hit),
  then with ``--no-cache`` once the kernel kept warm between runs (``nbscale.pipelines.warm``)
  is ready: every step runs as in a first run, the first on that warm kernel. The time
  from the first run's end until that kernel was ready is reported too. The home's keeper
  is shut down at the end of each round, and no kernel may be left behind.
- per-step overhead: a step's wall time minus the time its own cells ran
  (papermill's per-cell timestamps in the executed notebook), i.e. kernel
  start/handover, papermill's notebook handling and, for nbscale, loading and
  saving the artifacts. Same definition on both sides.
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
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import save  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "pipeline" / "pipeline.yaml"
VENV = REPO / "benchmarks" / ".venvs" / "papermill"
PAPERMILL_VERSION = "2.7.0"


def make_venv() -> Path:
    py = VENV / "bin" / "python"
    if not (VENV / "bin" / "papermill").exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run(
            [str(py), "-m", "pip", "install", "-q", f"papermill=={PAPERMILL_VERSION}"], check=True
        )
    return VENV / "bin" / "papermill"


def kernel_env(root: Path) -> dict[str, str]:
    spec = root / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3 (benchmark)",
                "language": "python",
            }
        )
    )
    return {**os.environ, "JUPYTER_PATH": str(root / "jupyter")}


def peer_notebooks(root: Path) -> list[tuple[str, Path, dict]]:
    """The step notebooks nbscale would run, with their inputs and outputs under ``root``."""
    from nbscale.pipelines import load
    from nbscale.pipelines.stepbook import build, write

    pipeline = load(EXAMPLE)
    out = []
    for name in pipeline.order():
        step = pipeline.steps[name]
        inputs = {var: str(root / "peer-data" / producer) for var, producer in step.inputs.items()}
        nb = build(pipeline, step, inputs, str(root / "peer-data" / name))
        params = {
            **{p: pipeline.parameters[p] for p in step.uses_parameters},
            **step.fixed_parameters,
        }
        out.append((name, write(nb, root / "peer" / f"{name}.ipynb"), params))
    return out


def user_cell_seconds(notebook: Path) -> float:
    """Seconds the step's own cells ran (cells that came from the user's notebook)."""
    total = 0.0
    for cell in json.loads(notebook.read_text())["cells"]:
        meta = cell.get("metadata", {})
        pm = meta.get("papermill", {})
        if "nbscale" in meta and pm.get("start_time") and pm.get("end_time"):
            total += (
                datetime.fromisoformat(pm["end_time"]) - datetime.fromisoformat(pm["start_time"])
            ).total_seconds()
    return total


def run_peer_cli(papermill: Path, steps, env, root: Path) -> tuple[float, list[float]]:
    overheads = []
    start = time.perf_counter()
    for name, path, params in steps:
        args = [
            str(papermill),
            str(path),
            str(root / "peer" / f"{name}.out.ipynb"),
            "-k",
            "python3",
            "--cwd",
            str(EXAMPLE.parent),
            "--no-progress-bar",
        ]
        for key, value in params.items():
            args += ["-p", key, str(value)]
        t0 = time.perf_counter()
        subprocess.run(
            args, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        overheads.append(
            time.perf_counter() - t0 - user_cell_seconds(root / "peer" / f"{name}.out.ipynb")
        )
    return time.perf_counter() - start, overheads


PEER_API = """
import json, sys, time
import papermill
steps = json.loads(sys.argv[1])
start = time.perf_counter()
each = []
for name, path, out, params, cwd in steps:
    t0 = time.perf_counter()
    papermill.execute_notebook(path, out, parameters=params, kernel_name="python3", cwd=cwd, progress_bar=False)
    each.append(time.perf_counter() - t0)
print(json.dumps([time.perf_counter() - start, each]))
"""


def run_peer_api(steps, env, root: Path) -> tuple[float, list[float]]:
    data = [
        (n, str(p), str(root / "peer" / f"{n}.api.ipynb"), params, str(EXAMPLE.parent))
        for n, p, params in steps
    ]
    proc = subprocess.run(
        [str(VENV / "bin" / "python"), "-c", PEER_API, json.dumps(data)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    total, each = json.loads(proc.stdout.strip().splitlines()[-1])
    return total, [w - user_cell_seconds(Path(d[2])) for w, d in zip(each, data, strict=True)]


def run_nbscale(env: dict, home: Path, *extra: str) -> tuple[float, dict]:
    env = {**env, "NBSCALE_HOME": str(home)}
    start = time.perf_counter()
    wall_start = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "nbscale", "pipeline", "run", str(EXAMPLE), "--json", *extra],
        env=env,
        capture_output=True,
        text=True,
        cwd=str(EXAMPLE.parent),
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(
            f"nbscale pipeline run exited {proc.returncode}:\n{proc.stderr[-3000:]}\n"
            f"{proc.stdout[-3000:]}"
        )
    run = json.loads(proc.stdout)
    started = [s["started"] for s in run["steps"] if s.get("started") and not s["cached"]]
    # from the command's start to the first step's start: the process, the imports and the
    # DAG's preparation, which no step's overhead counts
    run["to_first_step_s"] = min(started) - wall_start if started else None
    return elapsed, run


def with_home(home: Path):
    """``nbscale.pipelines.warm`` of ``home`` (its registry reads NBSCALE_HOME)."""
    from nbscale.pipelines import warm

    os.environ["NBSCALE_HOME"] = str(home)
    return warm


def wait_warm(home: Path, timeout: float = 120.0) -> float:
    """Seconds until a kernel kept warm in ``home`` is ready."""
    warm = with_home(home)
    start = time.perf_counter()
    while not any(k.get("state") == "ready" for k in warm.kernels()):
        if time.perf_counter() - start > timeout:
            raise RuntimeError(f"no warm kernel in {home} after {timeout:g} s")
        time.sleep(0.05)
    return time.perf_counter() - start


def shut_pool(home: Path) -> None:
    """Stop the home's keepers; fails if any kernel of the pool is left running."""
    warm = with_home(home)
    pids = [k["pid"] for k in warm.kernels() if k.get("pid")]
    if not warm.shutdown(60):
        raise RuntimeError(f"the kernel pool of {home} did not shut down")
    import psutil

    left = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    if left:
        raise RuntimeError(f"kernels left running after the pool shut down: {left}")


def step_overheads(run: dict) -> dict[str, float]:
    return {
        s["name"]: s["ended"] - s["started"] - user_cell_seconds(Path(s["notebook"]))
        for s in run["steps"]
        if not s["cached"]
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    papermill = make_venv()
    samples: dict[str, list[float]] = {
        "papermill_cli": [],
        "papermill_api": [],
        "nbscale_first": [],
        "nbscale_rerun": [],
        "nbscale_first_warm_kernel": [],
    }
    peer_overhead: list[float] = []
    peer_api_overhead: list[float] = []
    ours_overhead: list[dict[str, float]] = []
    warm_overhead: list[dict[str, float]] = []
    to_first: dict[str, list[float]] = {"cold": [], "warm": []}
    warm_ready_after: list[float] = []
    loads: list[tuple[float, float, float]] = []
    for i in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="nbscale-bench-") as tmp:
            root = Path(tmp)
            env = kernel_env(root)
            steps = peer_notebooks(root)
            wall, overheads = run_peer_cli(papermill, steps, env, root)
            samples["papermill_cli"].append(wall)
            peer_overhead += overheads
            wall, overheads = run_peer_api(steps, env, root)
            samples["papermill_api"].append(wall)
            peer_api_overhead += overheads
            first, run = run_nbscale(env, root / "home")
            assert run["status"] == "SUCCEEDED", run
            samples["nbscale_first"].append(first)
            ours_overhead.append(step_overheads(run))
            to_first["cold"].append(run["to_first_step_s"])
            first_ended = time.perf_counter()
            again, rerun = run_nbscale(env, root / "home")
            assert all(s["cached"] for s in rerun["steps"]), rerun
            samples["nbscale_rerun"].append(again)
            wait_warm(root / "home")
            warm_ready_after.append(time.perf_counter() - first_ended)
            hot, hot_run = run_nbscale(env, root / "home", "--no-cache")
            assert hot_run["status"] == "SUCCEEDED", hot_run
            samples["nbscale_first_warm_kernel"].append(hot)
            warm_overhead.append(step_overheads(hot_run))
            to_first["warm"].append(hot_run["to_first_step_s"])
            shut_pool(root / "home")
        loads.append(os.getloadavg())
        print(
            f"round {i + 1}: "
            + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in samples.items())
            + f", first step overhead {ours_overhead[-1].get('prepare', float('nan')):.2f}s"
            + f" (warm kernel {warm_overhead[-1].get('prepare', float('nan')):.2f}s)"
            + f", load {loads[-1][0]:.2f}",
            file=sys.stderr,
        )
    med = {k: statistics.median(v) for k, v in samples.items()}
    per_step = [v for r in ours_overhead for v in r.values()]
    after_first = [v for r in ours_overhead for k, v in r.items() if k != "prepare"]
    first_step = [r["prepare"] for r in ours_overhead if "prepare" in r]
    warm_first = [r["prepare"] for r in warm_overhead if "prepare" in r]
    warm_after = [v for r in warm_overhead for k, v in r.items() if k != "prepare"]

    def spread(values: list[float]) -> dict[str, float]:
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    result = {
        "workload": "examples/pipeline/pipeline.yaml (digits diamond, 4 notebooks)",
        "rounds": args.rounds,
        "papermill_version": PAPERMILL_VERSION,
        "medians_s": med,
        "samples_s": samples,
        "ratio_first_run_vs_papermill_cli": med["nbscale_first"] / med["papermill_cli"],
        "ratio_first_run_vs_papermill_api": med["nbscale_first"] / med["papermill_api"],
        "ratio_first_run_warm_kernel_vs_papermill_cli": med["nbscale_first_warm_kernel"]
        / med["papermill_cli"],
        "ratio_first_run_warm_kernel_vs_papermill_api": med["nbscale_first_warm_kernel"]
        / med["papermill_api"],
        "ratio_rerun_vs_papermill_cli": med["nbscale_rerun"] / med["papermill_cli"],
        "ratio_rerun_vs_papermill_api": med["nbscale_rerun"] / med["papermill_api"],
        "per_step_overhead_s": {
            "papermill_cli_median": statistics.median(peer_overhead),
            "papermill_api_median": statistics.median(peer_api_overhead),
            "nbscale_median_all_steps": statistics.median(per_step),
            "nbscale_median_after_first_step": statistics.median(after_first),
            "nbscale_first_step": {
                "median": statistics.median(first_step),
                "min": min(first_step),
                "max": max(first_step),
            },
            "nbscale_by_step": ours_overhead,
            "warm_kernel_first_step": spread(warm_first),
            "warm_kernel_median_after_first_step": statistics.median(warm_after),
            "warm_kernel_by_step": warm_overhead,
        },
        "command_start_to_first_step_s": {k: spread(v) for k, v in to_first.items()},
        "warm_kernel_ready_after_first_run_s": spread(warm_ready_after),
        "goals": {"first_run_ratio": 0.5, "rerun_ratio": 0.05, "per_step_overhead_s": 0.3},
        "load_average": os.getloadavg(),
        "load_average_by_round": loads,
    }
    save("pipeline", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
