"""``%jobs``, ``%logs JOB``, ``%cancel JOB``, ``%attach JOB``: the same engine calls as the CLI."""

from __future__ import annotations

from typing import Any

from IPython.core.magic import Magics, line_magic, magics_class

from nbscale.errors import NbscaleError
from nbscale.jobs import job, jobs

from .display import JobsTable, JobView, LogText, user_error
from .train import finish, watch
from .train_args import parse_job_line, parse_jobs


@magics_class
class JobMagics(Magics):
    @line_magic("jobs")
    def jobs_magic(self, line: str) -> Any:
        """List jobs: %jobs [--status RUNNING] [--limit 20]"""
        try:
            args = parse_jobs(line)
            if args is None:
                return None
            return JobsTable([h.record for h in jobs(status=args.status, limit=args.limit)])
        except NbscaleError as exc:
            raise user_error(exc) from None

    @line_magic
    def logs(self, line: str) -> Any:
        """A job's log so far: %logs JOB [--rank R]"""
        try:
            args = parse_job_line(line, "%logs", rank=True)
            if args is None:
                return None
            return LogText(args.job, job(args.job).logs(args.rank))
        except NbscaleError as exc:
            raise user_error(exc) from None

    @line_magic
    def cancel(self, line: str) -> Any:
        """Stop a job and every process of it: %cancel JOB"""
        try:
            args = parse_job_line(line, "%cancel")
            if args is None:
                return None
            return JobView(job(args.job).cancel())
        except NbscaleError as exc:
            raise user_error(exc) from None

    @line_magic
    def attach(self, line: str) -> Any:
        """Follow a job again (another kernel, or after a restart) and load its outputs when it ends:
        %attach JOB [--outputs a,b] [--log-ranks 0|all]. Ctrl-C detaches; the job keeps running."""
        try:
            args = parse_job_line(line, "%attach", outputs=True)
            if args is None:
                return None
            handle = job(args.job)
        except NbscaleError as exc:
            raise user_error(exc) from None
        record = watch(handle, "%attach", args.log_ranks, cancel_on_interrupt=False)
        return finish(self.shell, handle, record, args.outputs)
