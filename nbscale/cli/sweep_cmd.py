"""``nbscale sweep | sweeps | sweep-status | sweep-cancel``: hyperparameter sweeps.

``nbscale sweep SCRIPT --sweep 'lr=loguniform(1e-4,1e-1)' --objective val_loss:min`` takes
the options of ``nbscale run`` for its trials' job and the sweep's own (``add_sweep_options``).
It prints a line when the sweep changes, then the table of trials; Ctrl-C stops following
it, the trials go on, and the same command resumes it.
"""

from __future__ import annotations

import argparse
import sys
import time

from ..errors import SpecError
from ..faces.options import (
    add_resource_options,
    add_sweep_options,
    spec_from_args,
    sweep_job_args,
    sweep_request,
    typed_value,
)
from ..faces.text import ago, print_json, show_dry_run, table
from ..specs import Entry
from ..words import count
from .jobs_cmd import add_entry_arguments


def exit_code_of(status: str) -> int:
    if status == "SUCCEEDED":
        return 0
    if status == "CANCELLED":
        return 130
    return 1


class LiveLines:
    """``on_update`` of a sweep as lines: the summary when it changes (a trial started or
    ended, a new best), and a failed trial's error once; nothing while nothing changes."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.start = time.monotonic()
        self.said = ""
        self.ended: set[int] = set()

    def _write(self, text: str) -> None:
        self.stream.write(f"[{time.monotonic() - self.start:6.1f}s] {text}\n")
        self.stream.flush()

    def __call__(self, view) -> None:
        from ..sweeps.table import summary

        for t in sorted(view.trials, key=lambda t: t.number):
            if t.number in self.ended or t.status in ("PENDING", "RUNNING"):
                continue
            self.ended.add(t.number)
            if t.status == "FAILED" and t.error:
                self._write(f"trial {t.number} failed: {t.error.strip().splitlines()[-1]}")
        line = summary(view)
        if line != self.said:
            self.said = line
            self._write(line)


def _prepare(args: argparse.Namespace):
    from .. import sweep_runs

    if not args.target:
        raise SpecError("PATH", "is missing", "give a script, a notebook, or -m MODULE")
    space, objective, options = sweep_request(args)  # a bad space is refused before the rest
    params = {name: typed_value(value) for name, value in (args.parameter or [])}
    entry = Entry.from_path(args.target, module=args.module, parameters=params)
    job = spec_from_args(sweep_job_args(args), entry)
    return sweep_runs.prepare(job, space, objective, **options)


def cmd_sweep(args: argparse.Namespace) -> int:
    from .. import sweep_runs
    from ..sweeps.table import text
    from .jobs_cmd import _terminate_as_interrupt

    spec, notes = _prepare(args)
    if args.dry_run:
        show_dry_run(sweep_runs.dry_run(spec), "dry run: nothing started", *notes)
        return 0
    handle = sweep_runs.start(spec, notes=notes)
    if args.detach:
        handle.detach()  # a local sweep's driver goes on in the background
        print(handle.id)
        return 0
    print(
        f"nbscale: sweep {handle.id}: {count(spec.trials, 'trial')}, {spec.parallel} at once, "
        f"{spec.objective} (run the same command again to resume it)",
        file=sys.stderr,
        flush=True,
    )
    try:
        with _terminate_as_interrupt():
            view = handle.run(on_update=LiveLines())
    except KeyboardInterrupt:
        print(
            f"nbscale: interrupted; stopped following sweep {handle.id}. Its running trials go "
            f"on: run the same command again to resume it, or cancel it with "
            f"'nbscale sweep-cancel {handle.id}'",
            file=sys.stderr,
        )
        return 130
    if args.json:
        print_json(view.to_dict())
    else:
        print(text(view))
    if view.status != "SUCCEEDED" and view.error:
        why = view.error.removeprefix("failed: ")
        print(f"nbscale: sweep {view.id} {view.status.lower()}: {why}", file=sys.stderr)
    return exit_code_of(view.status)


def _row(handle) -> list[str]:
    record = handle.record
    spec = record.spec
    done = best = "-"
    if record.backend_type == "local":  # remote ones would each cost a platform call
        view = handle.view()
        counts = view.counts()
        done = f"{counts.get('SUCCEEDED', 0) + counts.get('PRUNED', 0)}/{view.planned}"
        if view.best is not None:
            best = f"{view.best.value:.4g} (trial {view.best.number})"
        status = view.status
    else:
        done = f"?/{spec.get('trials')}"
        status = record.status
    return [record.id, record.backend, status, spec.get("objective", ""), done, best,
            ago(record.created)]  # fmt: skip


def cmd_sweeps(args: argparse.Namespace) -> int:
    from .. import sweep_runs

    if args.limit < 1:
        raise SpecError("--limit", f"must be at least 1, got {args.limit}", "write e.g. --limit 50")
    found = sweep_runs.sweeps(limit=args.limit)
    if args.json:
        print_json([h.record.to_dict() for h in found])
    elif found:
        heads = ["ID", "BACKEND", "STATUS", "OBJECTIVE", "DONE", "BEST", "CREATED"]
        print(table(heads, [_row(h) for h in found]))
    else:
        print("no sweeps yet: start one with 'nbscale sweep SCRIPT --sweep ... --objective ...'")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from .. import sweep_runs
    from ..sweeps.table import text

    view = sweep_runs.get(args.sweep).view()
    if args.json:
        print_json(view.to_dict())
    else:
        print(text(view))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from .. import sweep_runs

    view = sweep_runs.get(args.sweep).cancel()
    print(f"sweep {view.id}: {view.status}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="run a script, module or notebook as a hyperparameter sweep of jobs",
        description="Sweep a script's parameters: each trial is a job with its values "
        "(nbscale.param('lr'), or a notebook's parameters). Arguments after -- go to the script.",
    )
    add_entry_arguments(
        p, "notebook parameter every trial gets, typed like papermill's -p (repeatable)"
    )
    p.add_argument(
        "--detach",
        action="store_true",
        help="print the sweep's id and return; it goes on without this command (locally its "
        "driver runs in the background; on a cluster the platform runs it)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be sent (the sweep, the Experiment, the tuning request); "
        "start nothing",
    )
    p.add_argument("--json", action="store_true", help="the final sweep as JSON on stdout")
    add_resource_options(p)
    p._option_string_actions["--max-cost"].help = (
        "the sweep's budget: refused if the estimate for all its trials is over it; "
        "no trial is started once the spend reaches it"
    )
    add_sweep_options(p)
    p.set_defaults(func=cmd_sweep, takes_extra=True)

    p = sub.add_parser("sweeps", help="list sweeps")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    p.set_defaults(func=cmd_sweeps)

    p = sub.add_parser("sweep-status", help="show one sweep and its trials")
    p.add_argument("sweep", metavar="SWEEP")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("sweep-cancel", help="stop a sweep and every running trial of it")
    p.add_argument("sweep", metavar="SWEEP")
    p.set_defaults(func=cmd_cancel)
