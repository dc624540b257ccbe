"""``nbscale backends``: the configured backends and whether each can be reached."""

from __future__ import annotations

import argparse

from ..faces.text import print_json, table


def _check(name: str, config) -> tuple[bool, str]:
    from ..backends import get_backend

    try:
        result = get_backend(name, config).check()
    except Exception as exc:  # noqa: BLE001 - an unreachable backend is an answer here
        return False, str(exc)
    return bool(result.get("reachable")), str(result.get("detail", ""))


def cmd_backends(args: argparse.Namespace) -> int:
    from ..config import load as load_config

    config = load_config()
    rows = []
    for name, bconf in sorted(config.backends.items()):
        reachable, detail = _check(name, config)
        rows.append(
            {
                "name": name,
                "type": bconf.type,
                "default": name == config.default_backend,
                "reachable": reachable,
                "detail": detail,
            }
        )
    if args.json:
        print_json(rows)
    else:
        print(
            table(
                ["NAME", "TYPE", "DEFAULT", "REACHABLE", "DETAIL"],
                [
                    [
                        r["name"],
                        r["type"],
                        "*" if r["default"] else "",
                        "yes" if r["reachable"] else "NO",
                        r["detail"],
                    ]
                    for r in rows
                ],
            )
        )
    return 0 if all(r["reachable"] for r in rows) else 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "backends", help="list the configured backends and whether each is reachable"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_backends)
