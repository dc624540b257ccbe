"""``nbscale run | jobs | status | logs | cancel``."""

from __future__ import annotations

import argparse
import re
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


def stream(
    handle: Job,
    stdout=None,
    stderr=None,
    ranks: list[int] | None = None,
    start: dict[int, int] | None = None,
) -> JobRecord:
    """Print every rank's lines with a rank prefix until the job ends; Ctrl-C cancels it.
    ``start``: where each rank's log is read from (default: its beginning)."""
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    progress = Progress(stderr)
    seen_output = False

    def on_poll(record: JobRecord) -> None:
        if not seen_output and not record.terminal:
            progress.update(
                f"job {handle.id}: {record.status.lower()}, {record.info.get('phase', '')}"
            )

    try:
        for rank, line in handle.follow(ranks=ranks, on_poll=on_poll, start=start):
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
    if args.backend and _lists_native(args.backend):
        return _platform_jobs(args)
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


def _lists_native(backend: str) -> bool:
    from ..backends import get_backend

    return bool(getattr(get_backend(backend), "lists_native", False))


def _platform_jobs(args: argparse.Namespace) -> int:
    """The platform's own jobs where the backend looks (a namespace's TrainJobs), those
    nbscale did not start marked ``foreign``."""
    from ..jobs import platform_jobs

    found = platform_jobs(args.backend)
    if args.status:
        found = [j for j in found if j["status"] == args.status.upper()]
    total = len(found)
    found = found[: args.limit]
    if total > len(found):
        print(
            f"nbscale: showing the newest {len(found)} of {count(total, 'job')} "
            "(see more with --limit N, or narrow with --status)",
            file=sys.stderr,
        )
    if args.json:
        print_json(found)
        return 0
    if not found:
        print(f"no jobs on the {args.backend} backend's platform")
        return 0
    rows = []
    for j in found:
        origin = "foreign" if j["foreign"] else "nbscale"
        rows.append(
            [
                j["name"] or "-",
                j["attached"] or "-",
                origin,
                j["status"],
                j["phase"] or "-",
                str(j["nodes"] if j["nodes"] is not None else "-"),
                j["runtime"] or "-",
                ago(j["created"]) if j["created"] else "-",
            ]
        )
    print(
        table(["NAME", "JOB ID", "ORIGIN", "STATUS", "PHASE", "NODES", "RUNTIME", "CREATED"], rows)
    )
    if any(not j["attached"] for j in found):
        print(
            f"nbscale: attach to one with: nbscale attach NAME --backend {args.backend}",
            file=sys.stderr,
        )
    return 0


def cmd_attach(args: argparse.Namespace) -> int:
    from ..jobs import attach

    handle = attach(args.name, backend=args.backend)
    record = handle.record
    if args.json:
        print_json(handle.to_dict())
        return 0
    print(record.id)
    note = (
        " (not started by nbscale: no results are expected)" if record.info.get("foreign") else ""
    )
    print(
        f"nbscale: {args.name} is job {record.id}, {record.status.lower()}{note}; follow it "
        f"with nbscale logs -f {record.id}",
        file=sys.stderr,
    )
    return 0


def cmd_runtimes(args: argparse.Namespace) -> int:
    from ..jobs import runtimes

    found = runtimes(args.backend)
    notes = [r["note"] for r in found if r.get("kind") == "note"]
    found = [r for r in found if r.get("kind") != "note"]
    if args.json:
        print_json(found)
    elif found:
        print(
            table(
                ["KIND", "NAME", "NAMESPACE", "FRAMEWORK", "NODES", "IMAGES"],
                [
                    [
                        r["kind"],
                        r["name"] or "-",
                        r.get("namespace") or "-",
                        r.get("framework") or "-",
                        str(r["nodes"] if r.get("nodes") is not None else "-"),
                        "; ".join(r.get("images") or []) or "-",
                    ]
                    for r in found
                ],
            )
        )
    else:
        print("no training runtimes")
    for note in notes:
        print(f"nbscale: {note}", file=sys.stderr)
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


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str) -> float:
    """``90s``, ``5m``, ``2h``, ``1d`` (or seconds) -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text or "")
    if not m or float(m.group(1)) <= 0:
        raise SpecError("--since", f"{text!r} is not a duration", "e.g. 90s, 5m, 2h, 1d")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def cmd_logs(args: argparse.Namespace) -> int:
    if args.rank is not None and args.node is not None:
        raise SpecError("--rank", "is given with --node", "give one: a rank, or a node's ranks")
    if args.tail is not None and args.tail < 0:
        raise SpecError("--tail", f"must be 0 or more, got {args.tail}", "e.g. --tail 100")
    since = parse_since(args.since) if args.since is not None else None
    handle = job(args.job)
    if since is not None:  # the platform's timestamps pick the lines
        if args.rank is not None:
            raise SpecError("--rank", "is given with --since", "pick a node with --node N")
        try:
            for node, line in handle.platform_logs(args.node, args.tail, since, args.follow):
                sys.stdout.write(f"[node {node}] {line}\n")
                sys.stdout.flush()
        except KeyboardInterrupt:
            pass  # reading logs only: the job goes on
        return 0
    if args.node is not None:
        ranks: list[int] | None = handle.node_ranks(args.node)
    else:
        ranks = None if args.rank is None else [args.rank]
    start: dict[int, int] = {}
    if args.tail is not None:  # the last lines of each rank, read in bounded memory
        for rank in ranks if ranks is not None else handle.ranks():
            lines, start[rank] = handle.tail(rank, args.tail)
            prefix = "" if args.rank is not None else f"[rank {rank}] "
            sys.stdout.writelines(f"{prefix}{line}\n" for line in lines)
        sys.stdout.flush()
    if args.follow:
        stream(handle, ranks=ranks, start=start)
        return 0
    if args.tail is not None:
        return 0
    if args.rank is not None:
        sys.stdout.write(handle.logs(args.rank))
    elif ranks is not None:
        for rank in ranks:
            sys.stdout.writelines(
                f"[rank {rank}] {line}\n" for line in handle.logs(rank).splitlines()
            )
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
    p.add_argument(
        "--backend",
        help="only jobs of this backend; a kubeflow backend lists its namespace's TrainJobs, "
        "those nbscale did not start too (ORIGIN foreign)",
    )
    p.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser(
        "attach",
        help="adopt a platform's job by name (a TrainJob nbscale did not start too), so "
        "status, logs and wait work on it",
    )
    p.add_argument("name", metavar="NAME", help="the job's name on the platform")
    p.add_argument("--backend", help="the backend whose platform holds it")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_attach)

    p = sub.add_parser("runtimes", help="list the runtimes a backend's jobs can name")
    p.add_argument("--backend", help="the backend (kubeflow: training runtimes)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_runtimes)

    p = sub.add_parser("status", help="show one job")
    p.add_argument("job", metavar="JOB")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("logs", help="print a job's logs")
    p.add_argument("job", metavar="JOB")
    p.add_argument("--rank", type=int, help="only this rank")
    p.add_argument("--node", type=int, help="only the ranks of this node (0, 1, ...)")
    p.add_argument("--tail", type=int, metavar="N", help="only the last N lines of each rank")
    p.add_argument(
        "--since",
        metavar="DURATION",
        help="only lines of the last DURATION (5m, 2h), by the platform's timestamps "
        "(kubeflow: read from the API server, one stream per node)",
    )
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("cancel", help="stop a job and every process of it")
    p.add_argument("job", metavar="JOB")
    p.set_defaults(func=cmd_cancel)
