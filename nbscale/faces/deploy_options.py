"""How big an endpoint is: the options ``nbscale deploy`` and ``%deploy`` share.

``--serverless`` (with ``--memory-mb`` and ``--max-concurrency``), ``--instance-type`` and
``--instances`` reach the endpoint backend as ``DeployRequest.options``; a backend that does
not declare one of them in its ``options`` refuses it with one message, before anything is
made (``EndpointBackend.validate``)."""

from __future__ import annotations

import argparse
from typing import Any


def add_sizing_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("size (backends that have it, e.g. SageMaker)")
    g.add_argument(
        "--serverless",
        action="store_true",
        default=None,
        help="no instances: capacity per request, nothing billed while idle",
    )
    g.add_argument(
        "--memory-mb",
        type=int,
        metavar="MB",
        help="serverless memory: 1024, 2048, ... 6144 (default 2048)",
    )
    g.add_argument(
        "--max-concurrency",
        type=int,
        metavar="N",
        help="serverless: requests served at once, 1..200 (default 5)",
    )
    g.add_argument(
        "--instance-type",
        metavar="TYPE",
        help="instance type of the endpoint (default: the backend's endpoint_instance_type)",
    )
    g.add_argument(
        "--instances",
        type=int,
        metavar="N",
        help="instances to start with, within --replicas (default: its MIN)",
    )


def sizing_options(args: argparse.Namespace) -> dict[str, Any]:
    """The given sizing options under the names endpoint backends declare."""
    return {
        k: v
        for k, v in {
            "serverless": args.serverless,
            "memory_size_mb": args.memory_mb,
            "max_concurrency": args.max_concurrency,
            "instance_type": args.instance_type,
            "instances": args.instances,
        }.items()
        if v is not None
    }
