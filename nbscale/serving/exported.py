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

**The lean form.** ``torch.export.load`` imports half of torch's compiler stack
(dynamo, the serializer, sympy): 1.3-1.7 s of a fresh replica's start on a 2-core
machine, more than ``import torch`` itself. So ``package`` also writes what
``lean`` makes of the saved program, for the torch version that wrote it:

- ``model.lean.py``: the graph's Python code, exactly as FX generated it for
  ``lean`` (aten operators only, through the ``torch`` module);
- ``model.lean.pt``: its tensors, by attribute name, read back with
  ``torch.load(weights_only=True)`` (no pickle of arbitrary objects).

Both files are in the artifact's signed file list like every other, and the
manifest names them with the torch version. ``load_program`` serves the lean
form when that version is the running torch's and falls back to
``torch.export.load`` (which reads older programs through its upgraders)
otherwise, or when the artifact has none. ``package`` writes the form only when
it gives exactly the program's output on the example, bit for bit, and its code
needs nothing but ``torch``.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable
from pathlib import Path
from typing import Any

LEAN_CODE = "model.lean.py"
LEAN_TENSORS = "model.lean.pt"
MANIFEST_KEY = "lean_form"


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


def _lean_globals() -> dict[str, Any]:
    """What FX's code for a graph of aten operators may name, all of it from ``torch``."""
    import torch

    return {"torch": torch, "device": torch.device, "inf": math.inf, "nan": math.nan}


def _global_names(code: Any) -> set[str]:
    """The global (and module-level) names ``code`` and the functions in it read."""
    import dis

    out = {i.argval for i in dis.get_instructions(code) if i.opname in ("LOAD_GLOBAL", "LOAD_NAME")}
    for const in code.co_consts:
        if hasattr(const, "co_code"):
            out |= _global_names(const)
    return out


def lean_form(call: Callable[[Any], Any]) -> tuple[str, dict[str, Any]] | None:
    """What ``lean`` made (``call``) as source and tensors, or None where it has no lean
    form (a general ``module()``, or code that names anything but ``torch``)."""
    import torch

    module = getattr(call, "module", None)
    if module is None:
        return None
    source = module.graph.python_code(root_module="self").src
    code = compile(source, LEAN_CODE, "exec")
    if not _global_names(code) <= set(_lean_globals()):
        return None
    tensors: dict[str, Any] = {}
    for node in module.graph.nodes:
        if node.op == "get_attr":
            value = operator.attrgetter(node.target)(module)
            if not isinstance(value, torch.Tensor) or "." in node.target:
                return None
            tensors[node.target] = value.detach()
    return source, tensors


def write_lean_form(program: Any, directory: Path, example: Any) -> dict[str, Any] | None:
    """Write ``program``'s lean form into ``directory`` when it reproduces the program's
    output on ``example`` exactly; its manifest entry, or None (nothing written)."""
    import torch

    served = lean(program)
    form = lean_form(served)
    if form is None:
        return None
    source, tensors = form
    code_path, tensor_path = directory / LEAN_CODE, directory / LEAN_TENSORS
    code_path.write_text(source)
    torch.save(tensors, tensor_path)
    entry = {"code": LEAN_CODE, "tensors": LEAN_TENSORS, "torch": torch.__version__}
    try:
        with torch.inference_mode():
            want = served(example)
            got = _read_lean_form(directory, entry)(example)
        same = (
            isinstance(got, torch.Tensor)
            and got.shape == want.shape
            and got.dtype == want.dtype
            and torch.equal(got, want)
        )
    except Exception:  # noqa: BLE001 - no lean form then; the program itself is served
        same = False
    if not same:
        code_path.unlink()
        tensor_path.unlink()
        return None
    return entry


def _read_lean_form(directory: Path, entry: dict[str, Any], device: Any = None):
    import torch

    tensors = torch.load(
        directory / entry["tensors"], map_location=device or "cpu", weights_only=True
    )
    source = (directory / entry["code"]).read_text()
    scope = _lean_globals()
    exec(compile(source, str(directory / entry["code"]), "exec"), scope)  # noqa: S102 - signed
    holder = type("LeanWeights", (), {})()
    holder.__dict__.update(tensors)
    forward = scope["forward"].__get__(holder)

    def call(x):
        return forward(x)[0]

    call.tensors = tensors  # for inspection
    return call


def usable_lean_form(entry: dict[str, Any] | None) -> bool:
    """Whether a manifest's ``lean_form`` entry may be served here: written by this torch."""
    import torch

    return bool(entry) and entry.get("torch") == torch.__version__


def load_program(model_dir: str | Path, device: Any = None) -> Callable[[Any], Any]:
    """The served callable of an artifact's ``model.pt2``: its lean form where the artifact
    has one written by this torch version, ``lean(torch.export.load(...))`` otherwise.
    The caller has checked the artifact's signature."""
    import torch

    directory = Path(model_dir)
    manifest = directory / "nbscale.json"
    entry = json.loads(manifest.read_text()).get(MANIFEST_KEY) if manifest.is_file() else None
    if usable_lean_form(entry):
        served = _read_lean_form(directory, entry, device)
        served.loaded = f"from its lean form ({entry['code']}, {entry['tensors']})"
        return served
    served = lean(torch.export.load(str(directory / "model.pt2")), device)
    why = "no lean form" if not entry else f"its lean form is torch {entry.get('torch')}'s"
    served.loaded = f"with torch.export.load ({why})"
    return served
