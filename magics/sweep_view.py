"""What a running sweep looks like in the notebook: one output, updated in place.

The table of trials (``nbscale.sweeps.table.render``) is displayed once with a display id
and updated while the sweep runs, no more often than something changes (or every few
seconds, for the durations); when it ends, the same output gets the final table and,
where matplotlib is importable, Optuna's optimization history and parallel coordinates,
drawn from an in-memory study of the trials (so they are the same on every backend).
"""

from __future__ import annotations

import base64
import io
import time
import warnings
from html import escape
from typing import Any

from nbscale.backends.sweep_base import SUCCEEDED, SweepView
from nbscale.errors import NbscaleError
from nbscale.sweeps.spec import SweepSpec
from nbscale.sweeps.table import render

REFRESH = 3.0  # seconds between updates when only the clock moved


class SweepFailed(NbscaleError):
    """A sweep that ended without succeeding: why, in one message (the table shows each trial)."""

    def __init__(self, view: SweepView):
        why = (view.error or "no reason recorded").removeprefix("failed: ")
        super().__init__(f"sweep {view.id} {view.status.lower()}: {why}")
        self.view = view

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]


def _state(view: SweepView) -> tuple:
    return (
        view.status,
        tuple((t.number, t.status, t.value, t.last, t.steps) for t in view.trials),
        tuple(view.notes),
    )


class SweepDisplay:
    """``on_update`` of ``Sweep.run`` for a notebook."""

    def __init__(self) -> None:
        self.handle: Any = None
        self.view: SweepView | None = None
        self.lines: list[str] = []  # said by the magic under the table (interrupted, ...)
        self.figures: list[tuple[str, str]] = []  # (title, PNG base64) at the end
        self._state: tuple | None = None
        self._shown = 0.0

    def _bundle(self) -> dict[str, str]:
        assert self.view is not None
        data = render(self.view)
        if self.lines:
            data["text/plain"] += "".join(f"\n{line}" for line in self.lines)
            data["text/html"] += "".join(f"<div>{escape(line)}</div>" for line in self.lines)
        if self.figures:
            data["text/html"] += (
                "<div>"
                + "".join(
                    f'<img alt="{escape(title)}" title="{escape(title)}" '
                    f'src="data:image/png;base64,{png}" style="max-width:49%"/>'
                    if png
                    else f"<div>{escape(title)}</div>"
                    for title, png in self.figures
                )
                + "</div>"
            )
            data["text/plain"] += "\n(plots: " + ", ".join(t for t, _ in self.figures) + ")"
        return data

    def _show(self) -> None:
        from IPython.display import display

        data = self._bundle()
        if self.handle is None:
            self.handle = display(data, raw=True, display_id=True)
        else:
            self.handle.update(data, raw=True)
        self._shown = time.monotonic()

    def __call__(self, view: SweepView) -> None:
        state = _state(view)
        running = any(t.status == "RUNNING" for t in view.trials)
        if state == self._state and not (running and time.monotonic() - self._shown >= REFRESH):
            return
        self._state = state
        self.view = view
        self._show()

    def note(self, line: str) -> None:
        self.lines.append(line)
        if self.view is not None:
            self._show()

    def finish(self, view: SweepView, spec: SweepSpec | None = None) -> None:
        """The final table, with the plots where there are any to draw."""
        self.view = view
        if spec is not None:
            self.figures = plots(view, spec)
        self._show()


def study_of(view: SweepView, spec: SweepSpec):
    """An in-memory Optuna study holding the view's finished trials (any backend's)."""
    import optuna

    from nbscale.backends.local.sweeps import distributions

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = distributions(spec)
    study = optuna.create_study(direction="minimize" if spec.objective.minimize else "maximize")
    for t in sorted(view.trials, key=lambda t: t.number):
        if t.status != SUCCEEDED or t.value is None:
            continue
        try:
            params = spec.space.cast(t.params)
        except Exception:  # noqa: BLE001 - a value the space no longer holds: not plotted
            continue
        if set(params) != set(dists):
            continue
        study.add_trial(
            optuna.trial.create_trial(params=params, distributions=dists, value=float(t.value))
        )
    return study


def _png(ax) -> str:
    import matplotlib.pyplot as plt

    fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
    buf = io.BytesIO()
    fig.set_size_inches(6, 4)
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)  # not shown again by the inline backend at the end of the cell
    return base64.b64encode(buf.getvalue()).decode()


def plots(view: SweepView, spec: SweepSpec) -> list[tuple[str, str]]:
    """Optimization history and parallel coordinates as PNGs; none without matplotlib or
    with fewer than two scored trials."""
    try:
        import matplotlib  # noqa: F401
        from optuna.visualization import matplotlib as ovm
    except ImportError:
        return []
    study = study_of(view, spec)
    if len(study.trials) < 2:
        return []
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
        for title, draw in (
            ("optimization history", ovm.plot_optimization_history),
            ("parallel coordinates", ovm.plot_parallel_coordinate),
        ):
            try:
                out.append((title, _png(draw(study))))
            except Exception as exc:  # noqa: BLE001 - a plot that cannot be drawn is skipped
                out.append((f"{title}: not drawn ({exc})", ""))
    return out
