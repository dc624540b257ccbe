"""``nbscale deploy | endpoints | predict | undeploy``."""

from __future__ import annotations

import argparse
import sys

from ..errors import NbscaleError, SpecError
from ..faces.deploy_options import add_sizing_options, sizing_options
from ..faces.options import add_platform_options, parse_replicas, platform_options
from ..faces.text import ago, print_json, show_dry_run, table

# numpy, the endpoints' face and the serving codec are imported by the commands that use them:
# building the parser for any nbscale command must not pay for them (about 0.13 s)


def cmd_deploy(args: argparse.Namespace) -> int:
    from ..endpoints import deploy

    if not args.dry_run:
        print(f"nbscale: deploying {args.model_dir} as {args.name!r}...", file=sys.stderr)
    ep = deploy(
        args.model_dir,
        name=args.name,
        replicas=parse_replicas(args.replicas),
        max_batch_size=args.max_batch_size,
        max_batch_delay_ms=args.max_batch_delay_ms,
        port=args.port,
        backend=args.backend,
        target_concurrency=args.target_concurrency,
        idle_timeout_s=args.idle_timeout,
        capture_rate=args.capture_rate,
        idle_ttl=args.idle_ttl,
        options={**platform_options(args), **sizing_options(args)},
        dry_run=args.dry_run,
    )
    if args.dry_run:  # exactly what would be sent on stdout, commentary on stderr
        show_dry_run(ep, "dry run: nothing deployed")
        return 0
    if ep.rolled_back:
        raise NbscaleError(
            f"endpoint {ep.name}: {ep.rolled_back}",
            "see the alarm in CloudWatch, fix the model, and deploy again",
        )
    if args.json:
        print_json(ep.to_dict())
    else:
        print(
            f"endpoint {ep.name} ready at {ep.url} (V2: {ep.url}/v2/models/{ep.name}/infer, SageMaker: {ep.url}/invocations)"
        )
    return 0


def cmd_rollout(args: argparse.Namespace) -> int:
    from ..endpoints import endpoint

    ep = endpoint(args.name)
    if args.action == "promote":
        ep.promote()
    else:
        ep.rollback()
    print(
        f"endpoint {args.name}: canary {'promoted' if args.action == 'promote' else 'rolled back'}"
    )
    return 0


def cmd_endpoints(args: argparse.Namespace) -> int:
    from ..endpoints import endpoints

    eps = endpoints()
    for ep in eps:
        ep.refresh()
    if args.json:
        print_json([ep.to_dict() for ep in eps])
    elif eps:
        rows = []
        for ep in eps:
            d = ep.to_dict()
            r = d["replicas"]
            rows.append(
                [
                    d["name"],
                    d["backend"],
                    d["url"],
                    d["status"],
                    f"{r['current']} ({r['min']}..{r['max']})",
                    ago(d["created"]),
                ]
            )
        print(table(["NAME", "BACKEND", "URL", "STATUS", "REPLICAS (MIN..MAX)", "CREATED"], rows))
    else:
        print("no endpoints: deploy one with 'nbscale deploy MODEL_DIR --name NAME'")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np

    from ..endpoints import endpoint
    from ..serving.jsoncodec import loads

    if args.json is None:
        raise SpecError(
            "--json", "is missing", "give the input rows, e.g. --json '[[0.1, 0.2, ...]]'"
        )
    try:
        data = loads(args.json)
    except ValueError as exc:
        raise SpecError(
            "--json", f"is not valid JSON: {exc}", "quote it, e.g. --json '[[0.1, 0.2]]'"
        ) from None
    out = endpoint(args.name).predict(np.asarray(data))
    print_json(out.tolist())
    return 0


def cmd_undeploy(args: argparse.Namespace) -> int:
    from ..endpoints import endpoint

    endpoint(args.name).delete()
    print(f"endpoint {args.name} undeployed")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("deploy", help="serve a model artifact directory as an endpoint")
    p.add_argument(
        "model_dir",
        metavar="MODEL_DIR",
        help="artifact in the SageMaker PyTorch layout (made by %%deploy)",
    )
    p.add_argument(
        "--name", required=True, help="endpoint name (lower-case letters, digits, dashes)"
    )
    p.add_argument(
        "--replicas",
        default="1:1",
        metavar="MIN:MAX",
        help="replica range; MIN 0 scales to zero (default 1:1)",
    )
    p.add_argument(
        "--max-batch-size", type=int, default=32, help="rows per model call (default 32)"
    )
    p.add_argument(
        "--max-batch-delay-ms",
        type=float,
        default=2.0,
        help="longest wait to fill a batch (default 2)",
    )
    p.add_argument("--port", type=int, help="port on 127.0.0.1 (default: a free one)")
    p.add_argument("--backend", help="a backend named in the config (default: local)")
    p.add_argument(
        "--target-concurrency",
        type=float,
        default=4.0,
        help="requests in flight per replica to scale at",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="idle time before scaling to zero",
    )
    p.add_argument(
        "--capture-rate", type=float, help="capture this fraction of requests to JSONL (0..1)"
    )
    p.add_argument(
        "--idle-ttl",
        metavar="DURATION",
        help="scale to zero after this long without requests, even above MIN (e.g. 30m)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--dry-run", action="store_true", help="print what the backend would send")
    add_platform_options(p)
    add_sizing_options(p)
    p.set_defaults(func=cmd_deploy)

    for action in ("promote", "rollback"):
        p = sub.add_parser(action, help=f"{action} the canary of an endpoint")
        p.add_argument("name", metavar="NAME")
        p.set_defaults(func=cmd_rollout, action=action)

    p = sub.add_parser("endpoints", help="list endpoints")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_endpoints)

    p = sub.add_parser("predict", help="send rows to an endpoint and print the predictions")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--json", metavar="ROWS", help="input rows as JSON")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("undeploy", help="stop every process of an endpoint and free its port")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_undeploy)
