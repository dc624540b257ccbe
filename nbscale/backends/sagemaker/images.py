"""The stock SageMaker images and instance types (``images.json`` beside this file).

- ``accounts``: the AWS Deep Learning Containers registry account of each region (about
  30 regions use an account other than 763104351884);
- ``entries``: the PyTorch training images (``scope``: ``training``), each with its torch
  and Python versions, processors, tag and the regions it is not published in; a user's
  entry may give a whole ``uri`` instead (``{region}`` and ``{processor}`` are filled in);
- ``instances``: the GPUs of each GPU instance type, and whether it has EFA (``efa``:
  ``FI_PROVIDER=efa``; ``rdma``: ``FI_EFA_USE_DEVICE_RDMA=1`` and ``RDMAV_FORK_SAFE=1``,
  as the SageMaker training toolkit and SDK drivers set them);
- ``not_cuda``: instance families whose accelerators are not CUDA GPUs (refused).

``$NBSCALE_HOME/images/sagemaker.json`` extends every part (``nbscale.backends.images``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ...errors import SpecError
from .. import images

TABLE = Path(__file__).with_name("images.json")
PLATFORM = "sagemaker"


def table() -> dict[str, Any]:
    return images.merged(PLATFORM, TABLE, ("entries",))


@lru_cache(maxsize=1)
def _botocore():
    import botocore.session

    session = botocore.session.get_session()
    return session, session._get_internal_component("endpoint_resolver")


@lru_cache(maxsize=64)
def dns_suffix(region: str) -> str:
    """The registry's domain in ``region``'s partition (``amazonaws.com.cn`` in China),
    from botocore's own partition data."""
    session, resolver = _botocore()
    return resolver.get_partition_dns_suffix(session.get_partition_for_region(region))


@dataclass(frozen=True)
class Node:
    """What an instance type has: its GPUs and network fabric."""

    instance_type: str
    gpus: int
    efa: bool = False
    rdma: bool = False


def family(instance_type: str) -> str:
    parts = instance_type.split(".")
    return parts[1] if len(parts) >= 3 else ""


def node(instance_type: str, data: dict[str, Any] | None = None) -> Node:
    """The GPUs of an instance type; a family that is not CUDA, or a GPU family the table
    does not know, is refused with one message."""
    data = data or table()
    fam = family(instance_type)
    not_cuda = data.get("not_cuda") or {}
    if fam in not_cuda:
        raise SpecError(
            "instance_type",
            f"{instance_type} has {not_cuda[fam]} accelerators, which nbscale does not run "
            "jobs on yet (its stock images and launcher are CUDA's)",
            "pick a GPU instance (e.g. ml.g5.xlarge, ml.p4d.24xlarge) or a CPU one (ml.m5.xlarge)",
        )
    found = (data.get("instances") or {}).get(instance_type)
    if found is not None:
        return Node(
            instance_type,
            int(found.get("gpus") or 0),
            bool(found.get("efa")),
            bool(found.get("rdma")),
        )
    if fam[:1] in ("g", "p"):
        raise SpecError(
            "instance_type",
            f"{instance_type} is a GPU family, but nbscale's instance table does not know "
            "how many GPUs it has",
            'add it to $NBSCALE_HOME/images/sagemaker.json: {"instances": {"'
            + instance_type
            + '": {"gpus": N}}}',
        )
    return Node(instance_type, 0)


def candidates(scope: str, region: str) -> list[images.Candidate]:
    data = table()
    accounts = data.get("accounts") or {}
    out: list[images.Candidate] = []
    for entry in data.get("entries") or []:
        if entry.get("scope", "training") != scope:
            continue
        for processor in entry.get("processors") or ("cpu", "gpu"):
            if "uri" in entry:
                uri = str(entry["uri"]).format(region=region, processor=processor)
            else:
                if region not in accounts or region in (entry.get("missing_regions") or ()):
                    continue
                tag = str(entry["tag"]).format(processor=processor)
                uri = (
                    f"{accounts[region]}.dkr.ecr.{region}.{dns_suffix(region)}/"
                    f"{entry['repository']}:{tag}"
                )
            out.append(
                images.Candidate(
                    uri,
                    images.major_minor(str(entry["torch"])),
                    images.major_minor(str(entry["python"])),
                    processor,
                )
            )
    return out


def stock_image(
    scope: str, region: str, gpu: bool, setting: str, versions: images.Versions | None = None
) -> str:
    """The stock ``scope`` image (``training``: jobs and pipeline steps) for the kernel's
    versions in ``region``; else one ``SpecError`` naming the nearest and ``image``."""
    return images.choose(
        candidates(scope, region),
        versions or images.kernel_versions(),
        "gpu" if gpu else "cpu",
        f"SageMaker PyTorch {scope}",
        setting,
        PLATFORM,
        f" in {region}",
    )
