"""Which names flow between steps, found by reading the code (AST), checked before anything runs.

A step's *inputs* are names it reads before defining them; each comes from
the nearest upstream step that defines it. A name nobody upstream defines, or
one that cannot travel (a module, an open file, a generator), is reported at
compile time with the step and the fix.
"""

from __future__ import annotations

import ast
import builtins
from dataclasses import dataclass, field

from ..errors import SpecError
from .model import Cell, Pipeline, Step

IPYTHON_NAMES = {
    "get_ipython",
    "display",
    "In",
    "Out",
    "exit",
    "quit",
    "_",
    "__",
    "___",
    "__session__",
}
KNOWN = set(dir(builtins)) | IPYTHON_NAMES


@dataclass
class Names:
    defined: set[str] = field(default_factory=set)
    free: list[str] = field(default_factory=list)  # read before defined, in order of first read
    late: set[str] = field(default_factory=set)  # globals read inside functions (read when called)
    modules: set[str] = field(default_factory=set)  # names bound by import
    unsendable: dict[str, str] = field(default_factory=dict)  # name -> why it cannot be passed on
    imported: set[str] = field(default_factory=set)  # top-level module names imported
    star: bool = False

    def read(self, name: str) -> None:
        if name not in self.defined and name not in self.free:
            self.free.append(name)

    def bind(self, name: str) -> None:
        self.defined.add(name)
        self.modules.discard(name)
        self.unsendable.pop(name, None)


def parse(source: str, where: str) -> ast.Module:
    try:
        return ast.parse(source)
    except SyntaxError:
        pass
    # IPython syntax (%magic, !shell) is valid in a notebook: let IPython turn it into Python
    from IPython.core.inputtransformer2 import TransformerManager

    try:
        return ast.parse(TransformerManager().transform_cell(source))
    except SyntaxError as exc:
        raise SpecError(
            where, f"has a syntax error: {exc.msg} (line {exc.lineno})", "fix the cell"
        ) from exc


def _stores_and_loads(node: ast.AST) -> tuple[list[str], list[str]]:
    """Names loaded and stored by an expression or simple statement, comprehension variables aside."""
    local: set[str] = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.comprehension):
            local |= {n.id for n in ast.walk(sub.target) if isinstance(n, ast.Name)}
        elif isinstance(sub, ast.Lambda):
            local |= {a.arg for a in ast.walk(sub.args) if isinstance(a, ast.arg)}
    loads, stores = [], []
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            if isinstance(sub.ctx, ast.Load) and sub.id not in local:
                loads.append(sub.id)
            elif isinstance(sub.ctx, ast.Store | ast.Del):
                stores.append(sub.id)
    return loads, stores


def _function_globals(node: ast.AST) -> set[str]:
    bound: set[str] = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.arg):
            bound.add(sub.arg)
        elif isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
            bound.add(sub.id)
        elif (
            isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            and sub is not node
        ):
            bound.add(sub.name)
        elif isinstance(sub, ast.alias):
            bound.add((sub.asname or sub.name).split(".")[0])
    loads = {
        s.id for s in ast.walk(node) if isinstance(s, ast.Name) and isinstance(s.ctx, ast.Load)
    }
    return loads - bound


def _visit(stmts: list[ast.stmt], names: Names) -> None:
    for stmt in stmts:
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            eager = list(stmt.decorator_list)
            if isinstance(stmt, ast.ClassDef):
                eager += stmt.bases + [k.value for k in stmt.keywords]
            else:
                eager += list(stmt.args.defaults) + [
                    d for d in stmt.args.kw_defaults if d is not None
                ]
            for expr in eager:
                for n in _stores_and_loads(expr)[0]:
                    names.read(n)
            names.late |= _function_globals(stmt) - {stmt.name}
            names.bind(stmt.name)
        elif isinstance(stmt, ast.Import | ast.ImportFrom):
            if isinstance(stmt, ast.ImportFrom):
                if stmt.level == 0 and stmt.module:
                    names.imported.add(stmt.module)
            else:
                names.imported |= {a.name for a in stmt.names}
            for alias in stmt.names:
                if alias.name == "*":
                    names.star = True
                    continue
                bound = alias.asname or alias.name.split(".")[0]
                names.bind(bound)
                names.modules.add(bound)
        elif isinstance(stmt, ast.If | ast.While):
            for n in _stores_and_loads(stmt.test)[0]:
                names.read(n)
            _visit(stmt.body, names)
            _visit(stmt.orelse, names)
        elif isinstance(stmt, ast.For | ast.AsyncFor):
            for n in _stores_and_loads(stmt.iter)[0]:
                names.read(n)
            for n in _stores_and_loads(stmt.target)[1]:
                names.bind(n)
            _visit(stmt.body, names)
            _visit(stmt.orelse, names)
        elif isinstance(stmt, ast.With | ast.AsyncWith):
            for item in stmt.items:
                for n in _stores_and_loads(item.context_expr)[0]:
                    names.read(n)
                if item.optional_vars is not None:
                    for n in _stores_and_loads(item.optional_vars)[1]:
                        names.bind(n)
                        names.unsendable[n] = "is bound by 'with ... as', usually a file or a lock"
            _visit(stmt.body, names)
        elif isinstance(stmt, ast.Try | ast.TryStar):
            _visit(stmt.body, names)
            for handler in stmt.handlers:
                if handler.name:
                    names.bind(handler.name)
                _visit(handler.body, names)
            _visit(stmt.orelse, names)
            _visit(stmt.finalbody, names)
        else:
            loads, stores = _stores_and_loads(stmt)
            for n in loads:
                names.read(n)
            for n in stores:
                names.bind(n)
            value = getattr(stmt, "value", None)
            why = _unsendable_value(value)
            if why:
                for n in stores:
                    names.unsendable[n] = why


