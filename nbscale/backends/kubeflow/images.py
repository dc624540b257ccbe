"""The stock images and node types of Kubeflow jobs (``images.json`` beside this file).

- ``entries``: pytorch/pytorch images, each with its torch and Python versions and the
  processors it serves (a CUDA build runs on a CPU node too);
- ``instances``: the GPUs of node instance types (``spec.instance_type`` is the
  ``node.kubernetes.io/instance-type`` label the pods are pinned to), so a job on such a
  node asks for all of its GPUs and runs one process per ``gpus_per_proc`` of them;
- ``not_cuda``: instance families whose accelerators are not CUDA GPUs (refused);
- ``trainer_runtimes``: the image each Kubeflow Trainer release's ``torch-distributed``
  runtime pins; its CUDA caps the stock image's (``cuda_cap``), so a v2.2 cluster set up
  for CUDA 12.8 is not sent a CUDA 13 image that needs driver 580.

nbscale's own image (``docker/Dockerfile``, every role: training runtime, KServe
predictor, KFP step) is named by nbscale's version: ``runtime_image()``.

``$NBSCALE_HOME/images/kubeflow.json`` extends every part (``nbscale.backends.images``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ...errors import SpecError
from ...version import __version__
from .. import images

TABLE = Path(__file__).with_name("images.json")
PLATFORM = "kubeflow"
RUNTIME_REPOSITORY = "nbscale/runtime"
_CUDA_TAG = re.compile(r"[-:]cuda(\d+)\.(\d+)")


def runtime_image(repository: str = RUNTIME_REPOSITORY) -> str:
    """nbscale's image for every role, tagged with this nbscale's version."""
    return f"{repository}:{__version__}"


def _cuda_key(value: str) -> tuple[int, int]:
    major, _, minor = str(value).partition(".")
    return int(major), int(minor or 0)


def image_cuda(image: str) -> str | None:
    """The CUDA of a pytorch/pytorch-style tag (``...-cuda12.8-...``); None when it has none."""
    found = _CUDA_TAG.search(image or "")
    return f"{found.group(1)}.{found.group(2)}" if found else None


def cuda_cap(
    release: str | None = None, runtime: dict[str, Any] | None = None, data: dict | None = None
) -> str | None:
    """The newest CUDA a cluster's Trainer runtime is set up for: the CUDA of the image the
    runtime object itself pins (a ClusterTrainingRuntime as read from the cluster), else
    the table's for a Trainer ``release`` ("v2.2", "v2.3", or "v2.2.1"); None: no cap."""
    if runtime is not None:
        for job in ((runtime.get("spec") or {}).get("template") or {}).get("spec", {}).get(
            "replicatedJobs"
        ) or []:
            pod = (((job.get("template") or {}).get("spec") or {}).get("template") or {}).get(
                "spec"
            ) or {}
            for container in pod.get("containers") or []:
                cuda = image_cuda(str(container.get("image") or ""))
                if cuda:
                    return cuda
    if release:
        minor = ".".join(release.lstrip("v").split(".")[:2])
        entry = ((data or table()).get("trainer_runtimes") or {}).get(f"v{minor}")
        if isinstance(entry, dict) and entry.get("cuda"):
            return str(entry["cuda"])
    return None


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


def stock_image(
    gpu: bool,
    backend: str,
    versions: images.Versions | None = None,
    cuda_max: str | None = None,
) -> str:
    """The pytorch/pytorch image of the kernel's torch and Python, with no newer CUDA than
    ``cuda_max`` (``cuda_cap``: the cluster's Trainer runtime's); else one ``SpecError``
    naming the nearest and the ``image`` setting."""
    entries = [
        entry
        for entry in table().get("entries") or []
        if cuda_max is None
        or not entry.get("cuda")
        or _cuda_key(entry["cuda"]) <= _cuda_key(cuda_max)
    ]
    candidates = [
        images.Candidate(
            str(entry["image"]),
            images.major_minor(str(entry["torch"])),
            images.major_minor(str(entry["python"])),
            processor,
        )
        for entry in entries
        for processor in entry.get("processors") or ("cpu", "gpu")
    ]
    return images.choose(
        candidates,
        versions or images.kernel_versions(),
        "gpu" if gpu else "cpu",
        "pytorch/pytorch",
        f'image = "..." in [backends.{backend}] (or --image)',
        PLATFORM,
        where=f" up to CUDA {cuda_max} (the cluster's Trainer runtime's)" if cuda_max else "",
    )
