"""What a cell needs from the kernel, and whether it can travel.

``capture(source, namespace)`` reads the cell's free names (AST + symtable),
looks them up in the namespace and turns each into one of:

- an import statement (modules, and functions/classes importable from a real
  module, aliases and ``from`` imports kept);
- a value: notebook functions, classes, lambdas and closures by value with
  cloudpickle; tensors and ``nn.Module``s with ``torch.save`` (cloudpickle as
  its pickler, so notebook classes travel too); everything else with cloudpickle;
- source files: local ``.py`` modules the kernel imported travel with the bundle.

Pre-flight happens here: every value is pickled and unpickled once, its size
recorded, and anything that cannot travel is named with the reason and a
suggestion (``CaptureError``), before anything is written or submitted.
No IPython import: the magic passes ``shell.user_ns``.
"""

from __future__ import annotations

import builtins
import io
import os
import pickle
import re
import socket
import sqlite3
import sys
import threading
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cloudpickle

from .errors import NbscaleError
from .free_names import CELL_FILENAME, free_names
from .words import count

__all__ = [
    "CELL_FILENAME",
    "Capture",
    "CaptureError",
    "capture",
    "dump_value",
    "free_names",
    "load_value",
]

# names IPython keeps in user_ns that a cell never means to send
_KERNEL_NAMES = re.compile(
    r"^(In|Out|get_ipython|exit|quit|_+|_i+|_i\d+|_\d+|_dh|_ih|_oh|__\w+__)$"
)
_LOCK_TYPES = (
    type(threading.Lock()),
    type(threading.RLock()),
    threading.Condition,
    threading.Event,
    threading.Semaphore,
)
_SKIP_DIRS = ("site-packages", "dist-packages", f"{os.sep}.venv", f"{os.sep}lib{os.sep}python")


class CaptureError(NbscaleError):
    """One or more names the cell needs cannot travel; nothing was submitted."""

    def __init__(self, problems: list[tuple[str, str, str]]):
        self.problems = problems
        lines = [f"  - {name}: {reason}; {hint}" for name, reason, hint in problems]
        noun = "name" if len(problems) == 1 else "names"
        super().__init__(
            f"{len(problems)} {noun} the cell needs cannot be sent to the job, "
            "so nothing was submitted:\n" + "\n".join(lines)
        )


@dataclass
class Item:
    """One name the cell gets from the kernel."""

    name: str
    kind: str  # import | function | class | tensor | module | object
    how: str  # the import statement, or "cloudpickle" / "torch.save"
    type: str
    size: int = 0
    part: str | None = None  # bundle part holding the value


@dataclass
class Capture:
    source: str
    items: list[Item]
    parts: dict[str, bytes]  # part name -> bytes (inputs/*, src/*)
    modules: list[str]  # local module files shipped, as bundle parts
    outputs: list[str]
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def imports(self) -> list[str]:
        return [i.how for i in self.items if i.kind == "import"]

    @property
    def inputs(self) -> list[Item]:
        return [i for i in self.items if i.kind != "import"]

    @property
    def size(self) -> int:
        return sum(len(b) for b in self.parts.values()) + len(self.source.encode())

    def report(self) -> CaptureReport:
        return CaptureReport(self)

    def summary(self) -> str:
        """One line: what is sent, how big, how long capture took."""
        sent = ", ".join(f"{i.name} ({human_size(i.size)})" for i in self.inputs) or "no values"
        imports = ", ".join(i.name for i in self.items if i.kind == "import")
        files = f"; {count(len(self.modules), 'local source file')}" if self.modules else ""
        return (
            f"sent {human_size(self.size)} in {self.seconds * 1000:.0f} ms: {sent}"
            + (f"; imports: {imports}" if imports else "")
            + files
        )


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


class CaptureReport:
    """What travels with the cell; renders as text and as an HTML table."""

    def __init__(self, capture: Capture):
        self.capture = capture

    def rows(self) -> list[tuple[str, str, str, str]]:
        rows = [
            (i.name, i.kind, i.how, human_size(i.size) if i.kind != "import" else "-")
            for i in self.capture.items
        ]
        rows += [
            (
                part.removeprefix("src/"),
                "source file",
                "shipped",
                human_size(len(self.capture.parts[part])),
            )
            for part in self.capture.modules
        ]
        return rows

    def text(self) -> str:
        c = self.capture
        lines = [
            f"bundle: {human_size(c.size)}, captured in {c.seconds * 1000:.0f} ms; "
            f"outputs: {', '.join(c.outputs) or '(none)'}"
        ]
        lines += [f"  {n:<20} {k:<12} {h:<40} {s}" for n, k, h, s in self.rows()]
        lines += [f"  warning: {w}" for w in c.warnings]
        return "\n".join(lines)

    def html(self) -> str:
        from html import escape

        c = self.capture
        body = "".join(
            "<tr>" + "".join(f"<td>{escape(x)}</td>" for x in row) + "</tr>" for row in self.rows()
        )
        warn = "".join(f"<div>warning: {escape(w)}</div>" for w in c.warnings)
        return (
            f"<div><b>bundle</b>: {human_size(c.size)}, captured in {c.seconds * 1000:.0f} ms; "
            f"outputs: {escape(', '.join(c.outputs) or '(none)')}</div>"
            "<table><tr><th>name</th><th>kind</th><th>how</th><th>size</th></tr>"
            f"{body}</table>{warn}"
        )

    def _repr_mimebundle_(self, include=None, exclude=None):
        return {"text/plain": self.text(), "text/html": self.html()}


