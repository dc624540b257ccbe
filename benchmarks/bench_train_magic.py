"""``%%train`` of a fixed 2-process DDP cell against raw ``torchrun`` of the same code as a script.

    python benchmarks/bench_train_magic.py [--rounds 5] [--gpu] [--no-kernel]

Side by side in one run, interleaved round by round:

- ``train_magic``: the cell sent to a real IPython kernel (jupyter_client) as
  ``%%train --procs-per-node N --outputs final_loss``; wall time from sending
  the cell to its reply (capture, signing, submit, torchrun, results back).
- ``torchrun``: ``python -m torch.distributed.run --standalone`` of a script
  whose text is the same cell; wall time of the subprocess.

Then ``--async``: time from sending the cell until control returns (the job
runs on; each is waited for before the next), measured by the client and
inside the kernel. Goals: median wall ratio <= 1.10, async return <= 0.2 s.

``--gpu``: nccl, one GPU per rank, and the training throughput (steps/s, from
the job's own log) of both launchers; goal >= 0.97x. ``--no-kernel`` drives
the engine call ``%%train`` makes (``nbscale.celljob``) instead of a kernel,
for machines without Jupyter.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from bench_run_vs_torchrun import phase_breakdown, phase_times, summarize_phases
from harness import compare, save, summary

# the same text runs as the cell and as the script: under %%train the process
# group exists already and the first lines do nothing
CELL = textwrap.dedent("""\
    import os
    import time
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel

    gpu = os.environ.get("BENCH_GPU") == "1"
    local_rank = int(os.environ["LOCAL_RANK"])
    device = torch.device("cuda", local_rank) if gpu else torch.device("cpu")
    if gpu:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if gpu else "gloo")
    torch.manual_seed(0)
    width = 1024 if gpu else 256
    model = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10)).to(device)
    ddp = DistributedDataParallel(model, device_ids=[local_rank] if gpu else None)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
    x = torch.randn(256, width, device=device)
    y = torch.randint(0, 10, (256,), device=device)
    steps = int(os.environ.get("BENCH_STEPS", "300"))
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(ddp(x), y)
        loss.backward()
        opt.step()
    if gpu:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    final_loss = float(loss)
    if dist.get_rank() == 0:
        print(f"steps/s {steps / elapsed:.1f} final loss {final_loss:.4f}", flush=True)
    """)
_STEPS_RE = re.compile(r"steps/s ([0-9.]+)")


class KernelDriver:
    """Cells through a real kernel, timed from the client."""

    def __init__(self, cwd: str, env: dict):
        from jupyter_client.manager import KernelManager

        self.km = KernelManager(kernel_name="python3")
        # NBSCALE_PHASES=1: the kernel (capture, bundle) and the job's processes write when
        # they reached each phase into the job folder (nbscale.runtime.phases)
        self.km.start_kernel(
            cwd=cwd, env={**env, "NBSCALE_PROGRESS": "text", "NBSCALE_PHASES": "1"}
        )
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=120)
        self.execute("%load_ext nbscale\nimport nbscale, time")

    def execute(self, code: str) -> tuple[float, str]:
        out: list[str] = []

        def hook(msg):
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            elif msg["msg_type"] in ("execute_result", "display_data"):
                out.append(msg["content"]["data"].get("text/plain", ""))
            elif msg["msg_type"] == "error":
                out.append("\n".join(msg["content"]["traceback"]))

        self.sent = time.time()
        start = time.perf_counter()
        reply = self.kc.execute_interactive(code, output_hook=hook, timeout=600)
        elapsed = time.perf_counter() - start
        self.replied = time.time()
        text = "".join(out)
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"cell failed:\n{text[-3000:]}")
        return elapsed, text

    def train(self, line: str) -> tuple[float, str]:
        return self.execute(f"%%train {line}\n{CELL}")

    def async_return(self, line: str) -> tuple[float, float]:
        client, _ = self.execute(f"%%train --async {line}\n{CELL}")
        self.execute("_.wait()")  # one job at a time: 2 cores are shared
        # in the kernel: the magic call alone, without the messaging
        _, text = self.execute(
            "_t0 = time.perf_counter()\n"
            f"_j = get_ipython().run_cell_magic('train', '--async {line}', {CELL!r})\n"
            "print(time.perf_counter() - _t0)"
        )
        inside = float(text.strip().splitlines()[-1])
        self.execute("_j.wait()")
        return client, inside

    def logs_of_last(self) -> str:
        return self.execute("print(nbscale.jobs(limit=1)[0].logs(0))")[1]

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


class EngineDriver:
    """The engine call %%train makes, in this process (no Jupyter needed)."""

    def __init__(self, cwd: str, env: dict):
        os.environ.update({**env, "NBSCALE_PHASES": "1"})
        os.chdir(cwd)

    def _submit(self, line: str):
        from nbscale.celljob import prepare_cell
        from nbscale.specs import Entry, JobSpec

        procs = int(re.search(r"--procs-per-node (\d+)", line).group(1))
        gpus = 1 if "--gpus-per-proc 1" in line else 0
        spec = JobSpec(
            entry=Entry("bundle", "x"), name="bench-cell", procs_per_node=procs, gpus_per_proc=gpus
        )
        return prepare_cell(CELL, {}, spec, outputs=["final_loss"], line_offset=1).submit()

    def train(self, line: str) -> tuple[float, str]:
        self.sent = time.time()
        start = time.perf_counter()
        handle = self._submit(line)
        handle.result()
        elapsed = time.perf_counter() - start
        self.replied = time.time()
        self._last = handle
        return elapsed, ""

    def async_return(self, line: str) -> tuple[float, float]:
        start = time.perf_counter()
        handle = self._submit(line)
        elapsed = time.perf_counter() - start
        handle.wait()
        return elapsed, elapsed

    def logs_of_last(self) -> str:
        return self._last.logs(0)

    def close(self) -> None:
        pass


def run_torchrun(script: str, procs: int, env: dict) -> tuple[float, str]:
    import subprocess

    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(procs),
            script,
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun failed:\n{proc.stderr[-3000:]}")
    return elapsed, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--async-rounds", type=int, default=5)
    parser.add_argument("--gpu", action="store_true", help="nccl, one GPU per rank")
    parser.add_argument("--procs", type=int, help="ranks (default 2; with --gpu one per GPU)")
    parser.add_argument(
        "--no-kernel", action="store_true", help="drive nbscale.celljob instead of a kernel"
    )
    args = parser.parse_args()
    procs = args.procs or 2
    if args.gpu and not args.procs:
        import torch

        procs = torch.cuda.device_count()
    work = tempfile.mkdtemp(prefix="nbscale-bench-train-")
    env = {**os.environ, "NBSCALE_HOME": str(Path(work) / "home"), "OMP_NUM_THREADS": "1"}
    if args.gpu:
        env["BENCH_GPU"] = "1"
    script = Path(work) / "cell_as_script.py"
    script.write_text(CELL)
    line = f"--procs-per-node {procs} --outputs final_loss" + (
        " --gpus-per-proc 1" if args.gpu else ""
    )
    load_before = os.getloadavg()
    driver = (EngineDriver if args.no_kernel else KernelDriver)(work, env)
    throughput: dict[str, list[float]] = {"train_magic": [], "torchrun": []}
    breakdowns: list[dict[str, float]] = []

    def magic() -> float:
        elapsed, _ = driver.train(line)
        sent, replied = driver.sent, driver.replied
        throughput["train_magic"].append(float(_STEPS_RE.search(driver.logs_of_last()).group(1)))
        job_dir = max(
            (Path(env["NBSCALE_HOME"]) / "jobs").iterdir(), key=lambda p: p.stat().st_mtime
        )
        breakdowns.append(phase_breakdown(phase_times(job_dir, sent, replied)))
        return elapsed

    def raw() -> float:
        elapsed, out = run_torchrun(str(script), procs, env)
        throughput["torchrun"].append(float(_STEPS_RE.search(out).group(1)))
        return elapsed

    try:
        samples = compare({"torchrun": raw, "train_magic": magic}, rounds=args.rounds)
        for values in throughput.values():
            del values[: -args.rounds]  # the warm-up round is not counted
        del breakdowns[: -args.rounds]
        load_after_sync = os.getloadavg()
        async_client, async_inside = [], []
        for i in range(args.async_rounds):
            client, inside = driver.async_return(line)
            async_client.append(client)
            async_inside.append(inside)
            print(
                f"  async {i + 1}/{args.async_rounds}: {client:.3f}s (in kernel {inside:.3f}s)",
                file=sys.stderr,
            )
    finally:
        driver.close()
    result = summary(samples, baseline="torchrun")
    result["phases_s"] = summarize_phases(breakdowns)
    result["phases_by_round_s"] = breakdowns
    result["phases_note"] = (
        "spans of the %%train cell from the client's send ('start') to its reply ('exit'); "
        "NBSCALE_PHASES=1 in the kernel and the job"
    )
    result["load_average_1_5_15"] = {"before": load_before, "after_sync_rounds": load_after_sync}
    steps = {name: statistics.median(v) for name, v in throughput.items()}
    result.update(
        {
            "goal": "train_magic/torchrun median wall ratio <= 1.10; --async return <= 0.2 s"
            + ("; throughput >= 0.97x" if args.gpu else ""),
            "device": "gpu" if args.gpu else "cpu",
            "ranks": procs,
            "driver": "engine (nbscale.celljob)" if args.no_kernel else "jupyter kernel",
            "async_return_s": {
                "median_client": statistics.median(async_client),
                "median_in_kernel": statistics.median(async_inside),
                "samples_client": async_client,
                "samples_in_kernel": async_inside,
            },
            "steps_per_s": {
                "medians": steps,
                "samples": throughput,
                "ratio_train_magic_vs_torchrun": steps["train_magic"] / steps["torchrun"],
            },
        }
    )
    save("train_magic" + ("_gpu" if args.gpu else ""), result)


if __name__ == "__main__":
    main()
