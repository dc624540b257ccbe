"""A fixed 2-process DDP workload, identical under nbscale and raw torchrun.

Plain torch only (no nbscale import), so both launchers run exactly the same code.
Uses nccl and one GPU per rank when BENCH_GPU=1, gloo on the CPU otherwise.
"""

import os
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

STEPS = int(os.environ.get("BENCH_STEPS", "300"))


def main() -> None:
    gpu = os.environ.get("BENCH_GPU") == "1"
    local_rank = int(os.environ["LOCAL_RANK"])
    device = torch.device("cuda", local_rank) if gpu else torch.device("cpu")
    if gpu:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if gpu else "gloo")
    torch.manual_seed(0)
    width = 1024 if gpu else 256
    model = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10)).to(device)
    ddp = DistributedDataParallel(model, device_ids=[local_rank] if gpu else None)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
    x = torch.randn(256, width, device=device)
    y = torch.randint(0, 10, (256,), device=device)
    start = time.perf_counter()
    for _ in range(STEPS):
        opt.zero_grad()
        nn.functional.cross_entropy(ddp(x), y).backward()
        opt.step()
    if gpu:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    if dist.get_rank() == 0:
        print(f"steps/s {STEPS / elapsed:.1f}", flush=True)
        out = os.environ.get("BENCH_THROUGHPUT_FILE")
        if out:
            with open(out, "a") as fh:
                fh.write(f"{STEPS / elapsed}\n")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
