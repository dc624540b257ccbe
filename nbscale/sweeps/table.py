"""A sweep as a table: trials best first, for the notebook (HTML, updated in place while the
sweep runs), the terminal and ``repr``."""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .view import SweepView, TrialView


def _num(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{int(seconds // 60)} min {int(seconds % 60)} s"


def summary(view: SweepView) -> str:
    counts = view.counts()
    done = sum(counts.get(s, 0) for s in ("SUCCEEDED", "PRUNED"))
    parts = [
        f"{counts[s]} {s.lower()}"
        for s in ("RUNNING", "PRUNED", "FAILED", "CANCELLED")
        if counts.get(s)
    ]
    line = f"sweep {view.id} on {view.backend}: {view.status}, {done}/{view.planned} trials done"
    if parts:
        line += f" ({', '.join(parts)})"
    best = view.best
    metric = view.objective.split(":")[0]
    if best is not None:
        shown = ", ".join(f"{k}={_num(v)}" for k, v in best.params.items())
        line += f"; best {metric} {_num(best.value)} (trial {best.number}: {shown})"
    if view.cost:  # nothing said where trials cost nothing (this machine, unpriced)
        line += f"; ${view.cost:.2f} spent"
    return line


def rows(view: SweepView) -> tuple[list[str], list[list[str]]]:
    names: list[str] = []
    for t in view.trials:
        names.extend(k for k in t.params if k not in names)
    head = ["trial", "status", *names, "last", view.objective, "duration", "cost"]
    best = view.best
    out = []
    for t in view.ranked():
        out.append(
            [
                str(t.number) + (" *" if best is not None and t.number == best.number else ""),
                t.status,
                *(_num(t.params.get(n)) for n in names),
                _num(t.last),
                _num(t.value),
                _duration(t.duration),
                f"${t.cost:.2f}" if t.cost else "",
            ]
        )
    return head, out


def text(view: SweepView) -> str:
    head, body = rows(view)
    widths = [
        max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(head)
    ]
    lines = [summary(view), "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in body]
    lines += [f"note: {n}" for n in view.notes]
    failed = [t for t in view.trials if t.status == "FAILED" and t.error]
    if failed:
        last = failed[-1]
        lines.append(f"trial {last.number} failed: {last.error.strip().splitlines()[-1]}")
    return "\n".join(lines)


def html(view: SweepView) -> str:
    head, body = rows(view)
    cells = "".join(f"<th>{escape(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>" for r in body)
    notes = "".join(f"<div>{escape(n)}</div>" for n in view.notes)
    return (
        f'<div class="nbscale-sweep" data-sweep="{escape(view.id)}" data-status="{escape(view.status)}">'
        f"<div><b>{escape(summary(view))}</b></div>{notes}"
        f"<table><thead><tr>{cells}</tr></thead><tbody>{trs}</tbody></table></div>"
    )


def render(view: SweepView) -> dict[str, str]:
    return {"text/plain": text(view), "text/html": html(view)}


def trial_line(t: TrialView) -> str:
    shown = ", ".join(f"{k}={_num(v)}" for k, v in t.params.items())
    return f"trial {t.number} {t.status}: {shown} -> {_num(t.value if t.value is not None else t.last)}"
