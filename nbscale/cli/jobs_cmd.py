"""``nbscale run | jobs | status | logs | cancel``."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from ..errors import SpecError
from ..faces.options import add_resource_options, spec_from_args, typed_value
from ..faces.text import Progress, ago, duration, job_cost, print_json, show_dry_run, table
from ..jobs import Job, job, jobs, submit
from ..specs import Entry, shown
from ..store import get_store
from ..store.jobs import CANCELLED, STATUSES, SUCCEEDED, JobRecord, list_jobs
from ..words import count


def exit_code_of(record: JobRecord) -> int:
    if record.status == SUCCEEDED:
        return 0
    if record.status == CANCELLED:
        return 130
    return record.exit_code or 1


def stream(handle: Job, stdout=None, stderr=None, ranks: list[int] | None = None) -> JobRecord:
    """Print every rank's lines with a rank prefix until the job ends; Ctrl-C cancels it."""
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    progress = Progress(stderr)
    seen_output = False

    def on_poll(record: JobRecord) -> None:
        if not seen_output and not record.terminal:
            progress.update(
                f"job {handle.id}: {record.status.lower()}, {record.info.get('phase', '')}"
            )

    try:
        for rank, line in handle.follow(ranks=ranks, on_poll=on_poll):
            if not seen_output:
                progress.clear()
                seen_output = True
            stdout.write(f"[rank {rank}] {line}\n")
            stdout.flush()
    except KeyboardInterrupt:
        progress.clear()
        stderr.write(f"nbscale: interrupted; cancelling job {handle.id}\n")
        return handle.cancel()
    progress.clear()
    return handle.refresh()


class _terminate_as_interrupt:
    """While streaming a foreground job, SIGTERM and SIGHUP cancel it as Ctrl-C does."""

    SIGNALS = (signal.SIGTERM, signal.SIGHUP)

    def __enter__(self):
        self.saved = {}
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self.saved[sig] = signal.signal(sig, self._raise)
        return self

    @staticmethod
    def _raise(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    def __exit__(self, *exc):
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)
        return False


def describe_end(record: JobRecord, stderr=None) -> None:
    stderr = stderr or sys.stderr
    if record.status == SUCCEEDED:
        stderr.write(f"job {record.id} succeeded in {duration(record.duration)}\n")
        return
    stderr.write(f"job {record.id} {record.status.lower()}: {record.error or ''}\n")
    tb = record.info.get("traceback")
    if tb:
        stderr.write(tb if tb.endswith("\n") else tb + "\n")


def cmd_run(args: argparse.Namespace) -> int:
    if not args.target:
        raise SpecError("PATH", "is missing", "give a script, a notebook, or -m MODULE")
    params = {name: typed_value(value) for name, value in (args.parameter or [])}
    entry = Entry.from_path(args.target, module=args.module, parameters=params)
    spec = spec_from_args(args, entry)
    if getattr(args, "dry_run", False):
        from ..cost import check_budget, describe_estimate
        from ..jobs import dry_run_plan

        estimate = describe_estimate(check_budget(spec))  # over --max-cost: refused, as submit
        show_dry_run(dry_run_plan(spec), "dry run: nothing submitted", estimate)
        return 0
    handle = submit(spec)
    if args.detach:
        print(handle.id)
        return 0
    print(f"nbscale: job {handle.id} submitted", file=sys.stderr)
    with _terminate_as_interrupt():
        record = stream(handle)
    describe_end(record)
    return exit_code_of(record)


def _row(record: JobRecord) -> list[str]:
    spec = record.spec
    shape = f"{spec.get('nodes', 1)}x{spec.get('procs_per_node', 1)}"
    if spec.get("gpus_per_proc"):
        shape += f" ({spec['gpus_per_proc']} GPU/proc)"
    return [
        record.id,
        record.name,
        record.backend,
        record.status,
        shape,
        str(record.restarts),
        ago(record.created),
        duration(record.duration),
        job_cost(record),
    ]


