"""Save and load training state inside a job, so a restarted job resumes where it was.

.. code-block:: python

    import nbscale.checkpoint as ckpt

    state = ckpt.load(model=model, optimizer=opt)      # None when there is nothing to resume
    start = state.step + 1 if state else 0
    for step in range(start, steps):
        ...
        ckpt.save(step, model=model, optimizer=opt)

A checkpoint holds the model's and the optimizer's ``state_dict``, the step,
``extra`` (tensors and plain Python values) and the random number generator
states of every rank (Python, NumPy, torch, CUDA), so a resumed run draws the
same numbers as an uninterrupted one. Rank 0 writes ``ckpt-<step>.pt`` to a
temporary name, syncs it and renames it: a checkpoint is either complete or
absent, whatever kills the job. Every rank loads the checkpoint rank 0 chose.
Files are read with ``torch.load(weights_only=True)``: loading never runs code.

The folder is :func:`default_dir`: ``$NBSCALE_CHECKPOINT_DIR`` (what
``--checkpoint-dir`` sets; locally it defaults to ``<job>/checkpoints``), then
SageMaker's ``/opt/ml/checkpoints`` (synced to S3 by SageMaker), then the job's
folder.
"""

from __future__ import annotations

import os
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import NbscaleError

CHECKPOINT_ENV = "NBSCALE_CHECKPOINT_DIR"
SAGEMAKER_DIR = Path("/opt/ml/checkpoints")
FORMAT = 1
_FILE = re.compile(r"^ckpt-(\d+)\.pt$")


class CheckpointError(NbscaleError):
    """A checkpoint could not be written or read."""


@dataclass
class Checkpoint:
    step: int
    path: Path
    extra: dict[str, Any] = field(default_factory=dict)


def default_dir() -> Path:
    """Where this job's checkpoints go (see the module documentation for the order)."""
    configured = os.environ.get(CHECKPOINT_ENV)
    if configured:
        return Path(configured).expanduser()
    if os.environ.get("SM_TRAINING_ENV") or Path("/opt/ml").is_dir():
        return SAGEMAKER_DIR
    job_dir = os.environ.get("NBSCALE_JOB_DIR")
    if job_dir:
        return Path(job_dir) / "checkpoints"
    raise CheckpointError(
        "no checkpoint folder: this process is not part of an nbscale job",
        f"pass directory=..., or set {CHECKPOINT_ENV}",
    )


def checkpoints(directory: str | Path | None = None) -> list[tuple[int, Path]]:
    """The complete checkpoints in ``directory``, oldest first, as ``(step, path)``."""
    folder = Path(directory) if directory is not None else default_dir()
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _FILE.match(p.name))]
    return sorted(found)


def latest(directory: str | Path | None = None) -> tuple[int, Path] | None:
    found = checkpoints(directory)
    return found[-1] if found else None


# -- distributed helpers: everything works without torch.distributed too ----------------


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def _rank_world() -> tuple[int, int]:
    dist = _dist()
    return (dist.get_rank(), dist.get_world_size()) if dist else (0, 1)


def _broadcast(value: Any) -> Any:
    """Rank 0's ``value`` on every rank."""
    dist = _dist()
    if dist is None:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _gather(value: Any) -> list[Any]:
    dist = _dist()
    if dist is None:
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


# -- random number generator states -----------------------------------------------------


def _rng_state() -> dict[str, Any]:
    import torch

    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy as np

        name, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = (name, torch.from_numpy(keys.astype("int64")), pos, has_gauss, cached)
    except ImportError:
        pass
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"].cpu())
    if "numpy" in state:
        import numpy as np

        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype("uint32"), pos, has_gauss, cached))
    if state.get("cuda") and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:  # another GPU count: each visible device gets the first saved state
            for index in range(torch.cuda.device_count()):
                torch.cuda.set_rng_state(cuda[0], index)


def _module(model: Any) -> Any:
    """The model itself when wrapped in DistributedDataParallel/DataParallel."""
    return getattr(model, "module", model)


# -- save and load ------------------------------------------------------------------------


def _write_atomically(payload: dict[str, Any], target: Path) -> None:
    import torch

    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself survives a crash
    finally:
        os.close(fd)


def _prune(folder: Path, keep: int) -> None:
    for _, path in checkpoints(folder)[:-keep]:
        path.unlink(missing_ok=True)
    for stale in folder.glob(".ckpt-*.tmp-*"):  # left by a writer killed mid-way
        stale.unlink(missing_ok=True)


def save(
    step: int,
    *,
    model: Any = None,
    optimizer: Any = None,
    extra: dict[str, Any] | None = None,
    directory: str | Path | None = None,
    keep: int = 2,
) -> Path:
    """Write a checkpoint for ``step``; call it on every rank (it is a collective).

    Rank 0 writes, every rank returns once the file is complete, and every
    rank raises :class:`CheckpointError` when rank 0 could not write it.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"step must be a whole number >= 0, got {step!r}")
    if keep < 1:
        raise CheckpointError(f"keep must be at least 1, got {keep!r}")
    folder = Path(directory) if directory is not None else default_dir()
    target = folder / f"ckpt-{step:010d}.pt"
    rank, world = _rank_world()
    rng = _gather(_rng_state())
    problem = None
    if rank == 0:
        payload = {
            "format": FORMAT,
            "step": step,
            "time": time.time(),
            "world_size": world,
            "model": _module(model).state_dict() if model is not None else None,
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "extra": dict(extra or {}),
            "rng": rng,
        }
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _write_atomically(payload, target)
            _prune(folder, keep)
        except OSError as exc:
            problem = f"could not write checkpoint {target}: {exc.strerror or exc}"
    problem = _broadcast(problem)
    if problem:
        raise CheckpointError(problem, "free space or choose another folder with --checkpoint-dir")
    return target


def load(
    *,
    model: Any = None,
    optimizer: Any = None,
    directory: str | Path | None = None,
    restore_rng: bool = True,
    map_location: Any = "cpu",
) -> Checkpoint | None:
    """Load the newest checkpoint into ``model``/``optimizer``; ``None`` when there is none.

    Call it on every rank (it is a collective): rank 0 picks the checkpoint and
    every rank loads that same one, and gets back its own RNG states.
    """
    import torch

    folder = Path(directory) if directory is not None else default_dir()
    newest = latest(folder) if _rank_world()[0] == 0 else None
    chosen = _broadcast(str(newest[1]) if newest else None)
    if chosen is None:
        return None
    path = Path(chosen)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
        raise CheckpointError(
            f"checkpoint {path} cannot be read: {exc}",
            "delete it to resume from the one before, or start afresh",
        ) from exc
    if payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has an unknown format {payload.get('format')!r}")
    if model is not None and payload.get("model") is not None:
        _module(model).load_state_dict(payload["model"])
    if optimizer is not None and payload.get("optimizer") is not None:
        optimizer.load_state_dict(payload["optimizer"])
    if restore_rng and payload.get("rng"):
        rank, _ = _rank_world()
        states = payload["rng"]
        _set_rng_state(states[rank] if rank < len(states) else states[0])
    return Checkpoint(step=int(payload["step"]), path=path, extra=payload.get("extra") or {})
