"""``nbscale baseline | drift | metrics | cost | idle``: monitoring and cost."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..faces.text import ago, print_json, table
from ..words import count


def cmd_baseline(args: argparse.Namespace) -> int:
    from ..monitoring.baseline import Baseline, load_data

    matrix, names = load_data(args.data)
    base = Baseline.from_data(
        matrix, bins=args.bins, reference_size=args.reference_size, names=names, source=args.data
    )
    out = Path(args.output)
    base.save(out)
    print(
        f"baseline of {count(len(base.features), 'feature')} from {count(base.rows, 'row')} "
        f"({base.bins} quantile bins each) written to {out}"
    )
    return 0


def cmd_drift(args: argparse.Namespace) -> int:
    from ..endpoints import endpoint

    report = endpoint(args.name).drift(
        window=args.window, since=args.since, fdr=args.fdr, baseline=args.baseline
    )
    if args.json:
        print_json(report.to_dict())
    else:
        print(report.describe())
    return 3 if args.exit_code and report.windows and report.windows[-1].drifting else 0


def cmd_metrics(args: argparse.Namespace) -> int:
    from ..endpoints import endpoint

    m = endpoint(args.name).metrics()
    if args.json:
        print_json(m)
        return 0
    # SageMaker's names, whichever backend measured them (local router, CloudWatch)
    bases = ("Invocation", "ModelLatency", "OverheadLatency")
    rows = [[k, v] for k, v in m.items() if k.startswith(bases) and not isinstance(v, list)]
    print(table(["METRIC", "VALUE"], rows) if rows else "no metrics yet")
    if any(k.startswith(("ModelLatency", "OverheadLatency")) for k, _ in rows):
        print("latencies in microseconds")
    return 0


def refresh_prices(regions: list[str] | None) -> int:
    """``nbscale cost --refresh-prices``: each installed platform with a price API, for the
    regions its configured backends are in (or ``--region``)."""
    from ..backends import platforms
    from ..config import load as load_config
    from ..cost import refresh_prices as refresh

    config = load_config()
    done = 0
    for platform in platforms():
        rules = platform.pricing
        if not rules.refresh:
            continue
        wanted = list(regions or []) or sorted(
            {
                str(b.settings["region"])
                for b in config.backends.values()
                if b.type == platform.type and b.settings.get("region")
            }
        )
        wanted = wanted or [r for r in [rules.list_region] if r]
        if not wanted:
            continue
        path, prices = refresh(platform.type, wanted)
        print(
            f"{platform.title}: {count(prices, 'price')} for {', '.join(wanted)} written to {path}"
        )
        done += 1
    if not done:
        print("no installed platform has a price API to refresh from", file=sys.stderr)
        return 1
    return 0


def cmd_cost(args: argparse.Namespace) -> int:
    from ..cost import cost_report
    from ..monitoring.drift import parse_duration

    if args.refresh_prices:
        return refresh_prices(args.region)
    if args.region:
        from ..errors import SpecError

        raise SpecError("--region", "only goes with --refresh-prices")
    since = parse_duration(args.since, "--since") if args.since else None
    report = cost_report(since_s=since, by=args.by)
    if args.json:
        print_json(report)
        return 0
    rows = [
        [
            g["key"],
            g["jobs"],
            f"{g['node_hours']:.2f}",
            f"${g['cost']:.2f}",
            f"${g['on_demand_cost']:.2f}",
            f"${g['spot_savings']:.2f}",
        ]
        for g in report["groups"]
    ]
    span = f"the last {args.since}" if args.since else "all time"
    if not rows:
        print(f"no finished or running jobs in {span}")
        return 0
    print(table([args.by.upper(), "JOBS", "NODE-HOURS", "COST", "ON-DEMAND", "SPOT SAVED"], rows))
    t = report["total"]
    print(
        f"total over {span}: ${t['cost']:.2f} for {count(t['jobs'], 'job')}"
        + (f" (spot saved ${t['spot_savings']:.2f})" if t["spot_savings"] else "")
        + (f"; {t['unpriced']} without a known price" if t["unpriced"] else "")
    )
    for note in report["price_notes"]:  # a price standing in for the region's own
        print(f"estimated: {note}")
    return 0


def cmd_idle(args: argparse.Namespace) -> int:
    from ..monitoring.idle import running_things

    things = running_things()
    if args.json:
        print_json(things)
        return 0
    if not things:
        print("nothing is running")
        return 0
    rows = [
        [
            t["kind"],
            t["name"],
            t["backend"],
            t["status"],
            t["units"],
            f"${t['cost_per_hour']:.2f}/h",
            ago(t["since"]),
            t["idle"] or "-",
        ]
        for t in things
    ]
    print(table(["KIND", "NAME", "BACKEND", "STATUS", "NODES", "COST", "SINCE", "IDLE"], rows))
    total = sum(t["cost_per_hour"] for t in things)
    print(f"running now: ${total:.2f} per hour", file=sys.stdout)
    return 0


def register(sub) -> None:
    p = sub.add_parser("baseline", help="make a drift baseline from training data")
    p.add_argument("data", help="a .npy, .csv (header row) or .parquet file: rows x features")
    p.add_argument("-o", "--output", required=True, help="where to write the baseline JSON")
    p.add_argument("--bins", type=int, default=10, help="quantile bins per feature (default 10)")
    p.add_argument(
        "--reference-size", type=int, default=2000, help="values kept per feature for KS"
    )
    p.set_defaults(func=cmd_baseline)

    p = sub.add_parser("drift", help="an endpoint's captured inputs against its baseline")
    p.add_argument("name")
    p.add_argument("--window", default="1h", help="window length: 90s, 30m, 1h, 1d (default 1h)")
    p.add_argument("--since", help="how far back: e.g. 24h (default 24 windows)")
    p.add_argument("--fdr", type=float, default=0.01, help="false discovery rate (default 0.01)")
    p.add_argument("--baseline", help="a baseline JSON instead of the endpoint's own")
    p.add_argument("--exit-code", action="store_true", help="exit 3 when the latest window drifts")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_drift)

    p = sub.add_parser("metrics", help="an endpoint's metrics under SageMaker's names")
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_metrics)

    p = sub.add_parser("cost", help="what jobs cost, grouped")
    p.add_argument("--since", help="e.g. 7d, 24h (default: all time)")
    p.add_argument("--by", choices=["backend", "name", "tag"], default="backend")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--refresh-prices",
        action="store_true",
        help="read the list prices from the platform's price API (AWS Price List) for the "
        "regions of the configured backends and keep them in NBSCALE_HOME/prices/",
    )
    p.add_argument(
        "--region",
        action="append",
        help="with --refresh-prices: this region instead (repeatable)",
    )
    p.set_defaults(func=cmd_cost)

    p = sub.add_parser("idle", help="what is running now and what it costs per hour")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_idle)
