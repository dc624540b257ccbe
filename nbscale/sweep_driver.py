"""``python -m nbscale.sweep_driver SWEEP_ID``: a detached local sweep's background driver."""

from __future__ import annotations

import argparse

from .sweep_runs import drive_detached


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nbscale.sweep_driver")
    parser.add_argument("sweep_id")
    return drive_detached(parser.parse_args(argv).sweep_id)


if __name__ == "__main__":
    raise SystemExit(main())
