"""Arguments of ``%%train``, ``%attach``, ``%logs``, ``%cancel`` and ``%jobs``, parsed into typed objects.

Resource options are the ones ``nbscale run`` has (``add_resource_options``),
so a flag learnt on the command line works in the notebook. Every bad argument
raises one ``SpecError`` naming it; nothing has been captured or submitted then.
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass
from typing import Any

from nbscale.config import load as load_config
from nbscale.errors import SpecError
from nbscale.faces.options import (
    add_resource_options,
    add_sweep_options,
    spec_from_args,
    sweep_job_args,
    sweep_request,
)
from nbscale.specs import Entry, JobSpec
from nbscale.sweeps.space import split_top_level

DEFAULT_NAME = "train-cell"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        raise SpecError(self.prog, message, f"see: {self.prog} --help")

    def exit(self, status=0, message=None):  # --help prints, then must not end the kernel
        raise _HelpShown()


class _HelpShown(Exception):
    pass


def _names(option: str, text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if not n.isidentifier()]
    if bad or not names:
        raise SpecError(
            option,
            f"{text!r} is not a comma-separated list of Python names",
            f"write e.g. {option} model,history",
        )
    return names


def _ranks(text: str) -> list[int] | None:
    if text == "all":
        return None
    try:
        ranks = [int(r) for r in text.split(",")]
    except ValueError:
        raise SpecError(
            "--log-ranks", f"{text!r} is not 'all' or rank numbers", "write --log-ranks 0 or all"
        ) from None
    if any(r < 0 for r in ranks):
        raise SpecError("--log-ranks", "ranks start at 0", "write --log-ranks 0 or all")
    return ranks


def _split(line: str, prog: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError as exc:
        raise SpecError(prog, f"cannot read the arguments: {exc}", "check the quotes") from None


def _unquote(token: str) -> str:
    if len(token) >= 2 and token[0] == token[-1] and token[0] in "'\"":
        return token[1:-1]
    return token


def split_sweep(line: str) -> tuple[str, list[str] | None]:
    """The line without its ``--sweep`` values, and those values (None: no --sweep).

    The values are the tokens after ``--sweep`` up to the next ``--option``, quoted or not;
    they are taken out before the rest is read as shell words, which would drop the quotes
    of a string choice and split ``loguniform(1e-4, 1e-1)`` at its blank."""
    tokens = split_top_level(line)  # the values keep their quotes and inner blanks
    rest: list[str] = []
    found: list[str] | None = None
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "--sweep" or token.startswith("--sweep="):
            found = found if found is not None else []
            if token.startswith("--sweep="):
                found.append(_unquote(token.partition("=")[2]))
            i += 1
            while i < len(tokens) and not tokens[i].startswith("--"):
                found.append(_unquote(tokens[i]))
                i += 1
            continue
        rest.append(token)
        i += 1
    if found is not None and not any(t.strip() for t in found):
        raise SpecError(
            "--sweep", "names no parameter", "write e.g. --sweep lr=loguniform(1e-4,1e-1)"
        )
    return " ".join(rest), found


DEFAULT_SWEEP_VAR = "sweep"


@dataclass
class SweepArgs:
    """What ``--sweep`` adds to ``%%train``: the space (checked), the objective, the sweep's
    options (``SweepSpec`` fields) and the name the ``Sweep`` is given in the notebook."""

    space: Any  # nbscale.sweeps.space.Space
    objective: str
    options: dict[str, Any]
    var: str


@dataclass
class TrainArgs:
    spec: JobSpec  # entry is a placeholder until the cell is captured
    outputs: list[str]
    inputs: list[str] | None
    run_async: bool
    detach: bool
    dry_run: bool
    log_ranks: list[int] | None  # None: every rank
    sweep: SweepArgs | None = None


def train_parser() -> _Parser:
    p = _Parser(prog="%%train", description="Run this cell as a distributed job.", add_help=True)
    add_resource_options(p)
    p.add_argument(
        "--outputs", metavar="A,B", help="names to bring back from rank 0 into the notebook"
    )
    p.add_argument(
        "--inputs", metavar="A,B", help="send exactly these variables (modules follow anyway)"
    )
    p.add_argument("--async", dest="run_async", action="store_true", help="return the Job at once")
    p.add_argument(
        "--detach", action="store_true", help="interrupting the cell leaves the job running"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="show what would travel and the spec; submit nothing"
    )
    p.add_argument(
        "--log-ranks", default="0", metavar="0|all", help="ranks whose logs are shown (default 0)"
    )
    add_sweep_options(p, space_required=False)
    p.add_argument(
        "--sweep-var",
        metavar="NAME",
        help=f"with --sweep: the notebook variable the Sweep is put in (default {DEFAULT_SWEEP_VAR})",
    )
    return p


_SWEEP_ONLY = ("objective", "trials", "parallel", "algorithm", "pruner", "max_failed", "seed")


def _sweep_args(args: argparse.Namespace, space_tokens: list[str] | None) -> SweepArgs | None:
    if space_tokens is None and args.sweep:  # --sweep inside text split_sweep kept whole
        space_tokens = [token for group in args.sweep for token in group]
    if space_tokens is None:
        given = [k for k in (*_SWEEP_ONLY, "sweep_var") if getattr(args, k) is not None]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise SpecError(flag, "is an option of a sweep", "add --sweep NAME=DIST(...) ...")
        return None
    args.sweep = [space_tokens]
    space, objective, options = sweep_request(args)
    var = args.sweep_var or DEFAULT_SWEEP_VAR
    if not var.isidentifier():
        raise SpecError("--sweep-var", f"{var!r} is not a Python name", "write e.g. --sweep-var s")
    return SweepArgs(space=space, objective=objective, options=options, var=var)


def parse_train(line: str) -> TrainArgs | None:
    """None when the line asked for --help (the help was printed)."""
    parser = train_parser()
    line, space_tokens = split_sweep(line)
    try:
        args = parser.parse_args(_split(line, parser.prog))
    except _HelpShown:
        return None
    args.name = args.name or DEFAULT_NAME
    load_config().backend(args.backend)  # an unknown backend fails here, before any capture
    sweep = _sweep_args(args, space_tokens)
    job_args = sweep_job_args(args) if sweep else args  # --max-cost: the whole sweep's budget
    spec = spec_from_args(job_args, Entry("bundle", "<not captured yet>"))
    return TrainArgs(
        spec=spec,
        outputs=_names("--outputs", args.outputs) or [],
        inputs=_names("--inputs", args.inputs),
        run_async=args.run_async,
        detach=args.detach,
        dry_run=args.dry_run,
        log_ranks=_ranks(args.log_ranks),
        sweep=sweep,
    )


@dataclass
class JobArgs:
    job: str
    rank: int | None = None
    outputs: list[str] | None = None
    log_ranks: list[int] | None = None


def parse_job_line(
    line: str, prog: str, rank: bool = False, outputs: bool = False
) -> JobArgs | None:
    parser = _Parser(prog=prog)
    parser.add_argument("job", metavar="JOB", help="a job id from %jobs")
    if rank:
        parser.add_argument("--rank", type=int, help="only this rank")
    if outputs:
        parser.add_argument(
            "--outputs", metavar="A,B", help="names to load (default: every output)"
        )
        parser.add_argument(
            "--log-ranks", default="0", metavar="0|all", help="ranks whose logs are shown"
        )
    try:
        args = parser.parse_args(_split(line, prog))
    except _HelpShown:
        return None
    return JobArgs(
        job=args.job,
        rank=getattr(args, "rank", None),
        outputs=_names("--outputs", getattr(args, "outputs", None)),
        log_ranks=_ranks(getattr(args, "log_ranks", "0") or "0"),
    )


@dataclass
class JobsArgs:
    status: str | None
    limit: int


def parse_jobs(line: str) -> JobsArgs | None:
    parser = _Parser(prog="%jobs")
    parser.add_argument("--status", help="only jobs in this status")
    parser.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")
    try:
        args = parser.parse_args(_split(line, "%jobs"))
    except _HelpShown:
        return None
    return JobsArgs(status=args.status.upper() if args.status else None, limit=args.limit)
