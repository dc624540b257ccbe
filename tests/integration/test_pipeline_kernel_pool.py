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
