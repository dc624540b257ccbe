"""R1: a worker killed with SIGKILL mid-training; torchrun restarts the group and the
``%%train`` cell resumes from its last checkpoint to the same result as an uninterrupted run."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from nbscale import checkpoint as ckpt
from nbscale.backends.local.processes import job_processes
from nbscale.store import get_store
from nbscale.store.jobs import RUNNING, SUCCEEDED, get_job, list_jobs
from tests.support import wait_for

pytestmark = pytest.mark.timeout(300)

SETUP = """
import time
import torch
import nbscale.checkpoint as ckpt
from nbscale import distributed
from torch.nn.parallel import DistributedDataParallel as DDP

torch.manual_seed(0)
X = torch.randn(256, 8)
y = X @ torch.randn(8, 1) + 0.1 * torch.randn(256, 1)
STEPS, PAUSE = 30, 0.2
"""

CELL = """
%%train --procs-per-node 2 --max-restarts 1 --outputs weights,losses,resumed_from
import torch.distributed as dist
distributed.init()
rank = dist.get_rank()
torch.manual_seed(1 + rank)          # each rank draws its own batches: per-rank RNG state matters
model = torch.nn.Linear(8, 1)
ddp = DDP(model)                     # rank 0's initial weights everywhere
opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
state = ckpt.load(model=ddp, optimizer=opt)
start = state.step + 1 if state else 0
resumed_from = state.step if state else None
losses = list(state.extra["losses"]) if state else []
for step in range(start, STEPS):
    idx = torch.randint(0, 256, (32,))
    loss = ((ddp(X[idx]) - y[idx]) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(loss.item())
    ckpt.save(step, model=ddp, optimizer=opt, extra={"losses": losses})
    time.sleep(PAUSE)
weights = {k: v.clone() for k, v in model.state_dict().items()}
"""


def _rank_worker(job_id: str, rank: int):
    for proc in job_processes(job_id):
        try:
            env, cmd = proc.environ(), " ".join(proc.cmdline())
        except Exception:  # noqa: BLE001 - a process that just ended
            continue
        if env.get("RANK") == str(rank) and "nbscale.runtime.worker" in cmd:
            return proc
    return None


def test_a_killed_worker_restarts_the_group_and_the_cell_resumes_to_the_same_result(kernel):
    k = kernel()
    k.ok(SETUP)
    k.ok(CELL, timeout=240)
    k.ok("ref_weights, ref_losses, ref_resumed = weights, losses, resumed_from")
    assert k.ok("print(ref_resumed, len(ref_losses))").text.split() == ["None", "30"]

    k.start(CELL)
    store = get_store()

    def running_job():
        jobs = [j for j in list_jobs(store)[0] if j.status == RUNNING]
        return jobs[0] if jobs else None

    record = wait_for(running_job, timeout=120, what="the second job running")
    folder = Path(record.info["job_dir"]) / "checkpoints"
    wait_for(lambda: (ckpt.latest(folder) or (-1, None))[0] >= 8, timeout=120, what="checkpoint 8")
    victim = wait_for(lambda: _rank_worker(record.id, 1), what="rank 1's worker")
    os.kill(victim.pid, signal.SIGKILL)

    reply = k.kc.get_shell_msg(timeout=240)
    assert reply["content"]["status"] == "ok", reply["content"]
    final = get_job(store, record.id)
    assert final.status == SUCCEEDED and final.restarts == 1
    wait_for(lambda: job_processes(record.id) == [], 30, what="every process of the job ended")

    figures = k.ok("""
        print(resumed_from, max(float((weights[n] - ref_weights[n]).abs().max()) for n in weights))
        """).text
    print(f"R1: resumed from step, max weight difference to the uninterrupted run: {figures}")
    out = k.ok("""
        import torch
        print(resumed_from >= 8, len(losses))
        print(all(torch.allclose(weights[n], ref_weights[n], atol=1e-6) for n in weights))
        print(max(abs(a - b) for a, b in zip(losses, ref_losses)) < 1e-6)
        """).text.split()
    assert out == ["True", "30", "True", "True"], out
    table = k.ok("%jobs").text
    row = next(line for line in table.splitlines() if record.id in line)
    assert "restarts" in table and " 1 " in row, table
