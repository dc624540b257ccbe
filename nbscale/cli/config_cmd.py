"""``nbscale config``: the effective configuration, secrets masked."""

from __future__ import annotations

import argparse
import sys

from ..config import MASK, Config, load, looks_secret
from ..errors import NbscaleError
from ..faces.text import print_json


def _masked(text: str, settings: dict) -> str:
    """``text`` without the value of any secret-looking setting."""
    for key, value in settings.items():
        if looks_secret(key) and isinstance(value, str) and value:
            text = text.replace(value, MASK)
    return text


def config_problems(config: Config) -> list[str]:
    """One line per configured backend whose type is not installed, cannot be loaded, or
    whose settings its platform refuses."""
    from ..backends import backend_types

    types = backend_types()
    problems = []
    for bconf in sorted(config.backends.values(), key=lambda b: b.name):
        ep = types.get(bconf.type)
        if ep is None:
            installed = ", ".join(sorted(types)) or "(none)"
            problems.append(
                f"backend {bconf.name!r} has type {bconf.type!r}, which is not installed "
                f"(installed types: {installed}); jobs sent to it will be refused until "
                f"a package providing the {bconf.type!r} backend is installed"
            )
            continue
        try:
            platform = ep.load()
            for role in ("jobs", "endpoints", "pipelines"):
                if platform.provides(role):
                    platform.load(role)
            if platform.provides("settings"):
                platform.load("settings")(bconf)
        except NbscaleError as exc:  # a setting the platform refuses, said before any job
            problems.append(_masked(str(exc), bconf.settings))
        except ImportError as exc:
            problems.append(
                f"backend {bconf.name!r} has type {bconf.type!r}, which cannot be loaded ({exc}); "
                f"run: pip install 'nbscale[{bconf.type}]'"
            )
    return problems


def cmd_config(args: argparse.Namespace) -> int:
    config = load()
    data = config.to_dict(masked=True)
    problems = config_problems(config)
    for line in problems:
        print(f"nbscale: warning: {line}", file=sys.stderr)
    if args.json:
        print_json({**data, "warnings": problems})
        return 0
    import tomli_w  # only the TOML view needs it

    sources = data.pop("sources")
    print(
        "# read from: " + (", ".join(sources) if sources else "(no config file; built-in defaults)")
    )
    for line in problems:
        print(f"# warning: {line}")
    print(tomli_w.dumps(data), end="")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "config",
        help="show the effective configuration (secrets masked) and warn about backend "
        "types that are not installed",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_config)
