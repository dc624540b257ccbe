"""A lean callable for serving a ``torch.export`` program of one tensor in, one tensor out.

``ExportedProgram.module()`` builds a general ``GraphModule``: every call
flattens its arguments and results through pytree specs, runs the module
hooks, and reaches each weight through nested ``nn.Module.__getattr__``
lookups (``getattr(self.net, "0").weight``). For a small model that costs more
than the model: 32 us a call against 16 us for the same graph without it.

``lean(program)`` keeps the graph exactly as exported (the same aten
operators in the same order, so the same numbers) and changes only the
Python around it, with FX's own tools: plain (non-pytree) code generation and
every weight, buffer and constant bound to one top-level attribute. Programs
with other input or output shapes (several tensors, dicts), or attributes that
are not tensors (control-flow subgraphs), are served by ``module()`` as before.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any


def lean(program: Any, device: Any = None) -> Callable[[Any], Any]:
    """The program's forward as ``f(x) -> y``; ``device``: where its weights go."""
    import torch

    module = program.module(check_guards=False)
    module.validate_inputs = False  # the caller checks inputs against the model's signature
    if device is not None:
        module = module.to(device)
    in_spec, out_spec = getattr(module, "_in_spec", None), getattr(module, "_out_spec", None)
    if in_spec is None or out_spec is None or in_spec.num_leaves != 1 or out_spec.num_leaves != 1:
        return module
    if out_spec.type is not None:  # a tuple, list or dict holding one tensor: keep its shape
        return module
    graph = module.graph
    for node in graph.nodes:
        if node.op == "get_attr":
            value = operator.attrgetter(node.target)(module)
            if not isinstance(value, torch.Tensor):
                return module  # nothing rewritten yet
    for node in list(graph.nodes):
        if node.op == "get_attr" and "." in node.target:
            value = operator.attrgetter(node.target)(module)
            flat = "_w_" + node.target.replace(".", "_")
            if not hasattr(module, flat):
                setattr(module, flat, value)  # the same tensor object, not a copy
            node.target = flat
    graph.set_codegen(torch.fx.graph.CodeGen())
    module.recompile()
    forward = module.forward

    def call(x):
        return forward(x)[0]

    call.module = module  # for inspection: the rewritten GraphModule
    return call
