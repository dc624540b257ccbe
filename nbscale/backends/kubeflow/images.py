"""The stock images and node types of Kubeflow jobs (``images.json`` beside this file).

- ``entries``: pytorch/pytorch images, each with its torch and Python versions and the
  processors it serves (a CUDA build runs on a CPU node too);
- ``instances``: the GPUs of node instance types (``spec.instance_type`` is the
  ``node.kubernetes.io/instance-type`` label the pods are pinned to), so a job on such a
  node asks for all of its GPUs and runs one process per ``gpus_per_proc`` of them;
- ``not_cuda``: instance families whose accelerators are not CUDA GPUs (refused).

``$NBSCALE_HOME/images/kubeflow.json`` extends every part (``nbscale.backends.images``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import SpecError
from .. import images

TABLE = Path(__file__).with_name("images.json")
PLATFORM = "kubeflow"


def table() -> dict[str, Any]:
    return images.merged(PLATFORM, TABLE, ("entries",))


def node_gpus(instance_type: str | None, data: dict[str, Any] | None = None) -> int | None:
    """The GPUs of a node instance type the table knows; None for one it does not (the
    job then asks for ``procs_per_node x gpus_per_proc``). A family that is not CUDA
    (Trainium, Inferentia) is refused."""
    if not instance_type:
        return None
    data = data or table()
    family = instance_type.split(".")[0]
    not_cuda = data.get("not_cuda") or {}
    if family in not_cuda:
        raise SpecError(
            "instance_type",
            f"{instance_type} has {not_cuda[family]} accelerators, which nbscale does not run "
            "jobs on yet (its stock images and launcher are CUDA's)",
            "pick a node type with NVIDIA GPUs (e.g. g5.12xlarge) or a CPU one",
        )
    found = (data.get("instances") or {}).get(instance_type)
    return None if found is None else int(found.get("gpus") or 0)


def stock_image(gpu: bool, backend: str, versions: images.Versions | None = None) -> str:
    """The pytorch/pytorch image of the kernel's torch and Python; else one ``SpecError``
    naming the nearest and the ``image`` setting."""
    candidates = [
        images.Candidate(
            str(entry["image"]),
            images.major_minor(str(entry["torch"])),
            images.major_minor(str(entry["python"])),
            processor,
        )
        for entry in table().get("entries") or []
        for processor in entry.get("processors") or ("cpu", "gpu")
    ]
    return images.choose(
        candidates,
        versions or images.kernel_versions(),
        "gpu" if gpu else "cpu",
        "pytorch/pytorch",
        f'image = "..." in [backends.{backend}] (or --image)',
        PLATFORM,
    )
