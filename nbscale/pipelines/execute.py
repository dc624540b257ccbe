"""Run one step: papermill executes the step notebook on a pooled kernel.

The executed notebook is always written, with outputs and the real traceback.
A kernel that dies (killed, out of memory, ``os._exit``) is a failure, and so
is a step that runs past its timeout.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .kernels import KernelPool, register_engine
from .stepbook import write


@dataclass
class Attempt:
    ok: bool
    notebook: str
    error: str | None = None
    started: float = 0.0
    ended: float = 0.0


def _failed_cell(notebook: Path) -> tuple[int | None, str | None, str]:
    """The failing cell's index in the user's notebook, that notebook, and ``Ename: evalue``."""
    try:
        nb = json.loads(notebook.read_text())
    except (OSError, ValueError):
        return None, None, ""
    for cell in nb.get("cells", []):
        if cell.get("metadata", {}).get("papermill", {}).get("exception"):
            origin = cell["metadata"].get("nbscale", {})
            errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
            what = f"{errors[0]['ename']}: {errors[0]['evalue']}" if errors else ""
            tags = cell.get("metadata", {}).get("tags", [])
            if "nbscale-outputs" in tags:
                return None, "saving outputs", what
            if "nbscale-inputs" in tags:
                return None, "loading inputs", what
            return origin.get("origin"), origin.get("notebook"), what
    return None, None, ""


def run_step(
    step_name: str,
    notebook: dict[str, Any],
    parameters: dict[str, Any],
    output: Path,
    cwd: str,
    pool: KernelPool,
    kernel_name: str,
    timeout: float | None,
) -> Attempt:
    pool.wait_first_spawn()  # papermill's import holds the GIL: the kernel's process first
    pool.wait_loaded()  # the pool's preload imports papermill and compiles the validator
    engine = register_engine()
    import papermill
    from papermill.exceptions import PapermillExecutionError

    source = output.with_name(output.stem + ".input.ipynb")
    write(notebook, source)
    started = time.time()
    kernel = pool.take(cwd)
    timed_out = threading.Event()

    def expire() -> None:
        timed_out.set()
        kernel.kill()

    timer = threading.Timer(timeout, expire) if timeout else None
    if timer:
        timer.daemon = True
        timer.start()
    error = None
    try:
        papermill.execute_notebook(
            str(source),
            str(output),
            parameters=parameters,
            engine_name=engine,
            km=kernel.km,
            on_running=pool.running,
            kernel_name=kernel_name,
            progress_bar=False,
            cwd=cwd,
            log_output=False,
        )
    except PapermillExecutionError as exc:
        index, where, what = _failed_cell(output)
        what = what or f"{exc.ename}: {exc.evalue}"
        if where in ("saving outputs", "loading inputs"):
            error = f"step {step_name} failed while {where}: {what}"
        elif index is not None:
            error = f"step {step_name} failed in cell {index} of {Path(where or '').name}: {what}"
        else:
            error = f"step {step_name} failed: {what}"
    except Exception as exc:  # noqa: BLE001 - a dead kernel, a timeout or a papermill error all fail the step
        if timed_out.is_set():
            error = f"step {step_name} timed out after {timeout:g} s; its kernel was stopped"
        elif type(exc).__name__ == "DeadKernelError":
            error = f"step {step_name} failed: its kernel died ({exc})"
        else:
            error = f"step {step_name} failed: {type(exc).__name__}: {exc}"
    finally:
        if timer:
            timer.cancel()
        pool.release(kernel)
        source.unlink(missing_ok=True)
    if error is None and timed_out.is_set():
        error = f"step {step_name} timed out after {timeout:g} s; its kernel was stopped"
    if not output.exists():
        write(notebook, output)
    return Attempt(
        ok=error is None, notebook=str(output), error=error, started=started, ended=time.time()
    )
