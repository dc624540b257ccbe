"""Options every face parses the same way: the CLI, the magics and the server extension.

Typed values (``-p epochs 5`` gives an int, as papermill does), ``K=V`` pairs, the resource
options of a job and the platform options of an endpoint."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..config import load as load_config
from ..errors import SpecError
from ..specs import Entry, JobSpec


def typed_value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text[:1] in "[{":
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text


def parse_env(
    pairs: list[str] | None, option: str = "--env", example: str = "LR=0.1"
) -> dict[str, str]:
    """``K=V`` pairs of a repeatable option; a bad one is an error naming ``option``."""
    env = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SpecError(option, f"{pair!r} is not KEY=VALUE", f"write e.g. {option} {example}")
        env[key] = value
    return env


SPEC_DEFAULTS = {"nodes": 1, "procs_per_node": 1, "gpus_per_proc": 0, "max_restarts": 0}


def add_resource_options(p: argparse.ArgumentParser) -> None:
    """The options every way of starting a job shares (``run`` here, ``%%train`` in the magics)."""
    p.add_argument(
        "--backend", help="a backend named in the config (default: the configured default)"
    )
    p.add_argument("--name", help="job name (default: from the file name)")
    p.add_argument("--nodes", type=int, help="number of nodes (default 1)")
    p.add_argument("--procs-per-node", type=int, help="processes per node (default 1)")
    p.add_argument("--gpus-per-proc", type=int, help="GPUs per process (default 0)")
    p.add_argument("--instance-type", help="instance type on cloud backends")
    p.add_argument("--image", help="container image on cloud backends")
    p.add_argument(
        "--env",
        action="append",
        metavar="K=V",
        help="environment variable for the job (repeatable); a secret-looking name "
        "(TOKEN, PASSWORD, API_KEY, ...) is passed to the job but never stored or shown",
    )
    p.add_argument(
        "--secret-env",
        action="append",
        metavar="NAME",
        help="pass NAME's value from this environment to the job without storing it (repeatable)",
    )
    p.add_argument(
        "--max-runtime", type=int, metavar="SECONDS", help="stop the job after this long"
    )
    p.add_argument(
        "--max-restarts", type=int, help="elastic restarts torchrun may make (default 0)"
    )
    p.add_argument("--checkpoint-dir", help="directory the job checkpoints to")
    p.add_argument(
        "--max-cost",
        type=float,
        metavar="USD",
        help="refuse the job if its estimate is over this, stop it when its cost reaches it",
    )
    p.add_argument(
        "--tag", action="append", metavar="K=V", help="a tag to record with the job (repeatable)"
    )
    p.add_argument(
        "--requirements",
        metavar="FILE|auto",
        help="Python packages a remote job installs before it starts: a pip requirements "
        "file, or auto (the kernel's versions of what the job imports); default: "
        "requirements.txt in the job's folder, if there is one",
    )
    p.add_argument(
        "--spot",
        action="store_true",
        default=None,
        help="run on spot capacity, resuming from checkpoints (SageMaker managed spot)",
    )


def spec_from_args(args: argparse.Namespace, entry: Entry) -> JobSpec:
    defaults = {**SPEC_DEFAULTS, **load_config().defaults}
    values: dict[str, Any] = {}
    for field in (
        "nodes",
        "procs_per_node",
        "gpus_per_proc",
        "max_restarts",
        "max_runtime",
        "instance_type",
        "image",
        "checkpoint_dir",
        "max_cost",
        "spot",
        "requirements",
    ):
        given = getattr(args, field, None)
        values[field] = given if given is not None else defaults.get(field)
    return JobSpec(
        entry=entry,
        name=args.name or "",
        backend=args.backend,
        args=tuple(getattr(args, "extra", []) or []),
        env=parse_env(args.env),
        tags=parse_env(args.tag, "--tag", "team=vision"),
        secret_env=tuple(getattr(args, "secret_env", None) or ()),
        **{k: v for k, v in values.items() if v is not None},
    )


def parse_replicas(text: str) -> tuple[int, int]:
    lo, sep, hi = text.partition(":")
    try:
        return (int(lo), int(hi)) if sep else (int(lo), int(lo))
    except ValueError:
        raise SpecError(
            "--replicas", f"{text!r} is not MIN:MAX", "write e.g. --replicas 1:4 or --replicas 0:2"
        ) from None


def add_platform_options(p: argparse.ArgumentParser) -> None:
    """The flags of ``platform_options``, on ``nbscale deploy`` and ``%deploy`` alike."""
    p.add_argument("--canary", type=int, metavar="PCT", help="new version of NAME at PCT%% traffic")
    p.add_argument("--scale-metric", choices=["concurrency", "rps", "cpu", "memory"])
    p.add_argument("--scale-target", type=int, help="target value of --scale-metric per replica")
    p.add_argument("--container-concurrency", type=int, help="requests at once per replica")
    p.add_argument("--timeout", type=int, metavar="SECONDS", help="request timeout")
    p.add_argument("--gpus", type=int, help="GPUs per replica")
    p.add_argument("--cpu", help="CPU per replica (a Kubernetes quantity)")
    p.add_argument("--memory", help="memory per replica (e.g. 2Gi)")
    hop = p.add_mutually_exclusive_group()
    hop.add_argument(
        "--direct",
        action="store_true",
        default=None,
        help="local, the default: every replica accepts on the endpoint's port itself, no proxy "
        "hop at any replica count (a replica that dies drops the connections it held)",
    )
    hop.add_argument(
        "--proxy",
        dest="direct",
        action="store_false",
        default=None,
        help="local: the router proxies each request while 2+ replicas run, to the one with the "
        "fewest in flight, and retries a request that hit a replica killed under it (about half "
        "the rate at one connection)",
    )


def platform_options(args: argparse.Namespace) -> dict:
    """Options only some endpoint backends have (KServe, local); a backend refuses one it
    lacks."""
    return {
        k: v
        for k, v in {
            "direct": args.direct,
            "canary_traffic_percent": args.canary,
            "scale_metric": args.scale_metric,
            "scale_target": args.scale_target,
            "container_concurrency": args.container_concurrency,
            "timeout_s": args.timeout,
            "gpus": args.gpus,
            "cpu": args.cpu,
            "memory": args.memory,
        }.items()
        if v is not None
    }


# -- sweeps: the same options on ``nbscale sweep`` and ``%%train --sweep`` ----------------


def add_sweep_options(p: argparse.ArgumentParser, space_required: bool = True) -> None:
    """What a sweep adds to a job's options. ``--max-cost`` (a resource option) caps the whole
    sweep, not each trial."""
    from ..sweeps.spec import ALGORITHMS, PRUNERS

    g = p.add_argument_group("sweep")
    g.add_argument(
        "--sweep",
        action="append",
        nargs="+",
        metavar="NAME=DIST",
        required=space_required,
        help="the search space: NAME=DIST(...) tokens, e.g. lr=loguniform(1e-4,1e-1) "
        "batch=choice(32,64) layers=int(2,6) (several, or one quoted string; repeatable)",
    )
    g.add_argument(
        "--objective",
        metavar="METRIC:min|max",
        help="the metric the trials log with nbscale.log_metric, and which way is better",
    )
    g.add_argument("--trials", type=int, help="how many trials in all (default 16)")
    g.add_argument("--parallel", type=int, help="trials at once (default 1)")
    g.add_argument(
        "--algorithm",
        choices=ALGORITHMS,
        help="how values are sampled (default: tpe; bayesian on SageMaker, which has no TPE)",
    )
    g.add_argument(
        "--pruner", choices=PRUNERS, help="how bad trials are stopped early (default median)"
    )
    g.add_argument(
        "--max-failed",
        type=int,
        metavar="N",
        help="failed trials are retried until more than N failed; then the sweep stops (default 3)",
    )
    g.add_argument("--seed", type=int, help="seed of the sampler (a sweep that repeats)")


def sweep_request(args: argparse.Namespace) -> tuple[Any, str, dict[str, Any]]:
    """The space (parsed: a bad one is refused here), the objective and the sweep's options
    from parsed arguments; ``--max-cost`` is the sweep's budget."""
    from ..sweeps.space import parse_objective, parse_space

    groups = args.sweep or []
    # tokens are joined and split again outside parentheses and quotes, so that
    # ``--sweep lr=loguniform(1e-4, 1e-1)`` (a space inside) reads as one parameter
    space = parse_space(" ".join(token for group in groups for token in group))
    if not args.objective:
        raise SpecError(
            "--objective",
            "is missing: a sweep needs the metric it optimizes",
            "write e.g. --objective val_loss:min (a name the code passes to nbscale.log_metric)",
        )
    objective = str(parse_objective(args.objective))
    options = {
        "trials": args.trials,
        "parallel": args.parallel,
        "algorithm": args.algorithm,
        "pruner": args.pruner,
        "max_failed": args.max_failed,
        "seed": args.seed,
        "max_cost": getattr(args, "max_cost", None),
    }
    return space, objective, {k: v for k, v in options.items() if v is not None}


def sweep_job_args(args: argparse.Namespace) -> argparse.Namespace:
    """The arguments that make a sweep's job: ``--max-cost`` belongs to the sweep."""
    return argparse.Namespace(**{**vars(args), "max_cost": None})