def _unsendable_value(value: ast.AST | None) -> str | None:
    if isinstance(value, ast.GeneratorExp):
        return "is a generator, which cannot be saved; make it a list"
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "open":
        return "is an open file; pass its path or its contents instead"
    return None


def names_of(cells: list[Cell], where: str) -> Names:
    names = Names()
    for cell in cells:
        if cell.kind == "code" and cell.source.strip():
            _visit(parse(cell.source, f"{where}, cell {cell.origin}").body, names)
    return names


def analyse(pipeline: Pipeline) -> Pipeline:
    """Fill each step's inputs, outputs and parameters used; raise SpecError on a name that cannot flow."""
    info: dict[str, Names] = {}
    for name in pipeline.order():
        step = pipeline.steps[name]
        step.inputs, step.outputs = {}, []
        info[name] = names_of(step.body, f"step {name}")
    for name in pipeline.order():
        step = pipeline.steps[name]
        body = info[name]
        prelude = names_of(step.prelude, f"step {name} (imports/functions)")
        # a yaml step's own parameters cell declares what it takes; a tagged step gets only what it reads
        declared = set() if pipeline.kind == "tagged" else set(_assigned(step.parameters_cell))
        local = prelude.defined | declared | set(step.fixed_parameters)
        used = set(body.free) | body.late | set(prelude.free) | prelude.late | declared
        step.uses_parameters = [p for p in pipeline.parameters if p in used]
        if step.uses_parameters:
            local |= set(step.uses_parameters)
        ancestors = pipeline.ancestors(name)
        for var in body.free + sorted(body.late - body.defined):
            if var in local or var in KNOWN or var in step.inputs:
                continue
            producer = _producer(pipeline, info, name, var, ancestors)
            if producer is None:
                if var in body.late or body.star or prelude.star:
                    continue  # read inside a function that may never run, or hidden by import *
                others = [s for s in pipeline.steps if s != name and var in info[s].defined]
                if others:
                    raise SpecError(
                        f"step {name}",
                        f"reads {var!r}, which step {others[0]} defines, "
                        f"but {others[0]} is not upstream of {name}",
                        f"add prev:{others[0]} to the step (depends_on in pipeline.yaml)",
                    )
                raise SpecError(
                    f"step {name}",
                    f"reads {var!r}, which no earlier step defines",
                    "define it in an upstream step, an imports/functions cell, or as a parameter",
                )
            why = info[producer].unsendable.get(var)
            if var in info[producer].modules:
                why = "is a module imported there; import it in this step too (or in an 'imports' cell)"
            if why:
                raise SpecError(
                    f"step {name}", f"reads {var!r} from step {producer}, but {var!r} {why}"
                )
            step.inputs[var] = producer
    for step in pipeline.steps.values():
        for var, producer in step.inputs.items():
            outs = pipeline.steps[producer].outputs
            if var not in outs:
                outs.append(var)
    return pipeline


def _assigned(source: str) -> list[str]:
    if not source.strip():
        return []
    tree = parse(source, "parameters cell")
    return [
        n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
    ]


def _producer(
    pipeline: Pipeline, info: dict[str, Names], step: str, var: str, ancestors: set[str]
) -> str | None:
    candidates = [a for a in ancestors if var in info[a].defined]
    if not candidates:
        return None
    # the nearest: a candidate no other candidate descends from
    nearest = [
        c for c in candidates if not any(c in pipeline.ancestors(o) for o in candidates if o != c)
    ]
    if len(nearest) > 1:
        raise SpecError(
            f"step {step}",
            f"reads {var!r}, which both {nearest[0]} and {nearest[1]} define",
            "rename it in one of them so the source is unambiguous",
        )
    return nearest[0]


def local_imports(step: Step) -> set[str]:
    return names_of(step.prelude + step.body, f"step {step.name}").imported
