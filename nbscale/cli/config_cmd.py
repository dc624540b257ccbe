"""``nbscale config``: the effective configuration, secrets masked."""

from __future__ import annotations

import argparse

from ..config import load
from .output import print_json


def cmd_config(args: argparse.Namespace) -> int:
    data = load().to_dict(masked=True)
    if args.json:
        print_json(data)
        return 0
    import tomli_w  # only the TOML view needs it

    sources = data.pop("sources")
    print(
        "# read from: " + (", ".join(sources) if sources else "(no config file; built-in defaults)")
    )
    print(tomli_w.dumps(data), end="")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="show the effective configuration (secrets masked)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_config)
