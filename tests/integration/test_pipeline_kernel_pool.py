"""The pipeline kernel pool's bounds, with real kernels: at most ``size`` kernels wait, idle
ones are shut down when the run ends, a kernel serves one step and is never handed to a run
with another environment; and the runner's papermill import leaves the IRI grammar unbuilt."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import psutil
import pytest

from nbscale.pipelines.kernels import KernelPool


def kernels() -> list[psutil.Process]:
    """This process's kernel children (ipykernel), alive."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "ipykernel_launcher" in " ".join(child.cmdline()) and child.status() != "zombie":
                found.append(child)
        except psutil.Error:
            continue
    return found


def until(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.fixture
def pools():
    made: list[KernelPool] = []

    def make(size: int, env: dict[str, str] | None = None) -> KernelPool:
        pool = KernelPool(size, env=env)
        pool.import_client()
        made.append(pool)
        return pool

    yield make
    for pool in made:
        pool.close()


def test_the_pool_holds_at_most_size_kernels_and_shuts_down_the_idle_ones(pools, tmp_path):
    pool = pools(2)
    pool.expect([str(tmp_path)] * 5)  # five steps expected, room for two
    pool.running()  # the first step runs: the rest may start (see the test below)
    until(lambda: len(kernels()) == 2)
    time.sleep(2.0)  # no third one follows
    assert len(kernels()) == 2

    taken = pool.take(str(tmp_path))
    first = taken.pid
    assert psutil.pid_exists(first)
    # the pool fills the place taken: two waiting beside the one in use, never more
    until(lambda: len(kernels()) == 3)
    time.sleep(1.0)
    assert len(kernels()) == 3

    pool.release(taken)  # a kernel serves one step: released, it is killed, never reused
    until(lambda: not psutil.pid_exists(first) or psutil.Process(first).status() == "zombie")
    assert all(k.pid != first for k in kernels())

    folders = [k._sockets.folder for k in pool._spare]
    pool.close()  # the run ends: the kernels nobody took are shut down, their folders removed
    until(lambda: not kernels(), timeout=30)
    assert not any(f and os.path.exists(f) for f in folders)


def test_a_kernel_is_never_handed_to_a_run_with_another_environment(pools, tmp_path):
    one = pools(1, env={"NBSCALE_POOL_TEST": "one", "OMP_NUM_THREADS": "1"})
    two = pools(1, env={"NBSCALE_POOL_TEST": "two", "OMP_NUM_THREADS": "2"})
    one.expect([str(tmp_path)])
    until(lambda: len(kernels()) == 1)
    mine = two.take(str(tmp_path))  # the other run's kernel is up and idle: not this run's
    theirs = one.take(str(tmp_path))
    try:
        assert mine.pid != theirs.pid
        env_two = psutil.Process(mine.pid).environ()
        env_one = psutil.Process(theirs.pid).environ()
        assert (env_two["NBSCALE_POOL_TEST"], env_two["OMP_NUM_THREADS"]) == ("two", "2")
        assert (env_one["NBSCALE_POOL_TEST"], env_one["OMP_NUM_THREADS"]) == ("one", "1")
    finally:
        two.release(mine)
        one.release(theirs)


CHECK_IRIS = """
import json, sys
{prelude}
import jsonschema
checker = jsonschema.Draft7Validator.FORMAT_CHECKER
values = ["http://example.com/\\u00e4?q=1#f", "http://exa mple.com/", "not:a iri", "//host/path"]
grammar_before = "rfc3987_syntax.syntax_helpers" in sys.modules
answers = {{f: [checker.conforms(v, f) for v in values] for f in ("iri", "iri-reference")}}
print(json.dumps({{"grammar_before_use": grammar_before, "answers": answers}}))
"""


def test_the_runner_imports_papermill_without_building_the_iri_grammar_and_checks_iris_alike():
    pytest.importorskip("rfc3987_syntax")

    def run(prelude: str) -> dict:
        out = subprocess.run(
            [sys.executable, "-c", CHECK_IRIS.format(prelude=prelude)],
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    plain = run("")
    runner = run("from nbscale.pipelines.kernels import register_engine\nregister_engine()")
    assert plain["grammar_before_use"] is True  # jsonschema builds it as it is imported
    assert runner["grammar_before_use"] is False  # the runner's papermill import does not
    assert runner["answers"] == plain["answers"]  # and every check answers as before
    assert plain["answers"]["iri"] == [True, False, False, False]


def test_later_kernels_start_once_the_first_step_runs_and_a_closed_pool_never_waits(
    pools, tmp_path
):
    pool = pools(3)
    pool.expect([str(tmp_path)] * 3)  # three steps expected: the first kernel boots alone
    until(lambda: len(kernels()) == 1)
    time.sleep(2.0)  # the first step's notebook is not running yet: nothing follows it
    assert len(kernels()) == 1

    pool.running()  # the first step's cells are sent: the kernels for later steps start
    until(lambda: len(kernels()) == 3)

    gated = pools(3)
    gated.expect([str(tmp_path)] * 3)
    until(lambda: len(kernels()) == 4)
    pool.close()
    started = time.monotonic()
    gated.close()  # the run stops before any step ran: the waiting starts are dropped at once
    assert time.monotonic() - started < 60
    until(lambda: not kernels(), timeout=30)


def test_a_step_that_ends_before_its_cells_run_lets_the_later_kernels_start(pools, tmp_path):
    pool = pools(2)
    pool.expect([str(tmp_path)] * 3)
    first = pool.take(str(tmp_path))
    time.sleep(1.0)
    assert [k.pid for k in kernels()] == [first.pid]
    pool.release(first)  # e.g. papermill failed on the notebook before the kernel was used
    until(lambda: len(kernels()) == 2)


def test_the_runner_registers_no_third_party_papermill_engine_or_io_handler(tmp_path):
    # an installed distribution offering a papermill engine and an I/O handler
    dist = tmp_path / "papermill_plugin_probe-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: papermill-plugin-probe\n")
    (dist / "entry_points.txt").write_text(
        "[papermill.engine]\nprobe = json:JSONDecoder\n[papermill.io]\nprobe:// = json:JSONDecoder\n"
    )
    probe = (
        "import json, sys\n{prelude}\nimport papermill.engines as e, papermill.iorw as io\n"
        "print(json.dumps(['probe' in e.papermill_engines._engines,"
        " any(s == 'probe://' for s, _ in io.papermill_io._handlers)]))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}

    def run(prelude: str) -> list[bool]:
        out = subprocess.run(
            [sys.executable, "-c", probe.format(prelude=prelude)],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    assert run("") == [True, True]  # papermill on its own reads its plugins
    runner = run("from nbscale.pipelines.kernels import register_engine\nregister_engine()")
    assert runner == [False, False]  # a runner executes with its own engine, on local files
