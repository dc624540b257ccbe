"""Helpers for code running inside a job: the right process-group backend and device."""

from __future__ import annotations

import os


def backend() -> str:
    """``nccl`` when the job was given GPUs, else ``gloo``."""
    return os.environ.get("NBSCALE_DIST_BACKEND") or "gloo"


def init():
    """Initialise torch.distributed from the torchrun environment; returns the device to use."""
    import torch
    import torch.distributed as dist

    name = backend()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if name == "nccl":
        gpp = max(1, int(os.environ.get("NBSCALE_GPUS_PER_PROC", "1")))
        device = torch.device("cuda", local_rank * gpp)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend=name, device_id=device if name == "nccl" else None)
    return device
