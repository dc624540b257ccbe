"""The quickstart notebook's own training cell on a GPU (nccl): nbscale against raw torchrun.

    python benchmarks/bench_quickstart_gpu.py [--rounds 3] [--epochs 200]

The model cell and the ``%%train`` cell are read from examples/quickstart.ipynb
unchanged. ``nbscale``: the cell goes through ``nbscale.celljob`` (the call
``%%train --gpus-per-proc 1`` makes; the GPU machine has no Jupyter) and the
model comes back. ``torchrun``: the same cell text as a script, its inputs
loaded from a pickle, under ``torchrun --standalone``. Throughput is training
samples per second between the first and the last epoch's ``log_metric``
timestamps (epoch 0, the warm-up, excluded). Goal: >= 0.97x.
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
import types
from pathlib import Path

from harness import save

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"
DIGITS_FILE = os.environ.get("BENCH_DIGITS_FILE", "")  # for machines without scikit-learn


def notebook_cells() -> tuple[str, str]:
    nb = json.loads(NOTEBOOK.read_text())
    sources = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    model_cell = next(s for s in sources if s.startswith("class DigitsNet"))
    train_cell = next(s for s in sources if s.startswith("%%train"))
    return model_cell, train_cell.split("\n", 1)[1]


def digits():
    import numpy as np

    if DIGITS_FILE:
        d = np.load(DIGITS_FILE)
        return d["X_train"], d["y_train"], d["X_test"], d["y_test"]
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x, xt, y, yt = train_test_split(
        data.data / 16.0, data.target, test_size=0.25, random_state=0, stratify=data.target
    )
    return x, y, xt, yt


def samples_per_s(metrics: list[dict], n: int) -> float:
    times = sorted(m["time"] for m in metrics if m["name"] == "loss" and m.get("rank", 0) == 0)
    return (len(times) - 1) * n / (times[-1] - times[0])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument(
        "--cpu", action="store_true", help="gloo on the CPU (a smoke run of this script)"
    )
    args = parser.parse_args()
    import cloudpickle
    import torch
    from torch import nn

    from nbscale.celljob import prepare_cell
    from nbscale.runtime.jobdir import JobDir
    from nbscale.specs import Entry, JobSpec

    work = Path(tempfile.mkdtemp(prefix="nbscale-bench-qs-"))
    os.environ.update({"NBSCALE_HOME": str(work / "home"), "OMP_NUM_THREADS": "1"})
    os.chdir(work)
    model_cell, body = notebook_cells()
    main_module = types.ModuleType("__main__")  # as in a notebook: the class travels by value
    exec("import torch\nfrom torch import nn\n" + model_cell, main_module.__dict__)
    x, y, xt, yt = digits()
    ns = {
        "torch": torch,
        "nn": nn,
        "DigitsNet": main_module.DigitsNet,
        "epochs": args.epochs,
        "lr": 0.01,
        "X_train": torch.tensor(x, dtype=torch.float32),
        "y_train": torch.tensor(y),
    }
    n = len(ns["X_train"])
    inputs = work / "inputs.pkl"
    inputs.write_bytes(cloudpickle.dumps(ns))
    script = work / "quickstart_cell.py"
    script.write_text(
        f"import cloudpickle\nglobals().update(cloudpickle.loads(open({str(inputs)!r}, 'rb').read()))\n"
        + body
    )
    gpus = 0 if args.cpu else 1
    spec = JobSpec(
        entry=Entry("bundle", "x"), name="quickstart-gpu", procs_per_node=1, gpus_per_proc=gpus
    )

    def via_nbscale() -> tuple[float, float, float]:
        start = time.perf_counter()
        handle = prepare_cell(body, ns, spec, outputs=["model", "history"], line_offset=1).submit()
        out = handle.result(timeout=600)
        wall = time.perf_counter() - start
        model = out["model"].cpu().eval()
        with torch.no_grad():
            acc = (
                (model(torch.tensor(xt, dtype=torch.float32)).argmax(1) == torch.tensor(yt))
                .float()
                .mean()
                .item()
            )
        return wall, samples_per_s(handle.metrics(), n), acc

    def via_torchrun(i: int) -> tuple[float, float]:
        jobdir = JobDir(work / f"raw-{i}").make()
        env = {
            **os.environ,
            "NBSCALE_JOB_DIR": str(jobdir.path),
            "NBSCALE_DIST_BACKEND": "gloo" if args.cpu else "nccl",
            "NBSCALE_GPUS_PER_PROC": str(gpus),
        }
        start = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc-per-node",
                "1",
                str(script),
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - start
        if proc.returncode:
            raise RuntimeError(proc.stderr[-3000:])
        return wall, samples_per_s(jobdir.metrics(), n)

    rows: dict[str, list] = {
        "nbscale_wall_s": [],
        "torchrun_wall_s": [],
        "nbscale_samples_per_s": [],
        "torchrun_samples_per_s": [],
        "accuracy": [],
    }
    via_torchrun(-1)  # warm-up: CUDA and file caches
    for i in range(args.rounds):
        wall, sps = via_torchrun(i)
        rows["torchrun_wall_s"].append(wall)
        rows["torchrun_samples_per_s"].append(sps)
        wall, sps, acc = via_nbscale()
        rows["nbscale_wall_s"].append(wall)
        rows["nbscale_samples_per_s"].append(sps)
        rows["accuracy"].append(acc)
        print(
            f"  round {i + 1}: torchrun {rows['torchrun_samples_per_s'][-1]:.0f}/s, nbscale {sps:.0f}/s, "
            f"accuracy {acc:.4f}",
            file=sys.stderr,
        )
    med = {k: statistics.median(v) for k, v in rows.items()}
    save(
        "quickstart_cpu_smoke" if args.cpu else "quickstart_gpu",
        {
            "goal": "throughput nbscale/torchrun >= 0.97 (nccl, quickstart cell)",
            "epochs": args.epochs,
            "train_samples": n,
            "medians": med,
            "samples": rows,
            "throughput_ratio": med["nbscale_samples_per_s"] / med["torchrun_samples_per_s"],
            "wall_ratio": med["nbscale_wall_s"] / med["torchrun_wall_s"],
        },
    )


if __name__ == "__main__":
    main()
