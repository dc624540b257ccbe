"""A captured cell inside a job: verify, rebuild the namespace, run, send results back.

Order matters for safety: the bundle's signature and every part's hash are
checked before a single byte is unpickled. The cell source is compiled with
its own filename, shifted by the ``%%train`` line, so a traceback names the
line the user sees in the notebook.
"""

from __future__ import annotations

import ast
import builtins
import linecache
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from .. import bundle
from ..capture import CELL_FILENAME, load_value
from ..errors import NbscaleError
from .failure import write_error
from .jobdir import JobDir

KIND = "cell"


class MissingOutput(NbscaleError):
    """A name given in ``--outputs`` that the cell did not define."""


def _extract_sources(found: bundle.Bundle, dest: Path) -> None:
    for name, data in found.parts.items():
        if not name.startswith("src/"):
            continue
        rel = Path(name.removeprefix("src/"))
        if rel.is_absolute() or ".." in rel.parts:
            raise NbscaleError(f"bundle part {name} points outside the job")
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


class VersionMismatch(NbscaleError):
    """The bundle was made with another Python minor or torch major.minor than this
    container has: pickled values may not load, so nothing is unpickled."""


def _major_minor(text: str) -> str:
    from packaging.version import InvalidVersion, Version

    try:
        return ".".join(str(p) for p in (Version(text).release + (0,))[:2])
    except InvalidVersion:
        return text


def here_versions() -> dict[str, str]:
    """This container's Python and torch (installed; ``none`` without torch)."""
    from importlib import metadata

    torch = sys.modules.get("torch")
    try:
        found = torch.__version__ if torch is not None else metadata.version("torch")
    except metadata.PackageNotFoundError:
        found = "none"
    return {"python": platform.python_version(), "torch": str(found)}


def check_versions(manifest: dict[str, Any], here: dict[str, str] | None = None) -> None:
    """Refuse, in one line naming both sides, a bundle whose Python minor or torch
    major.minor differs from this container's (checked before anything is unpickled)."""
    made = manifest.get("versions") or {}
    here = here or here_versions()
    differ = []
    for name, label in (("python", "Python"), ("torch", "torch")):
        theirs, ours = str(made.get(name) or ""), str(here.get(name) or "")
        if not theirs or theirs == "none":
            continue  # not recorded (or the kernel had no torch): nothing to compare
        if _major_minor(theirs) != _major_minor(ours):
            differ.append((label, theirs, ours))
    if differ:
        kernel = " and ".join(f"{label} {theirs}" for label, theirs, _ in differ)
        container = " and ".join(f"{label} {ours}" for label, _, ours in differ)
        raise VersionMismatch(
            f"the cell was captured with {kernel} but this container has {container}; "
            "pickled values may not load, so nothing was unpickled: run the job in an image "
            f"with {kernel}, or the kernel on {container}"
        )


def map_location(device) -> Any:
    """CUDA tensors from the kernel land on this rank's GPU, or the CPU when it has none;
    CPU tensors stay where they are, so moving data stays the cell's choice."""
    if device.type != "cuda":
        return "cpu"
    return lambda storage, location: storage.to(device) if location.startswith("cuda") else storage


def build_namespace(found: bundle.Bundle, src_dir: Path, device=None) -> dict[str, Any]:
    manifest = found.manifest
    _extract_sources(found, src_dir)
    sys.path.insert(0, str(src_dir))  # the shipped snapshot wins over anything on the machine
    ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins, "__doc__": None}
    for statement in manifest.get("imports", []):
        exec(compile(statement, "<nbscale imports>", "exec"), ns)
    for item in manifest.get("inputs", []):
        location = (
            map_location(device) if device is not None and item["how"] == "torch.save" else None
        )
        ns[item["name"]] = load_value(found.part(item["part"]), item["how"], location)
    return ns


def sweep_values() -> dict[str, Any]:
    """A sweep trial's values (``nbscale.param``'s), which the cell also sees as plain
    variables, as papermill injects parameters: a value wins over a captured input of the
    same name, since a parameter named like a notebook variable is that variable, swept.
    Empty outside a sweep."""
    from ..sweeps.params import current

    return current()


def compile_cell(source: str, line_offset: int):
    tree = ast.parse(source, CELL_FILENAME)
    ast.increment_lineno(tree, line_offset)
    # linecache lets the traceback print the cell's own text next to each line number
    lines = ["\n"] * line_offset + source.splitlines(keepends=True)
    linecache.cache[CELL_FILENAME] = (len(source), None, lines, CELL_FILENAME)
    return compile(tree, CELL_FILENAME, "exec")


def cell_traceback(exc: BaseException) -> tuple[str, int | None]:
    """The traceback from the cell's first frame on, and the last cell line in it."""
    te = traceback.TracebackException.from_exception(exc)
    while (
        te.stack
        and te.stack[0].filename != CELL_FILENAME
        and any(f.filename == CELL_FILENAME for f in te.stack)
    ):
        te.stack.pop(0)
    lines = [f.lineno for f in te.stack if f.filename == CELL_FILENAME]
    return "".join(te.format()), (lines[-1] if lines else None)


def _fail(jobdir: JobDir, rank: int, exc: BaseException) -> None:
    tb, line = cell_traceback(exc)
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    write_error(jobdir, rank, exc, restart, {"traceback": tb, "cell_line": line})
    sys.stderr.write(tb)
    sys.stderr.flush()
    sys.stdout.flush()
    # the worker would rewrite the error with its own frames on top; exit as it would
    os._exit(1)


def run_bundle(target: str, spec: dict[str, Any], jobdir: JobDir, rank: int) -> None:
    found = bundle.read(target, KIND)
    manifest = found.manifest
    try:
        check_versions(manifest)
    except VersionMismatch as exc:  # one line, not a pickle traceback
        restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        write_error(jobdir, rank, exc, restart, {"traceback": None})
        print(f"nbscale: {exc}", file=sys.stderr, flush=True)
        os._exit(1)
    from .. import distributed

    device = distributed.init()
    ns = build_namespace(found, jobdir.path / "src" / f"rank-{rank}", device)
    ns.update(sweep_values())
    code = compile_cell(found.part("cell.py").decode(), int(manifest.get("line_offset", 0)))
    started = time.monotonic()
    try:
        exec(code, ns)
    except BaseException as exc:
        _fail(jobdir, rank, exc)
    if rank == 0:
        outputs = manifest.get("outputs") or []
        missing = [name for name in outputs if name not in ns]
        if missing:
            defined = sorted(
                k for k in ns if not k.startswith("_") and k not in manifest.get("input_names", [])
            )
            raise MissingOutput(
                f"the cell did not define {', '.join(repr(m) for m in missing)}, named in --outputs",
                f"names the cell defines: {', '.join(defined) or '(none)'}; fix --outputs or the cell",
            )
        from ..results import write_results

        write_results(
            jobdir.outputs, os.environ.get("NBSCALE_JOB_ID", ""), {n: ns[n] for n in outputs}
        )
        print(
            f"nbscale: cell ran in {time.monotonic() - started:.1f} s; "
            f"outputs written: {', '.join(outputs) or '(none)'}",
            flush=True,
        )
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
