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
from .sweep_view import SweepDisplay, SweepFailed
from .train_args import TrainArgs, parse_train


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
            if args.sweep is not None:
                return sweep_cell(self.shell, args, source)
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


# -- %%train --sweep ----------------------------------------------------------------------


def _sweep_bundle(shell, args: TrainArgs, source: str):
    """The cell captured once, its bundle written beside the sweep's study (each trial's job
    copies it; the bundles folder is for one job's bundle, which that job takes)."""
    import dataclasses
    import secrets

    from nbscale import paths
    from nbscale.specs import Entry

    namespace = shell.user_ns
    # a parameter the notebook does not define yet is captured as None: the trial's value
    # replaces it before the cell runs (nbscale.runtime.cell.sweep_values)
    missing = [n for n in args.sweep.space.names if n not in namespace]
    if missing and args.inputs is None:
        namespace = {**namespace, **dict.fromkeys(missing)}
    prepared = prepare_cell(
        source, namespace, args.spec, outputs=args.outputs, inputs=args.inputs, line_offset=1
    )
    folder = paths.home() / "sweeps"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / f".{prepared.spec.name}-{secrets.token_hex(4)}.zip"
    prepared = dataclasses.replace(
        prepared, spec=prepared.spec.replace(entry=Entry("bundle", str(path)))
    )
    prepared.write()
    return prepared


def sweep_cell(shell, args: TrainArgs, source: str) -> Any:
    """Sweep the cell: one live table; the best trial's outputs and the ``Sweep`` (in
    ``--sweep-var``, default ``sweep``) in the notebook at the end. Interrupting stops the
    driver only; running the cell again resumes the same sweep. With ``--detach`` the
    driver runs in the background, so an interrupt leaves the whole sweep going; with
    ``--async`` the cell returns the ``Sweep`` at once."""
    import os

    from nbscale import sweep_runs
    from nbscale.specs import Entry

    sw = args.sweep
    prepared = _sweep_bundle(shell, args, source)
    written = prepared.bundle_path
    try:
        spec, notes = sweep_runs.prepare(
            prepared.spec, sw.space, sw.objective, cell_source=source, **sw.options
        )
        if args.dry_run:  # what would be sent on stdout, commentary on stderr
            report = prepared.report().text()
            show_dry_run(sweep_runs.dry_run(spec), "dry run: nothing started", report, *notes)
            return None
        # the same cell makes the same bundle and so the same sweep id: a re-run resumes it
        bundle = written.with_name(f"{spec.id}.cell.zip")
        os.replace(written, bundle)
        written = bundle
        spec = spec.replace(job=spec.job.replace(entry=Entry("bundle", str(bundle))))
        handle = sweep_runs.start(spec, notes=[prepared.capture.summary(), *notes])
    except NbscaleError as exc:
        written.unlink(missing_ok=True)
        raise user_error(exc) from None
    finally:
        if args.dry_run:
            written.unlink(missing_ok=True)
    shell.user_ns[sw.var] = handle
    if args.run_async or args.detach:
        try:  # the sweep goes on without this kernel: its driver runs in the background
            handle.detach()
        except NbscaleError as exc:
            raise user_error(exc) from None
    if args.run_async:  # shown as its table now; .run() follows it, .cancel() stops it
        return handle
    live = SweepDisplay()
    try:
        view = handle.run(on_update=live)
    except KeyboardInterrupt:
        if args.detach:
            live.note(
                f"interrupted: sweep {handle.id} goes on in the background; {sw.var}.run() "
                f"follows it again, nbscale sweep-cancel {handle.id} stops it"
            )
            raise JobInterrupted(f"stopped following sweep {handle.id}; it goes on") from None
        live.note(
            f"interrupted: sweep {handle.id} is not followed any more; its running trials go "
            "on. Run this cell again to resume it, or cancel it with "
            f"nbscale sweep-cancel {handle.id}"
        )
        raise JobInterrupted(
            f"stopped following sweep {handle.id}; its running trials go on"
        ) from None
    except NbscaleError as exc:
        raise user_error(exc) from None
    # the bundle stays beside the study (sweeps/<id>.cell.zip): the stored sweep names it,
    # and a re-run with more --trials starts new trials from it
    if view.status != SUCCEEDED:
        live.finish(view, spec)
        raise SweepFailed(view)
    loaded = _best_outputs(shell, handle, view)
    live.note(loaded + f"; the sweep is in {sw.var} ({sw.var}.best, .best_params, .trials)")
    live.finish(view, spec)
    return None


def _best_outputs(shell, handle, view) -> str:
    """The best trial's --outputs into the notebook, as a finished %%train brings its own."""
    best = view.best
    if best is None:
        return "no trial was scored"
    try:
        job = handle.best_job  # a remote trial: its backend is asked for it
        if job is None:
            return f"best: trial {best.number}; its outputs stay on {view.backend}"
        record = job.refresh()
        outputs = load_results(record, None)
    except NbscaleError as exc:
        raise user_error(exc) from None
    shell.user_ns.update(outputs)
    names = ", ".join(outputs) or "(no --outputs)"
    return f"outputs of the best trial ({best.number}, job {record.id}): {names}"
