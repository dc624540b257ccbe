"""Inside a container, before a node starts its ranks: is this node what the job asked for?

``check_node`` runs once per node in the launcher, before torchrun:

- a cell bundle's recorded Python and torch versions are compared with this container's
  (``cell.check_versions``): a mismatch stops the node with one line naming both sides,
  before anything is unpickled;
- ``torch.cuda.device_count()`` is the truth about GPUs: fewer than the job's
  ``processes x gpus_per_proc`` stops the node naming the two numbers; more logs a
  warning (they are paid for and idle);
- on SageMaker, ``NCCL_SOCKET_IFNAME`` is the host's network interface from
  ``resourceconfig.json`` (``network_interface_name``), as the SageMaker training toolkit
  sets it (nbscale replaces its entry point); ``FI_PROVIDER``,
  ``FI_EFA_USE_DEVICE_RDMA`` and ``RDMAV_FORK_SAFE`` come in the training job's
  Environment for EFA instance types. A value already in the environment (the user's
  ``--env``) is kept.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

from ..words import count

SM_RESOURCE_CONFIG = "/opt/ml/input/config/resourceconfig.json"


class HardwareError(Exception):
    """The node cannot run the job as asked (one line: what it has, what was asked)."""


def cuda_devices() -> int:
    """The CUDA devices this process sees (``torch.cuda.device_count()``)."""
    import torch

    return int(torch.cuda.device_count())


def _may_have_gpus() -> bool:
    # importing torch costs a second: skip it where no NVIDIA device node exists at all
    return any(Path("/dev").glob("nvidia[0-9]*")) or bool(os.environ.get("NVIDIA_VISIBLE_DEVICES"))


def check_gpus(
    procs: int, gpus_per_proc: int, device_count: Callable[[], int] | None = None, out=None
) -> int:
    """Refuse a node with fewer GPUs than ``procs x gpus_per_proc``; warn about more.
    Returns the number of GPUs seen."""
    wanted = int(procs) * int(gpus_per_proc)
    if device_count is None:
        if not wanted and not _may_have_gpus():
            return 0
        device_count = cuda_devices
    seen = int(device_count())
    if seen < wanted:
        raise HardwareError(
            f"this node has {count(seen, 'GPU')} but the job asks for {wanted} "
            f"({count(procs, 'process')} x {count(gpus_per_proc, 'GPU')}); pick an instance "
            "or node type "
            "with that many GPUs, or ask for fewer processes"
        )
    if seen > wanted:
        print(
            f"nbscale: warning: this node has {count(seen, 'GPU')} and the job uses {wanted} "
            f"({count(procs, 'process')} x {count(gpus_per_proc, 'GPU')}); the rest stay idle",
            file=out or sys.stderr,
            flush=True,
        )
    return seen


def sagemaker_network(
    env: MutableMapping[str, str] | None = None, resource_config: str | None = None
) -> dict[str, str]:
    """Set ``NCCL_SOCKET_IFNAME`` from the host's ``resourceconfig.json`` (unless set);
    return what was set."""
    env = os.environ if env is None else env
    path = resource_config or env.get("NBSCALE_SM_RESOURCE_CONFIG") or SM_RESOURCE_CONFIG
    try:
        conf = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    name = conf.get("network_interface_name")
    if not name or "NCCL_SOCKET_IFNAME" in env:
        return {}
    env["NCCL_SOCKET_IFNAME"] = str(name)
    return {"NCCL_SOCKET_IFNAME": str(name)}


def signed_manifest(path: str) -> dict[str, Any]:
    """A bundle's manifest, its signature checked, without reading its parts (the launcher
    verified every part a moment before; a cell's inputs may be gigabytes)."""
    import hmac
    import zipfile

    from .. import bundle
    from ..errors import SignatureError

    with zipfile.ZipFile(path) as zf:
        body, signature = zf.read("manifest.json"), zf.read("manifest.sig").decode()
    if not hmac.compare_digest(bundle.sign(body, bundle.load_key(create=False)), signature):
        raise SignatureError(f"{path}: signature does not match; refusing to load it")
    return json.loads(body)


def check_node(
    spec: dict[str, Any],
    layout: dict[str, Any],
    device_count: Callable[[], int] | None = None,
    env: MutableMapping[str, str] | None = None,
) -> None:
    """Everything a node checks before it starts its ranks (see the module's doc)."""
    entry = spec.get("entry") or {}
    if entry.get("kind") == "bundle" and entry.get("target"):
        from .cell import check_versions

        check_versions(signed_manifest(entry["target"]))
    check_gpus(int(layout.get("nproc") or 1), int(spec.get("gpus_per_proc") or 0), device_count)
    if layout.get("platform") == "sagemaker":
        sagemaker_network(env)
