"""The first step's kernel, started while the DAG is prepared.

A run spends about 0.3 s before its first step: imports, the pipeline's checks and analysis,
the run's record, the cache lookups. A kernel's boot (about 0.5 s of imports) used to start
only after all of that. Here it starts first, from a light reading of the pipeline file (the
YAML's steps, or a tagged notebook's cells), and the run's pool adopts it once the DAG is
known. Its process is started before jupyter_client and asyncio are even imported
(``kernel_spawn``, about 0.1 s sooner), and a jupyter_client manager takes it over. Started
by ``nbscale pipeline run`` in the foreground and by a detached runner
(``background``), each before its imports: new processes, where the imports are most of that
0.3 s. (A notebook's kernel that calls ``start_run(..., detach=False)`` has them imported
already; a run there prepares its DAG in tens of milliseconds.)

- The guess must agree exactly with what the run decides: the kernel's name, the first step's
  folder and every variable of the kernel's environment (the thread counts depend on the
  DAG's width). Where it does not, or the first step is cached after all, or the run fails its
  checks, the kernel is killed and reaped; ``atexit`` does the same for any path that forgets.
- It is only started where it is likely used: not for ``--only``/``--from`` runs or sweep steps
  (their kernels are decided later), not where a kernel kept warm between runs
  (``warm``) is ready for the same environment, and not for a re-run whose first step would
  come from the cache: one that ran here before, its notebook and pipeline file unchanged
  since (``--no-cache`` always starts one).
- It is the run's own kernel, like those of ``kernels.KernelPool``: used by one step, killed
  after it, never kept.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .model import pipeline_file, steps_at_once, topological, widest_level
from .threads import thread_env

if TYPE_CHECKING:
    from .kernels import PooledKernel


@dataclass(frozen=True)
class Plan:
    source: str  # the pipeline's file, as the run records it
    first: str  # the first step's name
    notebook: str  # its notebook
    kernel_name: str
    cwd: str  # the first step's folder: its kernel's working directory
    env: dict[str, str]  # the kernel's environment


_lock = threading.Lock()
_held: tuple[Plan, PooledKernel] | None = None


def _yaml_steps(path: Path) -> tuple[dict[str, list[str]], dict[str, str]] | None:
    """(step -> the steps it depends on, step -> its notebook) of a pipeline.yaml, read as the
    manifest reads it; None where a step has a sweep or the file is not what it should be (the
    run's checks say what)."""
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    steps = data.get("steps") if isinstance(data, dict) else None
    if not isinstance(steps, list) or not steps:
        return None
    depends: dict[str, list[str]] = {}
    notebooks: dict[str, str] = {}
    for step in steps:
        if not isinstance(step, dict) or step.get("sweep") is not None:
            return None
        name, notebook, needs = step.get("name"), step.get("notebook"), step.get("depends_on", [])
        needs = [needs] if isinstance(needs, str) else needs
        if not isinstance(name, str) or not isinstance(notebook, str) or name in depends:
            return None
        if not isinstance(needs, list) or not all(isinstance(n, str) for n in needs):
            return None
        depends[name] = needs
        notebooks[name] = str((path.parent / notebook).resolve())
    if any(d not in depends for needs in depends.values() for d in needs):
        return None
    return depends, notebooks


def _tagged_steps(path: Path) -> tuple[dict[str, list[str]], dict[str, str]] | None:
    from . import notebooks, tagged

    nb = notebooks.read(path)
    if not tagged.is_tagged(nb):
        return None
    pipeline = tagged.load(path, nb)
    if any(step.sweep is not None for step in pipeline.steps.values()):
        return None
    return (
        {n: list(s.depends_on) for n, s in pipeline.steps.items()},
        {n: s.notebook for n, s in pipeline.steps.items()},
    )


def plan(path: str | Path, options: dict[str, Any]) -> Plan | None:
    """What the run of ``path`` with ``options`` will start its first step's kernel with, read
    from the file alone; None where that cannot be known before the run's checks (a bad
    ``max_parallel`` is the run's ``SpecError``)."""
    if options.get("only") or options.get("from_step"):
        return None
    p = Path(path).expanduser()
    if not p.exists():
        return None
    p = p.resolve()
    if p.is_dir():
        p = pipeline_file(p) or p
    if p.suffix in (".yaml", ".yml"):
        steps = _yaml_steps(p)
    elif p.suffix == ".ipynb":
        steps = _tagged_steps(p)
    else:
        return None
    if steps is None:
        return None
    depends, notebooks = steps
    first = topological(depends)[0]
    max_parallel = steps_at_once(options.get("max_parallel"))
    width = min(max_parallel, widest_level(depends, list(depends)))
    return Plan(
        source=str(p),
        first=first,
        notebook=notebooks[first],
        kernel_name=options.get("kernel_name") or "python3",
        cwd=str(Path(notebooks[first]).parent),
        env={**os.environ, **thread_env(width)},
    )


def _cached_likely(plan: Plan, options: dict[str, Any]) -> bool:
    """The first step ran here before and neither its notebook nor the pipeline's file changed
    since: its outputs will most likely come from the cache, and no kernel is needed."""
    if options.get("no_cache"):
        return False
    from .. import paths

    if not paths.db_path().exists():  # a fresh home: nothing cached (and no store to create)
        return False
    from ..store import get_store
    from ..store import pipelines as db

    entry = db.cache_latest(get_store(), plan.source, plan.first)
    if entry is None:
        return False
    changed = max(os.stat(plan.notebook).st_mtime, os.stat(plan.source).st_mtime)
    return changed <= float(entry["created"])


def _warm_ready(plan: Plan) -> bool:
    """A kernel kept warm between runs is ready for this environment: the run claims it."""
    from . import warm

    enabled, _, _ = warm.settings(plan.env)
    if not enabled:
        return False
    ready = [k for k in warm.kernels(warm.pool_dir(create=False)) if k.get("state") == "ready"]
    if not ready:  # the usual case from a fresh home: no environment key to work out
        return False
    key = warm.environment_key(plan.kernel_name, plan.cwd, plan.env)
    return any(k.get("key") == key for k in ready)


def start(path: str | Path, options: dict[str, Any]) -> bool:
    """Start the first step's kernel of a run of ``path`` now, where it is likely used (see
    the module's notes). Never raises: a pipeline this cannot read is left to the run's checks,
    which say what is wrong."""
    global _held
    with _lock:
        if _held is not None:
            return False
    prespawned = None
    try:
        guess = plan(path, options)
        if guess is None or _cached_likely(guess, options) or _warm_ready(guess):
            return False
        from ..kernel_spawn import spawn

        # its process first, before jupyter_client and asyncio are imported (kernel_spawn)
        prespawned = spawn(guess.kernel_name, guess.cwd, guess.env)
        from .kernels import KernelPool, PooledKernel

        KernelPool.import_client()  # on this thread, before the kernel's own thread needs it
        kernel = PooledKernel(guess.kernel_name, guess.cwd, guess.env, prespawned)
    except Exception:  # noqa: BLE001 - a guess only; the run's own checks report the problem
        if prespawned is not None:
            prespawned.discard()
        return False
    with _lock:
        raced = _held is not None
        if not raced:
            _held = (guess, kernel)
    if raced:  # another thread's start came first: this kernel is never started
        kernel.close()
        return False
    threading.Thread(target=kernel.start, name="nbscale-first-kernel", daemon=True).start()
    atexit.register(discard)
    return True


def start_for_run(run_id: str) -> bool:
    """``start`` for a recorded run (a detached runner's, before it imports the runner)."""
    try:
        from ..store import get_store
        from ..store import pipelines as db

        record = db.get_run(get_store(), run_id)
    except Exception:  # noqa: BLE001 - the runner reports a run it cannot read
        return False
    return start(record["source"], record.get("options") or {})


def take(kernel_name: str, cwd: str, env: dict[str, str]) -> PooledKernel | None:
    """The kernel started early, if it was started for exactly this kernel, folder and
    environment: now the caller's. Any other is killed."""
    global _held
    with _lock:
        held, _held = _held, None
    if held is None:
        return None
    guess, kernel = held
    if (guess.kernel_name, guess.cwd, guess.env) == (kernel_name, cwd, env):
        return kernel
    discard_kernel(kernel)
    return None


def discard() -> None:
    """Kill the kernel started early if nobody took it (the run failed its checks, its first
    step came from the cache, or it ran elsewhere), and remove its files."""
    global _held
    with _lock:
        held, _held = _held, None
    if held is not None:
        discard_kernel(held[1])


def discard_kernel(kernel: PooledKernel) -> None:
    """Kill a kernel started early and remove its files."""
    from .kernels import STARTUP_TIMEOUT

    kernel.kill()  # its process, where it exists; one still being started is killed once it does
    with contextlib.suppress(Exception):
        kernel.ready.wait(STARTUP_TIMEOUT + 10)  # its start ends at once: doomed, or dead
        kernel.close()


def held() -> Plan | None:
    """The plan of the kernel started early and not taken yet (for tests and diagnostics)."""
    with _lock:
        return _held[0] if _held is not None else None
