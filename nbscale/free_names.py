"""The names a cell reads before it binds them, found without running it.

Module-level statements are walked in execution order (AST); what nested
scopes (function and lambda bodies, class bodies, comprehensions) read from
the module scope comes from ``symtable``, which knows Python's scoping rules.
"""

from __future__ import annotations

import ast
import symtable

CELL_FILENAME = "<%%train cell>"


class _TopLevel(ast.NodeVisitor):
    """Module-scope loads in execution order; a load counts as free when nothing bound it before.

    Nested scopes (function and lambda bodies, class bodies, comprehensions past
    their first iterable) are skipped here: symtable answers for them.
    """

    def __init__(self):
        self.bound: set[str] = set()
        self.free: list[str] = []

    def _load(self, name: str) -> None:
        if name not in self.bound and name not in self.free:
            self.free.append(name)

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self._load(node.id)
        else:
            self.bound.add(node.id)

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        for target in node.targets:
            self.visit(target)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)
        self.visit(node.annotation)
        self.visit(node.target)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self.visit(node.value)
        if isinstance(node.target, ast.Name):
            self._load(node.target.id)
        self.visit(node.target)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        self.visit(node.target)

    def _visit_for(self, node) -> None:
        self.visit(node.iter)
        self.visit(node.target)
        for stmt in [*node.body, *node.orelse]:
            self.visit(stmt)

    visit_For = visit_AsyncFor = _visit_for

    def _visit_with(self, node) -> None:
        for item in node.items:
            self.visit(item.context_expr)
            if item.optional_vars is not None:
                self.visit(item.optional_vars)
        for stmt in node.body:
            self.visit(stmt)

    visit_With = visit_AsyncWith = _visit_with

    def _visit_function(self, node) -> None:
        for deco in node.decorator_list:
            self.visit(deco)
        self.visit(node.args)  # defaults and annotations run now; the body runs later
        if getattr(node, "returns", None):
            self.visit(node.returns)
        self.bound.add(node.name)

    visit_FunctionDef = visit_AsyncFunctionDef = _visit_function

    def visit_arguments(self, node: ast.arguments) -> None:
        for default in [*node.defaults, *[d for d in node.kw_defaults if d is not None]]:
            self.visit(default)
        for arg in [*node.posonlyargs, *node.args, *node.kwonlyargs, node.vararg, node.kwarg]:
            if arg is not None and arg.annotation is not None:
                self.visit(arg.annotation)

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self.visit(node.args)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for expr in [*node.decorator_list, *node.bases, *[k.value for k in node.keywords]]:
            self.visit(expr)
        self.bound.add(node.name)

    def _visit_comprehension(self, node) -> None:
        self.visit(node.generators[0].iter)  # only the first iterable runs in the enclosing scope

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _visit_comprehension

    def visit_alias(self, node: ast.alias) -> None:
        if node.name != "*":
            self.bound.add(node.asname or node.name.split(".")[0])

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.type is not None:
            self.visit(node.type)
        if node.name:
            self.bound.add(node.name)
        for stmt in node.body:
            self.visit(stmt)

    def visit_MatchAs(self, node) -> None:
        if node.pattern is not None:
            self.visit(node.pattern)
        if node.name:
            self.bound.add(node.name)

    def visit_MatchStar(self, node) -> None:
        if node.name:
            self.bound.add(node.name)

    def visit_Global(self, node: ast.Global) -> None:
        pass


def _nested_globals(table: symtable.SymbolTable) -> set[str]:
    out: set[str] = set()
    for child in table.get_children():
        for sym in child.get_symbols():
            if sym.is_global() and sym.is_referenced():
                out.add(sym.get_name())
        out |= _nested_globals(child)
    return out


def free_names(source: str, filename: str = CELL_FILENAME) -> tuple[list[str], list[str]]:
    """``(now, later)``: names read before the cell binds them, and names only read inside
    functions/lambdas/classes/comprehensions that the cell never binds at top level."""
    scan = _TopLevel()
    scan.visit(ast.parse(source, filename))
    table = symtable.symtable(source, filename, "exec")
    later = sorted(_nested_globals(table) - scan.bound - set(scan.free))
    return scan.free, later
