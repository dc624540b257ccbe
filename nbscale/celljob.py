"""A notebook cell as a job, without IPython: capture, sign, build the spec, submit.

``%%train`` is a thin face over ``prepare_cell(...).submit()``; scripts and
tests can do the same with any namespace dict.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import bundle
from .backends.base import DryRun as PlatformDryRun
from .capture import Capture, capture
from .jobs import Job, submit
from .runtime import phases
from .runtime.cell import KIND
from .specs import Entry, JobSpec


@dataclass
class PreparedCell:
    capture: Capture
    spec: JobSpec
    manifest: dict[str, Any]
    #: when each step of the submission happened (``nbscale.runtime.phases``, if timing is on)
    times: dict[str, float] = field(default_factory=dict)

    @property
    def bundle_path(self) -> Path:
        return Path(self.spec.entry.target)

    def report(self):
        return self.capture.report()

    def dry_run(self) -> DryRun:
        return DryRun(self)

    def write(self) -> Path:
        parts = {"cell.py": self.capture.source.encode(), **self.capture.parts}
        return bundle.write(self.bundle_path, self.manifest, parts)

    def submit(self) -> Job:
        self.times["bundle: write starts"] = time.time()
        self.write()
        self.times["bundle: written"] = time.time()
        try:
            job = submit(self.spec)
        except BaseException:
            self.bundle_path.unlink(missing_ok=True)
            raise
        if phases.on():
            self.times["submit: returned"] = time.time()
            for phase, when in self.times.items():
                phases.mark(job.record.info.get("job_dir"), phase, when)
        return job


def prepare_cell(
    source: str,
    namespace: dict[str, Any],
    spec: JobSpec,
    outputs: list[str] | tuple[str, ...] = (),
    inputs: list[str] | None = None,
    line_offset: int = 0,
) -> PreparedCell:
    """Capture and pre-flight the cell; ``spec``'s entry is replaced by the bundle it will run."""
    started = time.time()
    cap = capture(
        source, namespace, outputs=outputs, inputs=inputs, gpus=spec.gpus_per_proc, cwd=os.getcwd()
    )
    path = bundle.new_bundle_path(spec.name)
    manifest = {
        "kind": KIND,
        "name": spec.name,
        "line_offset": line_offset,
        "imports": cap.imports,
        "inputs": [
            {"name": i.name, "part": i.part, "how": i.how, "type": i.type, "size": i.size}
            for i in cap.inputs
        ],
        "input_names": [i.name for i in cap.items],
        "modules": cap.modules,
        "outputs": cap.outputs,
    }
    times = {"capture: starts": started, "capture: done": time.time()}
    return PreparedCell(cap, spec.replace(entry=Entry("bundle", str(path))), manifest, times)


class DryRun:
    """What ``--dry-run`` shows: what the backend would send (the platform's objects or
    request, or the spec a local backend would run), and as commentary the capture report
    and the cost estimate. Nothing is submitted."""

    def __init__(self, prepared: PreparedCell):
        self.prepared = prepared
        from .cost import check_budget, describe_estimate

        # over --max-cost: refused here, as submit would
        self.estimate = describe_estimate(check_budget(prepared.spec))
        self._plan: PlatformDryRun | None = None

    def spec_json(self) -> str:
        return json.dumps(self.prepared.spec.to_dict(), indent=2)

    def plan(self) -> PlatformDryRun:
        """What ``submit`` would send (``nbscale.jobs.dry_run_plan``), built without
        uploading or creating anything; the bundle is written to be hashed, then removed."""
        if self._plan is None:
            from .jobs import dry_run_plan

            self.prepared.write()
            try:
                self._plan = dry_run_plan(self.prepared.spec)
            finally:
                self.prepared.bundle_path.unlink(missing_ok=True)
        return self._plan

    def commentary(self) -> list[str]:
        """The lines for stderr, before the plan's own notes."""
        return ["dry run: nothing submitted", self.prepared.report().text(), self.estimate]

    def _repr_mimebundle_(self, include=None, exclude=None):
        from html import escape

        report = self.prepared.report()
        plan = self.plan()
        notes = plan.commentary()
        text = "\n".join(self.commentary()) + "\n" + notes + plan.text()
        html = (
            f"<div><b>dry run</b>: nothing submitted</div>{report.html()}"
            f"<div>{escape(self.estimate)}</div>"
            + "".join(f"<div>{escape(n)}</div>" for n in plan.notes)
            + f"<pre>{escape(plan.text())}</pre>"
        )
        return {"text/plain": text, "text/html": html}