def cmd_jobs(args: argparse.Namespace) -> int:
    if args.status and args.status.upper() not in STATUSES:
        raise SpecError(
            "--status", f"unknown status {args.status!r}", f"use one of {', '.join(STATUSES)}"
        )
    if args.limit < 1:
        raise SpecError("--limit", f"must be at least 1, got {args.limit}", "write e.g. --limit 50")
    handles = jobs(status=args.status, backend=args.backend, limit=args.limit)
    _, total = list_jobs(get_store(), status=args.status, backend=args.backend, limit=1)
    if total > len(handles):
        print(
            f"nbscale: showing the newest {len(handles)} of {count(total, 'job')} "
            "(see more with --limit N, or narrow with --status / --backend)",
            file=sys.stderr,
        )
    if args.json:
        print_json([h.to_dict() for h in handles])
    elif handles:
        print(
            table(
                [
                    "ID",
                    "NAME",
                    "BACKEND",
                    "STATUS",
                    "NODES x PROCS",
                    "RESTARTS",
                    "CREATED",
                    "DURATION",
                    "COST",
                ],
                [_row(h.record) for h in handles],
            )
        )
    else:
        print("no jobs yet: start one with 'nbscale run SCRIPT'")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    record = job(args.job).refresh()
    data = shown(record.to_dict())
    data["traceback"] = record.info.get("traceback")
    data["phase"] = record.info.get("phase")
    if args.json:
        print_json(data)
        return 0
    for key in (
        "id",
        "name",
        "backend",
        "status",
        "phase",
        "nodes",
        "procs_per_node",
        "gpus_per_proc",
        "restarts",
        "exit_code",
        "failed_rank",
    ):
        print(f"{key + ':':16}{data[key] if data[key] is not None else '-'}")
    print(f"{'created:':16}{ago(record.created)}")
    print(f"{'duration:':16}{duration(record.duration)}")
    if record.error:
        print(f"{'error:':16}{record.error}")
    if data["traceback"]:
        print(data["traceback"].rstrip())
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    handle = job(args.job)
    ranks = None if args.rank is None else [args.rank]
    if args.follow:
        stream(handle, ranks=ranks)
        return 0
    if args.rank is not None:
        sys.stdout.write(handle.logs(args.rank))
    else:
        sys.stdout.write(handle.logs())
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    record = job(args.job).cancel()
    print(f"job {record.id}: {record.status}")
    return 0


def add_entry_arguments(p: argparse.ArgumentParser, parameter_help: str) -> None:
    """PATH, -m and -p: what a job runs (``run`` and ``sweep``)."""
    p.add_argument(
        "target", nargs="?", metavar="PATH", help="script.py, notebook.ipynb, or a module with -m"
    )
    p.add_argument(
        "-m", "--module", action="store_true", help="PATH is a module name, as with python -m"
    )
    p.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        metavar=("NAME", "VALUE"),
        help=parameter_help,
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a script, module or notebook as a distributed job")
    add_entry_arguments(p, "notebook parameter, typed like papermill's -p (repeatable)")
    p.add_argument("--detach", action="store_true", help="print the job id and return at once")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="show the spec and the cost estimate (and check --max-cost); submit nothing",
    )
    add_resource_options(p)
    p.set_defaults(func=cmd_run, takes_extra=True)

    p = sub.add_parser("jobs", help="list jobs")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--status", help="only jobs in this status")
    p.add_argument("--backend", help="only jobs of this backend")
    p.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("status", help="show one job")
    p.add_argument("job", metavar="JOB")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("logs", help="print a job's logs")
    p.add_argument("job", metavar="JOB")
    p.add_argument("--rank", type=int, help="only this rank")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("cancel", help="stop a job and every process of it")
    p.add_argument("job", metavar="JOB")
    p.set_defaults(func=cmd_cancel)
