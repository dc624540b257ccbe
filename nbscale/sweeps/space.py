"""The search space and the objective of a sweep, the same words on every face.

``lr=loguniform(1e-4,1e-1) batch=choice(32,64) layers=int(2,6)`` and ``val_loss:min``
are read with Python's own parser (``ast``): a distribution is a call with literal
arguments, nothing is evaluated. Each backend maps a ``Param`` to its own form
(Optuna distributions, Katib ``feasibleSpace``, SageMaker ``ParameterRanges``).
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import SpecError

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# what Katib's StdOut collector and a SageMaker metric regex both read as a name
_METRIC_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
#: distribution -> (kind, log scale)
DISTRIBUTIONS = {
    "uniform": ("float", False),
    "loguniform": ("float", True),
    "int": ("int", False),
    "logint": ("int", True),
    "choice": ("categorical", False),
}
HOW = (
    "write NAME=DIST(...), DIST one of uniform(low,high[,step]), loguniform(low,high), "
    "int(low,high[,step]), logint(low,high), choice(a,b,...); e.g. lr=loguniform(1e-4,1e-1)"
)
DIRECTIONS = ("min", "max")
RESERVED = {"nbscale", "param", "log_metric"}  # names the trial code itself uses


@dataclass(frozen=True)
class Param:
    """One dimension: ``kind`` float, int or categorical; ``low``/``high`` inclusive."""

    name: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    @property
    def discrete(self) -> bool:
        """Whether it has finitely many values (a grid can be laid over it)."""
        return self.kind != "float" or self.step is not None

    def grid(self) -> list[Any]:
        if self.kind == "categorical":
            return list(self.choices)
        if not self.discrete:
            raise SpecError(
                f"sweep.{self.name}",
                "a continuous range has no grid",
                "give it a step, e.g. uniform(0,1,0.1), or use --algorithm tpe or random",
            )
        step = self.step or 1
        count = int(math.floor((self.high - self.low) / step + 1e-9)) + 1
        values = [self.low + i * step for i in range(count)]
        return [int(v) if self.kind == "int" else round(v, 12) for v in values]

    def cast(self, value: Any) -> Any:
        """A value as the trial receives it (platforms hand trials strings)."""
        if self.kind == "categorical":
            if value in self.choices:
                return value
            for choice in self.choices:
                if str(choice) == str(value):
                    return choice
            raise SpecError(f"param {self.name}", f"{value!r} is not one of {list(self.choices)}")
        number = float(value)
        return int(round(number)) if self.kind == "int" else number

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.kind == "categorical":
            out["choices"] = list(self.choices)
        else:
            out.update(low=self.low, high=self.high, log=self.log)
            if self.step is not None:
                out["step"] = self.step
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Param:
        return cls(
            name=data["name"],
            kind=data["kind"],
            low=data.get("low"),
            high=data.get("high"),
            log=bool(data.get("log")),
            step=data.get("step"),
            choices=tuple(data.get("choices") or ()),
        )

    def __str__(self) -> str:
        if self.kind == "categorical":
            return f"{self.name}=choice({', '.join(repr(c) for c in self.choices)})"
        dist = {("float", False): "uniform", ("float", True): "loguniform"}.get(
            (self.kind, self.log), "logint" if self.log else "int"
        )
        step = f",{self.step}" if self.step is not None else ""
        return f"{self.name}={dist}({self.low},{self.high}{step})"


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: str = "min"

    @property
    def minimize(self) -> bool:
        return self.direction == "min"

    def better(self, a: float, b: float) -> bool:
        return a < b if self.minimize else a > b

    def __str__(self) -> str:
        return f"{self.metric}:{self.direction}"


@dataclass(frozen=True)
class Space:
    params: tuple[Param, ...] = field(default_factory=tuple)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def __getitem__(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def grid_size(self) -> int:
        size = 1
        for p in self.params:
            size *= len(p.grid())
        return size

    def cast(self, values: dict[str, Any]) -> dict[str, Any]:
        return {p.name: p.cast(values[p.name]) for p in self.params if p.name in values}

    def to_list(self) -> list[dict[str, Any]]:
        return [p.to_dict() for p in self.params]

    @classmethod
    def from_list(cls, items: list[dict[str, Any]]) -> Space:
        return cls(tuple(Param.from_dict(d) for d in items))

    def __str__(self) -> str:
        return " ".join(str(p) for p in self.params)


def _literal(node: ast.AST, where: str) -> Any:
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise SpecError(
            where,
            f"{ast.unparse(node)!r} is not a literal value",
            "write numbers or quoted strings",
        ) from None


def _number(value: Any, where: str, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpecError(where, f"{what} must be a finite number, got {value!r}", HOW)
    return value


def parse_param(text: str) -> Param:
    """One ``NAME=DIST(...)``."""
    name, eq, expr = text.partition("=")
    name = name.strip()
    where = f"sweep {text.strip()!r}"
    if not eq or not name:
        raise SpecError(where, "is not NAME=DIST(...)", HOW)
    if not _NAME_RE.match(name) or name in RESERVED:
        raise SpecError(
            where,
            f"{name!r} cannot be a parameter name: the trial receives it as a Python variable",
            "use letters, digits and '_', not starting with a digit",
        )
    try:
        node = ast.parse(expr.strip(), mode="eval").body
    except SyntaxError:
        raise SpecError(where, f"{expr.strip()!r} does not parse", HOW) from None
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or node.keywords:
        raise SpecError(where, f"{expr.strip()!r} is not a distribution call", HOW)
    dist = node.func.id
    if dist not in DISTRIBUTIONS:
        raise SpecError(where, f"unknown distribution {dist!r}", HOW)
    kind, log = DISTRIBUTIONS[dist]
    args = [_literal(a, where) for a in node.args]
    if kind == "categorical":
        if len(args) < 1:
            raise SpecError(where, "choice() is empty", "give at least one value: choice(32,64)")
        if len({repr(a) for a in args}) != len(args):
            raise SpecError(where, "choice() repeats a value", "list each value once")
        bad = [a for a in args if not isinstance(a, (int, float, str, bool))]
        if bad:
            raise SpecError(where, f"choice() takes numbers, strings or booleans, not {bad[0]!r}")
        return Param(name, kind, choices=tuple(args))
    if len(args) not in (2, 3) or (log and len(args) == 3):
        raise SpecError(where, f"{dist}() takes low, high" + ("" if log else "[, step]"), HOW)
    low = _number(args[0], where, "low")
    high = _number(args[1], where, "high")
    step = _number(args[2], where, "step") if len(args) == 3 else None
    if kind == "int" and not all(isinstance(v, int) for v in (low, high, step or 1)):
        raise SpecError(where, f"{dist}() takes whole numbers", "e.g. layers=int(2,6)")
    if not low < high:
        raise SpecError(
            where, f"the range is empty: low {low} is not below high {high}", "swap or widen it"
        )
    if log and low <= 0:
        raise SpecError(
            where, f"a log scale needs low > 0, got {low}", "e.g. loguniform(1e-4,1e-1)"
        )
    if step is not None and (step <= 0 or step > high - low):
        raise SpecError(where, f"step {step} does not fit the range {low}..{high}")
    return Param(
        name, kind, low=float(low) if kind == "float" else low, high=high, log=log, step=step
    )


def parse_space(items: list[str] | str | dict[str, str]) -> Space:
    """``["lr=loguniform(1e-4,1e-1)", ...]``, one string of them, or ``{"lr": "loguniform(...)"}``."""
    if isinstance(items, dict):
        items = [f"{k}={v}" for k, v in items.items()]
    elif isinstance(items, str):
        items = split_top_level(items)
    params = [parse_param(t) for t in items if t.strip()]
    if not params:
        raise SpecError("sweep", "the search space is empty", HOW)
    names = [p.name for p in params]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SpecError("sweep", f"{', '.join(dupes)} given twice", "name each parameter once")
    return Space(tuple(params))


def split_top_level(text: str) -> list[str]:
    """Split on whitespace outside brackets and quotes, each token kept as written (quotes
    too): ``a=choice('x y', 2) b=int(1, 3)`` is two tokens."""
    out, depth, quote, current = [], 0, "", ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(0, depth - 1)
        elif ch.isspace() and depth == 0:
            if current:
                out.append(current)
            current = ""
            continue
        current += ch
    if current:
        out.append(current)
    return out


def parse_objective(text: str) -> Objective:
    """``val_loss:min`` or ``accuracy:max``."""
    metric, _, direction = str(text).strip().partition(":")
    metric, direction = metric.strip(), (direction.strip().lower() or "")
    how = "write METRIC:min or METRIC:max, METRIC the name given to nbscale.log_metric"
    if not metric or not _METRIC_RE.match(metric):
        raise SpecError(
            "objective",
            f"{text!r} names no metric every platform can read from a log line",
            how + " (letters, digits, '_' and '-')",
        )
    if direction not in DIRECTIONS:
        raise SpecError("objective", f"{text!r} says neither min nor max", how)
    return Objective(metric, direction)
