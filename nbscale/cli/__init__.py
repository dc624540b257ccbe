"""The ``nbscale`` command. Each group of subcommands lives in its own module.

Errors a user can cause print one line and exit 2 (usage) or 1 (everything
else); a traceback means a bug in nbscale.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import NbscaleError, SpecError

# modules that add subcommands; each has ``register(subparsers)``
COMMAND_MODULES = [
    "jobs_cmd",
    "config_cmd",
    "pipeline_cmd",
    "endpoints_cmd",
    "quickstart_cmd",
    "monitor_cmd",
    "backends_cmd",
    "sweep_cmd",
]


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line instead of usage + message."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{message} (see: {self.prog} --help)")


def build_parser() -> Parser:
    parser = Parser(prog="nbscale", description="Run notebooks and scripts as distributed jobs.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(f".{name}", __name__).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:  # everything after -- goes to the job untouched
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        args.extra = extra
        if extra and not getattr(args, "takes_extra", False):
            raise UsageError("arguments after -- are only for 'nbscale run' and 'nbscale sweep'")
        if args.version:
            from ..version import __version__

            print(__version__)
            return 0
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"nbscale: error: {exc}", file=sys.stderr)
        return 2
    except SpecError as exc:
        print(f"nbscale: error: {exc}", file=sys.stderr)
        return 2
    except NbscaleError as exc:
        print(f"nbscale: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("nbscale: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
