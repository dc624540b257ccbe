"""``%%train``: run the cell as a distributed job and bring its outputs back.

Thin: the arguments come from ``train_args``, capture/signing/submitting from
``nbscale.celljob``, the live view from ``progress``. The only thing decided
here is what the user sees, and that Ctrl-C cancels the job unless --detach.
"""

from __future__ import annotations

import signal
from typing import Any

from IPython.core.magic import Magics, cell_magic, magics_class

from nbscale.celljob import prepare_cell
from nbscale.errors import NbscaleError
from nbscale.faces.text import show_dry_run
from nbscale.jobs import Job
from nbscale.results import load_results
from nbscale.store.jobs import SUCCEEDED, JobRecord

from .display import CellJobFailed, JobInterrupted, TrainResult, user_error
from .progress import make_view
from .train_args import parse_train


def _cancel_uninterrupted(handle: Job) -> JobRecord:
    """Cancel with Ctrl-C ignored: a second press must not leave half the job's processes."""
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: nothing to shield
        return handle.cancel()
    try:
        return handle.cancel()
    finally:
        signal.signal(signal.SIGINT, previous)


def watch(
    handle: Job,
    title: str,
    ranks: list[int] | None,
    cancel_on_interrupt: bool,
    note: str | None = None,
) -> JobRecord:
    """Stream the job into a view until it ends; Ctrl-C cancels it or leaves it running."""
    view = make_view(handle, title)
    if note:
        view.note(note)
    try:
        for rank, line in handle.follow(ranks=ranks, on_poll=view.poll):
            view.line(rank, line)
    except KeyboardInterrupt:
        if not cancel_on_interrupt:
            view.note(
                f"interrupted: job {handle.id} keeps running; %attach {handle.id} to follow it again"
            )
            raise JobInterrupted(f"detached from job {handle.id}, which keeps running") from None
        view.note(f"interrupted: cancelling job {handle.id}")
        record = _cancel_uninterrupted(handle)
        view.finish(record)
        raise JobInterrupted(f"job {handle.id} {record.status.lower()}") from None
    record = handle.refresh()
    view.finish(record)
    return record


def finish(shell, handle: Job, record: JobRecord, names: list[str] | None) -> TrainResult:
    """Outputs into the user's namespace on success; the cell's own error otherwise."""
    if record.status != SUCCEEDED:
        raise CellJobFailed(record)
    try:
        outputs = load_results(record, names)
    except NbscaleError as exc:
        raise user_error(exc) from None
    shell.user_ns.update(outputs)
    return TrainResult(record, outputs)


def _note(prepared) -> str:
    """What travelled and, when the job costs anything or has a budget, its estimate."""
    from nbscale.cost import describe_estimate, spec_estimate

    note = prepared.capture.summary()
    try:
        est = spec_estimate(prepared.spec)
    except NbscaleError:  # no price known: the job runs, it just has no estimate
        return note
    if est["per_hour"] or est["max_cost"] is not None:
        note += "\n" + describe_estimate(est)
    return note


@magics_class
class TrainMagics(Magics):
    @cell_magic
    def train(self, line: str, cell: str) -> Any:
        """Run this cell as a distributed job: %%train --procs-per-node 2 --outputs model,history"""
        try:
            args = parse_train(line)
            if args is None:
                return None
            source = self.shell.transform_cell(cell) if "%" in cell or "!" in cell else cell
            prepared = prepare_cell(
                source,
                self.shell.user_ns,
                args.spec,
                outputs=args.outputs,
                inputs=args.inputs,
                line_offset=1,
            )
            if args.dry_run:  # exactly what would be sent on stdout, commentary on stderr
                dry = prepared.dry_run()
                show_dry_run(dry.plan(), *dry.commentary())
                return None
            handle = prepared.submit()
        except NbscaleError as exc:
            raise user_error(exc) from None
        if args.run_async:
            return handle
        record = watch(
            handle,
            "%%train",
            args.log_ranks,
            cancel_on_interrupt=not args.detach,
            note=_note(prepared),
        )
        if record.terminal:
            # the job has read its bundle; the results live on in the job directory
            prepared.bundle_path.unlink(missing_ok=True)
        return finish(self.shell, handle, record, None)
