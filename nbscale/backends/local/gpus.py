"""Which GPUs this machine has and which of them running local jobs hold.

Detection asks ``nvidia-smi`` rather than importing torch, so the supervisor
starts in milliseconds. ``NBSCALE_GPUS`` (e.g. ``0,1``) overrides detection.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

from ...store import Store
from ...store.jobs import PENDING, RUNNING

_CACHE_S = 60.0
_cache: tuple[float, list[int]] | None = None


def machine_gpus() -> list[int]:
    """The GPU indices on this machine; asked of nvidia-smi at most once a minute per process."""
    global _cache
    override = os.environ.get("NBSCALE_GPUS")
    if override is not None:
        return [int(x) for x in override.split(",") if x.strip()]
    if _cache is None or time.monotonic() - _cache[0] > _CACHE_S:
        _cache = (time.monotonic(), _ask_nvidia_smi())
    return list(_cache[1])


def _ask_nvidia_smi() -> list[int]:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    return [int(line) for line in out.stdout.split() if line.strip().isdigit()]


def claim(store: Store, job_id: str, count: int) -> list[int] | None:
    """Take ``count`` free GPUs for ``job_id`` and mark it RUNNING, atomically; None when too few are free."""
    all_gpus = machine_gpus()
    with store.transaction() as conn:
        used: set[int] = set()
        for (info,) in conn.execute(
            "SELECT info FROM jobs WHERE status IN (?, ?) AND backend_type = 'local' AND id != ?",
            (PENDING, RUNNING, job_id),
        ):
            used.update(json.loads(info).get("gpus") or [])
        free = [g for g in all_gpus if g not in used]
        if len(free) < count:
            return None
        chosen = free[:count]
        conn.execute(
            "UPDATE jobs SET info = json_set(info, '$.gpus', json(?)) WHERE id = ?",
            (json.dumps(chosen), job_id),
        )
        return chosen