# --------------------------------------------------------------------------- values


def _torch():
    return sys.modules.get("torch")  # a tensor in the namespace means torch is imported already


def _is_torch_value(value: Any) -> bool:
    torch = _torch()
    return torch is not None and isinstance(value, torch.Tensor | torch.nn.Module)


def _device_of(value: Any):
    torch = _torch()
    if isinstance(value, torch.Tensor):
        return value.device
    for tensor in (*value.parameters(), *value.buffers()):
        return tensor.device
    return None


def dump_value(value: Any) -> tuple[bytes, str]:
    """Serialise one value the way it travels; returns ``(bytes, how)``."""
    if _is_torch_value(value):
        buf = io.BytesIO()
        _torch().save(value, buf, pickle_module=cloudpickle)
        return buf.getvalue(), "torch.save"
    return cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL), "cloudpickle"


def load_value(data: bytes, how: str, map_location: Any = None) -> Any:
    """The inverse of ``dump_value``. Callers verify the signature first: this unpickles."""
    if how == "torch.save":
        import torch

        if map_location is None and not torch.cuda.is_available():
            map_location = "cpu"
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=False)
    return pickle.loads(data)


def _known_problem(value: Any, gpus: int) -> tuple[str, str] | None:
    if isinstance(value, io.IOBase):
        return "is an open file", "pass its path as a string and open the file inside the cell"
    if isinstance(value, types.GeneratorType | types.AsyncGeneratorType | types.CoroutineType):
        return (
            "is a generator, whose position cannot be copied to another process",
            "pass a list (list(gen)) or the function that creates it",
        )
    if isinstance(value, _LOCK_TYPES):
        return "is a lock, which only works inside one process", "create it inside the cell"
    if isinstance(value, socket.socket | sqlite3.Connection):
        return "is an open connection", "pass what you need to open it and connect inside the cell"
    if _is_torch_value(value):
        device = _device_of(value)
        if device is not None and device.type == "cuda" and not gpus:
            return (
                f"is on {device} but the job has no GPU",
                "move it with .cpu() before the cell, or ask for --gpus-per-proc 1",
            )
    return None


def _children(value: Any) -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        return [(f"[{k!r}]", v) for k, v in list(value.items())[:1000]]
    if isinstance(value, list | tuple | set | frozenset):
        return [(f"[{i}]", v) for i, v in enumerate(list(value)[:1000])]
    attrs = getattr(value, "__dict__", None)
    if isinstance(attrs, dict):
        return [(f".{k}", v) for k, v in attrs.items()]
    return []


def _find_culprit(name: str, value: Any, gpus: int, depth: int = 3) -> tuple[str, str, str] | None:
    """The innermost part of ``value`` that cannot be pickled, for a precise message."""
    if depth == 0:
        return None
    for suffix, child in _children(value):
        known = _known_problem(child, gpus)
        if known:
            return name + suffix, *known
        try:
            cloudpickle.dumps(child)
        except Exception:
            deeper = _find_culprit(name + suffix, child, gpus, depth - 1)
            return deeper or (
                name + suffix,
                f"cannot be pickled ({type(child).__name__})",
                "create it inside the cell",
            )
    return None


# --------------------------------------------------------------------------- imports


def _import_statement(name: str, value: Any) -> str | None:
    if isinstance(value, types.ModuleType):
        modname = value.__name__
        if modname == "__main__":
            return None
        if name == modname:
            return f"import {modname}"
        parent, _, last = modname.rpartition(".")
        if parent and last == name:
            return f"from {parent} import {last}"
        return f"import {modname} as {name}"
    modname = getattr(value, "__module__", None)
    qualname = getattr(value, "__qualname__", None)
    if not (
        isinstance(value, type | types.FunctionType | types.BuiltinFunctionType)
        and modname
        and qualname
        and modname != "__main__"
        and "." not in qualname
    ):
        return None
    module = sys.modules.get(modname)
    if module is None or getattr(module, qualname, None) is not value:
        return None
    return f"from {modname} import {qualname}" + (f" as {name}" if name != qualname else "")


