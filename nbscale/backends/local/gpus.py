"""Which GPUs this machine has, which the user lets nbscale use, and who holds them.

Detection asks ``nvidia-smi`` rather than importing torch, so the supervisor
starts in milliseconds. ``NBSCALE_GPUS`` (e.g. ``0,1``) overrides detection.
A ``CUDA_VISIBLE_DEVICES`` the user set (indices or ``GPU-...`` UUIDs) limits
nbscale to those GPUs, as it limits every CUDA program.

Holders are local jobs (the ``gpus`` of their row, while PENDING or RUNNING)
and endpoint replicas (``gpu_claims``, while their process lives): a GPU is
given to one holder at a time. A replica that finds no free GPU runs on the CPU
rather than share a job's GPU.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from typing import Any

from ...store import Store
from ...store.jobs import PENDING, RUNNING
from .processes import alive

_CACHE_S = 60.0
_STARTING_S = 60.0  # a replica claim without a pid yet counts for this long
_cache: tuple[float, list[tuple[int, str]]] | None = None
# CUDA numbers GPUs fastest first unless told otherwise; nvidia-smi by PCI bus
ORDER = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def _ask_nvidia_smi() -> list[tuple[int, str]]:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=index,uuid", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    found = []
    for line in out.stdout.splitlines():
        index, _, uuid = (part.strip() for part in line.partition(","))
        if index.isdigit():
            found.append((int(index), uuid))
    return found


def _detected() -> list[tuple[int, str]]:
    global _cache
    if _cache is None or time.monotonic() - _cache[0] > _CACHE_S:
        _cache = (time.monotonic(), _ask_nvidia_smi())
    return list(_cache[1])


def visible(detected: list[tuple[int, str]], cuda_visible: str | None) -> list[int]:
    """The indices of ``detected`` that a ``CUDA_VISIBLE_DEVICES`` value allows, in its order.

    Like CUDA: unset means all; an empty value or ``-1`` means none; the list
    stops at the first entry that names no GPU.
    """
    if cuda_visible is None:
        return [index for index, _ in detected]
    by_uuid = {uuid: index for index, uuid in detected}
    indices = {index for index, _ in detected}
    out: list[int] = []
    for raw in cuda_visible.split(","):
        item = raw.strip()
        if item.isdigit() and int(item) in indices:
            chosen = int(item)
        elif item.startswith(("GPU-", "MIG-")):
            matches = [i for u, i in by_uuid.items() if u.startswith(item)]
            if len(matches) != 1:
                break
            chosen = matches[0]
        else:
            break
        if chosen in out:
            break
        out.append(chosen)
    return out


def machine_gpus() -> list[int]:
    """The GPU indices nbscale may use here (nvidia-smi at most once a minute per process)."""
    override = os.environ.get("NBSCALE_GPUS")
    if override is not None:
        detected = [(int(x), "") for x in override.split(",") if x.strip()]
    else:
        detected = _detected()
    return visible(detected, os.environ.get("CUDA_VISIBLE_DEVICES"))


def held(conn: Any, except_job: str | None = None, except_holder: str | None = None) -> set[int]:
    """GPUs held by active local jobs and by living endpoint replicas."""
    used: set[int] = set()
    for (info,) in conn.execute(
        "SELECT info FROM jobs WHERE status IN (?, ?) AND backend_type = 'local' AND id IS NOT ?",
        (PENDING, RUNNING, except_job),
    ):
        used.update(json.loads(info).get("gpus") or [])
    now = time.time()
    for holder, gpus, pid, created, since in conn.execute(
        "SELECT holder, gpus, pid, pid_created, since FROM gpu_claims"
    ):
        if holder == except_holder:
            continue
        if (pid is None and now - since < _STARTING_S) or (pid and alive(pid, created)):
            used.update(json.loads(gpus))
    return used


def pick(all_gpus: list[int], used: set[int], count: int) -> list[int] | None:
    free = [g for g in all_gpus if g not in used]
    return free[:count] if len(free) >= count else None


def claim(store: Store, job_id: str, count: int) -> list[int] | None:
    """Take ``count`` free GPUs for ``job_id``, atomically; None when too few are free."""
    all_gpus = machine_gpus()

    def body(conn: Any) -> list[int] | None:
        chosen = pick(all_gpus, held(conn, except_job=job_id), count)
        if chosen is not None:
            conn.execute(
                "UPDATE jobs SET info = json_set(info, '$.gpus', json(?)) WHERE id = ?",
                (json.dumps(chosen), job_id),
            )
        return chosen

    return store.write(body)


def replica_env(store: Store, holder: str) -> dict[str, str]:
    """Environment for an endpoint replica about to start: a free GPU of its own, or the
    CPU when none is free; nothing on a machine without GPUs. Bind its pid afterwards
    with :func:`bind_replica` (until then the claim holds for a minute)."""
    all_gpus = machine_gpus()
    if not all_gpus:
        return {}

    def body(conn: Any) -> list[int] | None:
        chosen = pick(all_gpus, held(conn, except_holder=holder), 1)
        if chosen is None:
            conn.execute("DELETE FROM gpu_claims WHERE holder = ?", (holder,))
        else:
            conn.execute(
                "INSERT OR REPLACE INTO gpu_claims (holder, gpus, pid, pid_created, since) "
                "VALUES (?, ?, NULL, NULL, ?)",
                (holder, json.dumps(chosen), time.time()),
            )
        return chosen

    chosen = store.write(body)
    if chosen is None:
        return {"CUDA_VISIBLE_DEVICES": "", "NBSCALE_DEVICE": "cpu"}
    return {"CUDA_VISIBLE_DEVICES": ",".join(map(str, chosen)), **ORDER}


def bind_replica(store: Store, holder: str, pid: int, created: float | None) -> None:
    store.execute(
        "UPDATE gpu_claims SET pid = ?, pid_created = ? WHERE holder = ?", (pid, created, holder)
    )


def release(store: Store, holder: str) -> None:
    store.execute("DELETE FROM gpu_claims WHERE holder = ?", (holder,))
