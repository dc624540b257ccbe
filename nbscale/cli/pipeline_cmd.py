"""``nbscale pipeline run | compile | status | runs``."""

from __future__ import annotations

import argparse
import sys
import time

from ..errors import SpecError
from ..faces.options import typed_value
from ..faces.text import ago, duration, print_json, show_dry_run, table


def _params(args: argparse.Namespace) -> dict:
    return {name: typed_value(value) for name, value in (args.parameter or [])}


def _printer(stream=None):
    stream = stream or sys.stderr

    def on_step(name: str, fields: dict) -> None:
        reason = fields.get("cache_reason")
        status = fields["status"].lower()
        detail = f" ({reason})" if reason and status in ("running", "cached", "reused") else ""
        if fields.get("error"):
            detail = f": {fields['error']}"
        stream.write(f"  {name}: {status}{detail}\n")
        stream.flush()

    return on_step


def cmd_run(args: argparse.Namespace) -> int:
    """``nbscale pipeline run FLOW [--backend NAME]``: on this machine, or on an orchestrator
    elsewhere (its id is printed as soon as there is one). In the foreground, as make does,
    Ctrl-C stops the run (``--detach`` keeps it going and prints its id)."""
    options = {
        "max_parallel": args.max_parallel,
        "only": args.only,
        "from_step": args.from_step,
        "no_cache": args.no_cache,
    }
    # options not given are left out (a 0 is given: ``0 in (False,)`` would drop it unchecked)
    options = {k: v for k, v in options.items() if v is not None and v is not False and v != []}
    if not (args.dry_run or args.detach) and (args.backend or "local") == "local":
        # the first step's kernel boots while the imports below and the DAG's preparation run
        from ..pipelines import first_kernel

        if first_kernel.start(args.path, options):
            try:
                return _run(args, options)
            finally:
                first_kernel.discard()  # not taken: the run failed its checks, or was cached
    return _run(args, options)


def _run(args: argparse.Namespace, options: dict) -> int:
    from ..pipeline_runs import interrupted_note
    from ..pipelines import start_run

    if args.dry_run:
        from ..pipeline_runs import dry_run_pipeline

        plan = dry_run_pipeline(args.path, _params(args), backend=args.backend, **options)
        show_dry_run(plan, "dry run: nothing started")
        return 0

    def announce(label: str, remote_id: str) -> None:
        print(f"{label} {remote_id}", file=sys.stderr, flush=True)

    try:
        run = start_run(
            args.path,
            _params(args),
            backend=args.backend or "local",
            detach=bool(args.detach),
            on_step=None if args.detach else _printer(),
            announce=announce,
            **options,
        )
    except KeyboardInterrupt:
        print(f"nbscale: interrupted; {interrupted_note(args.backend)}", file=sys.stderr)
        return 130
    if args.detach:
        print(run.id)
        return 0
    if args.json:
        print_json(run.to_dict())
    else:
        print(run._repr_mimebundle_()["text/plain"])
    return 0 if run.status == "SUCCEEDED" else 1


def cmd_compile(args: argparse.Namespace) -> int:
    from ..pipelines import compile_pipeline

    if not args.output:
        raise SpecError("-o/--output", "is missing", "e.g. -o pipeline.kfp.yaml")
    path = compile_pipeline(
        args.path, args.target, args.output, image=args.image, role=args.role, bucket=args.bucket
    )
    print(path)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from ..pipelines import get_run

    run = get_run(args.run)
    if args.json:
        print_json(run.to_dict())
    else:
        print(run._repr_mimebundle_()["text/plain"])
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from ..pipelines import runs

    found = runs(limit=args.limit)
    if args.json:
        print_json([r.to_dict() for r in found])
    elif found:
        rows = []
        for r in found:
            cached = sum(1 for s in r.steps if s["cached"])
            dur = (r.ended or time.time()) - r.started if r.started else None
            rows.append(
                [
                    r.id,
                    r.name,
                    r.status,
                    f"{len(r.steps)} ({cached} cached)",
                    ago(r.created),
                    duration(dur),
                ]
            )
        print(table(["ID", "PIPELINE", "STATUS", "STEPS", "CREATED", "DURATION"], rows))
    else:
        print("no pipeline runs yet: start one with 'nbscale pipeline run NOTEBOOK_OR_YAML'")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from ..pipeline_runs import cancel_any

    print(cancel_any(args.run, args.backend))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from ..pipelines import describe

    print_json(describe(args.path))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser(
        "pipeline", help="run notebooks as a pipeline, compile it to KFP or SageMaker"
    )
    psub = group.add_subparsers(
        dest="pipeline_command", metavar="SUBCOMMAND", parser_class=type(group)
    )
    group.set_defaults(func=lambda a: group.print_help() or 2)

    p = psub.add_parser(
        "run", help="run a pipeline locally (cached, independent steps in parallel)"
    )
    p.add_argument(
        "path", metavar="PATH", help="a notebook with step:NAME tags, or a pipeline.yaml"
    )
    p.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        metavar=("NAME", "VALUE"),
        help="pipeline parameter, typed like papermill's -p (repeatable)",
    )
    p.add_argument("--backend", help="a backend named in the config (default: local)")
    p.add_argument(
        "--max-parallel",
        type=int,
        help="steps running at once (default: the CPUs this process may run on)",
    )
    p.add_argument(
        "--only", action="append", metavar="STEP", help="run only this step (repeatable)"
    )
    p.add_argument(
        "--from", dest="from_step", metavar="STEP", help="run this step and everything after it"
    )
    p.add_argument(
        "--no-cache", action="store_true", help="run every step even when its cache is valid"
    )
    p.add_argument("--detach", action="store_true", help="print the run id and return at once")
    p.add_argument("--json", action="store_true", help="print the finished run as JSON")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be sent (the compiled pipeline) or run (local steps); start nothing",
    )
    p.set_defaults(func=cmd_run)

    p = psub.add_parser(
        "compile", help="write the pipeline as KFP v2 IR or a SageMaker Pipelines definition"
    )
    p.add_argument(
        "path", metavar="PATH", help="a notebook with step:NAME tags, or a pipeline.yaml"
    )
    p.add_argument(
        "--target",
        required=True,
        help="what to compile to: the pipeline format of an installed platform (kfp, sagemaker)",
    )
    p.add_argument("-o", "--output", help="file to write (.yaml for kfp, .json for sagemaker)")
    p.add_argument("--image", help="container image with nbscale and papermill (cloud targets)")
    p.add_argument(
        "--role", help="sagemaker: IAM role ARN the steps run as (default: from the config)"
    )
    p.add_argument(
        "--bucket",
        help="sagemaker: S3 bucket for step code and outputs (default nbscale-pipelines)",
    )
    p.set_defaults(func=cmd_compile)

    p = psub.add_parser("status", help="show one pipeline run and its steps")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = psub.add_parser("runs", help="list pipeline runs")
    p.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_runs)

    p = psub.add_parser("cancel", help="stop a detached run and its kernels")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--backend", help="the kubeflow backend a KFP run was started on")
    p.set_defaults(func=cmd_cancel)

    p = psub.add_parser(
        "show", help="print the steps, inputs and outputs nbscale found (after all checks)"
    )
    p.add_argument("path", metavar="PATH")
    p.set_defaults(func=cmd_show)