def _local_root(module: types.ModuleType, cwd: Path) -> tuple[Path, Path] | None:
    """``(root, file)`` for a module whose file lives under ``cwd`` (not an installed package)."""
    file = getattr(module, "__file__", None)
    name = getattr(module, "__name__", "")
    if (
        not isinstance(file, str)
        or not file.endswith(".py")
        or name.split(".")[0] in ("nbscale", "__main__")
    ):
        return None
    # cheap test first: sys.modules is long; a relative __file__ is some extension's fiction
    if not os.path.isabs(file) or not file.startswith(str(cwd)) or not os.path.isfile(file):
        return None
    path = Path(file).resolve()
    if not path.is_relative_to(cwd) or any(d in str(path) for d in _SKIP_DIRS):
        return None
    depth = name.count(".") + (1 if path.name == "__init__.py" else 0)
    return path.parents[depth], path


def local_sources(cwd: str | None = None, limit: int = 20 << 20) -> dict[str, bytes]:
    """Source files of every imported module that lives under ``cwd``: ``src/<relpath>`` -> bytes.

    All of them, not only those the cell names: a notebook function sent by
    value may import a helper by reference, and the worker must find it.
    """
    base = Path(cwd or os.getcwd()).resolve()
    out: dict[str, bytes] = {}
    total = 0
    for module in list(sys.modules.values()):
        found = _local_root(module, base) if isinstance(module, types.ModuleType) else None
        if not found:
            continue
        root, path = found
        data = path.read_bytes()
        total += len(data)
        if total > limit:
            raise CaptureError(
                [
                    (
                        module.__name__,
                        f"local modules add up to over {human_size(limit)}",
                        "install them as a package instead of shipping their source",
                    )
                ]
            )
        out["src/" + path.relative_to(root).as_posix()] = data
    return out


# --------------------------------------------------------------------------- capture


def _ignored(name: str) -> bool:
    return bool(_KERNEL_NAMES.match(name))


def capture(
    source: str,
    namespace: dict[str, Any],
    outputs: list[str] | tuple[str, ...] = (),
    inputs: list[str] | None = None,
    gpus: int = 0,
    cwd: str | None = None,
) -> Capture:
    """Everything the cell needs to run elsewhere, pre-flighted; raises ``CaptureError``."""
    start = time.perf_counter()
    try:
        now, later = free_names(source)
    except SyntaxError as exc:
        raise CaptureError(
            [
                (
                    "the cell",
                    f"has a syntax error on line {exc.lineno}: {exc.msg}",
                    "fix it and run the cell again",
                )
            ]
        ) from None
    problems: list[tuple[str, str, str]] = []
    warnings: list[str] = []
    if inputs is not None:
        names = list(inputs)
        modules_too = [n for n in [*now, *later] if isinstance(namespace.get(n), types.ModuleType)]
        names += [n for n in modules_too if n not in names]
        for name in inputs:
            if name not in namespace:
                problems.append(
                    (
                        name,
                        "is listed in --inputs but not defined in the notebook",
                        "run the cell that defines it first, or drop it from --inputs",
                    )
                )
    else:
        names = []
        for name in [*now, *later]:
            if _ignored(name) or name in names:
                continue
            if name in namespace:
                names.append(name)
            elif hasattr(builtins, name):
                continue
            elif name in now:
                problems.append(
                    (
                        name,
                        "is used by the cell but not defined in the notebook",
                        "run the cell that defines it first (or list the inputs with --inputs)",
                    )
                )
            else:
                warnings.append(
                    f"{name} is used inside a function of the cell but is not defined anywhere"
                )
    items: list[Item] = []
    parts: dict[str, bytes] = {}
    for name in names:
        if name not in namespace:
            continue
        value = namespace[name]
        statement = _import_statement(name, value)
        if statement:
            items.append(Item(name, "import", statement, type(value).__name__))
            continue
        known = _known_problem(value, gpus)
        if known:
            problems.append((name, *known))
            continue
        try:
            data, how = dump_value(value)
        except Exception as exc:
            culprit = _find_culprit(name, value, gpus)
            problems.append(
                culprit
                or (
                    name,
                    f"cannot be pickled: {type(exc).__name__}: {exc}",
                    "create it inside the cell instead",
                )
            )
            continue
        try:
            load_value(data, how)
        except Exception as exc:
            problems.append(
                (
                    name,
                    f"pickles but does not unpickle: {type(exc).__name__}: {exc}",
                    "create it inside the cell, or give its class a __reduce__",
                )
            )
            continue
        if isinstance(value, types.FunctionType):
            kind = "function"
        elif isinstance(value, type):
            kind = "class"
        elif _is_torch_value(value):
            kind = "tensor" if isinstance(value, _torch().Tensor) else "module"
        else:
            kind = "object"
        part = f"inputs/{len(parts):03d}-{name}.{'pt' if how == 'torch.save' else 'pkl'}"
        parts[part] = data
        items.append(Item(name, kind, how, type(value).__name__, len(data), part))
    if problems:
        raise CaptureError(problems)
    sources = local_sources(cwd)
    parts.update(sources)
    return Capture(
        source=source,
        items=items,
        parts=parts,
        modules=sorted(sources),
        outputs=list(outputs),
        warnings=warnings,
        seconds=time.perf_counter() - start,
    )
