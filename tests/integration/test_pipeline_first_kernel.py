"""The first step's kernel started while the DAG is prepared (``nbscale.pipelines.first_kernel``),
with real kernels: the guess read from the file agrees with the run's own decisions, the run's
first step runs on that kernel, and a kernel the run does not take (another environment, a
failed check, a cached first step) is killed, leaving no process behind."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import psutil
import pytest

from nbscale.cli import main as cli
from nbscale.cpus import allowed_cpus
from nbscale.pipelines import first_kernel, get_run, load, runs, start_run, warm
from nbscale.pipelines.runner import run_dir
from nbscale.pipelines.threads import thread_env
from tests.support.pipeline_notebooks import probe_flow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "pipeline"

PROBE = (
    "import json, os\n"
    "facts = {'pid': os.getpid(), 'mark': os.environ.get('EARLY_MARK'), 'cwd': os.getcwd()}\n"
    "open(f'facts-{tag}.json', 'w').write(json.dumps(facts))\n"
    "value = list(range(4))"
)


def flow(folder: Path) -> Path:
    return probe_flow(folder, "tag = 'one'", PROBE, "total = sum(value)\nprint('total', total)")


def facts(path: Path, tag: str) -> dict:
    return json.loads((path.parent / f"facts-{tag}.json").read_text())


def early_pid() -> int:
    """The pid of the kernel started early (once its process exists)."""
    kernel = first_kernel._held[1] if first_kernel._held else None
    assert kernel is not None, "no kernel was started early"
    assert kernel.spawned.wait(60)
    assert kernel.pid, kernel.error
    return kernel.pid


def runs_in_home() -> list:
    return list(runs())


def gone(pid: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(autouse=True)
def nothing_held(nbscale_home):
    first_kernel.discard()
    yield
    left = first_kernel.held()
    first_kernel.discard()
    assert left is None, "a kernel started early was left held after the test"


@pytest.mark.parametrize("source", ["pipeline.yaml", "digits.ipynb"])
@pytest.mark.parametrize("max_parallel", [None, 1])
def test_the_guess_agrees_with_the_runs_own_decisions(source, max_parallel, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    options = {"max_parallel": max_parallel} if max_parallel else {}
    guess = first_kernel.plan(EXAMPLES / source, options)
    pipeline = load(EXAMPLES / source)
    order = pipeline.order()
    width = min(max_parallel or allowed_cpus(), pipeline.width(order))
    assert guess is not None
    assert guess.first == order[0]
    assert guess.source == pipeline.source
    assert guess.cwd == str(Path(pipeline.steps[order[0]].notebook).parent)
    assert guess.kernel_name == "python3"
    assert guess.env == {**os.environ, **thread_env(width)}


def test_no_guess_where_the_run_decides_later(tmp_path):
    assert first_kernel.plan(EXAMPLES / "pipeline.yaml", {"only": ["train_a"]}) is None
    assert first_kernel.plan(EXAMPLES / "pipeline.yaml", {"from_step": "train_a"}) is None
    assert first_kernel.plan(tmp_path / "missing.yaml", {}) is None
    swept = tmp_path / "swept.yaml"
    swept.write_text(
        "steps:\n  - name: tune\n    notebook: a.ipynb\n    sweep: {space: 'C=uniform(0,1)'}\n"
    )
    assert first_kernel.plan(swept, {}) is None
    assert first_kernel.start(swept, {}) is False and first_kernel.held() is None


def test_the_first_step_runs_on_the_kernel_started_early(tmp_path):
    path = flow(tmp_path / "flow")
    assert first_kernel.start(path, {"no_cache": True})
    pid = early_pid()
    # its process was started before jupyter_client was imported, and taken over (kernel_spawn)
    assert type(first_kernel._held[1].km.provisioner).__name__ == "PrespawnedProvisioner"
    run = start_run(str(path), {"tag": "early"}, detach=False, no_cache=True)
    assert run.status == "SUCCEEDED", run.to_dict()
    seen = facts(path, "early")
    assert seen["pid"] == pid and seen["cwd"] == str(path.parent)
    assert first_kernel.held() is None  # taken by the run
    assert gone(pid), "the step's kernel outlived its step"


def test_a_kernel_for_another_environment_is_killed_not_used(tmp_path, monkeypatch):
    path = flow(tmp_path / "flow")
    monkeypatch.setenv("EARLY_MARK", "before")
    assert first_kernel.start(path, {"no_cache": True})
    pid = early_pid()
    monkeypatch.setenv("EARLY_MARK", "after")  # the run's environment is not the guessed one
    run = start_run(str(path), {"tag": "moved"}, detach=False, no_cache=True)
    assert run.status == "SUCCEEDED", run.to_dict()
    seen = facts(path, "moved")
    assert seen["pid"] != pid and seen["mark"] == "after"
    assert gone(pid), "the kernel started for another environment was left running"


def test_a_run_that_fails_its_checks_leaves_no_kernel(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "bad"
    folder.mkdir()
    flow(folder)
    spec = folder / "pipeline.yaml"
    spec.write_text("steps:\n  - name: probe\n    notebook: flow.ipynb\n    retries: -1\n")
    started: list[int] = []
    real_start = first_kernel.start

    def start(path, options):  # the command's own call, with the pid of what it started
        ok = real_start(path, options)
        started.append(early_pid() if ok else 0)
        return ok

    monkeypatch.setattr(first_kernel, "start", start)
    assert cli(["pipeline", "run", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "retries" in err and err.count("nbscale:") == 1
    assert started and started[0], "the command started no kernel early"
    assert first_kernel.held() is None
    assert gone(started[0]), "a run refused by its checks left its early kernel running"
    assert runs_in_home() == []  # nothing recorded


def test_no_kernel_for_a_rerun_whose_first_step_is_cached(tmp_path):
    path = flow(tmp_path / "flow")
    first = start_run(str(path), {"tag": "one"}, detach=False)
    assert first.status == "SUCCEEDED", first.to_dict()
    assert first_kernel.start(path, {}) is False  # it ran, nothing changed: cached
    again = start_run(str(path), {"tag": "one"}, detach=False)
    assert all(s["cached"] for s in again.to_dict()["steps"])
    assert first_kernel.start(path, {"no_cache": True})  # --no-cache runs it again
    first_kernel.discard()
    future = time.time() + 5
    os.utime(path, (future, future))  # the notebook changed since: its step runs again
    assert first_kernel.start(path, {})
    pid = early_pid()
    first_kernel.discard()
    assert gone(pid)


def test_no_kernel_where_one_kept_warm_is_ready(tmp_path, monkeypatch):
    monkeypatch.setenv("NBSCALE_KERNEL_POOL", "1")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    path = flow(tmp_path / "flow")
    try:
        run = start_run(str(path), {"tag": "one"}, detach=False, no_cache=True)
        assert run.status == "SUCCEEDED", run.to_dict()
        deadline = time.monotonic() + 120
        while not any(k.get("state") == "ready" for k in warm.kernels()):
            assert time.monotonic() < deadline, "no kernel was kept warm"
            time.sleep(0.1)
        assert first_kernel.start(path, {"no_cache": True}) is False
    finally:
        assert warm.shutdown(60)


def test_a_detached_runner_starts_the_first_kernel_early_too(tmp_path):
    path = flow(tmp_path / "flow")
    run = start_run(str(path), {"tag": "detached"}, detach=True, no_cache=True)
    deadline = time.monotonic() + 120
    while not run.terminal:
        assert time.monotonic() < deadline, "the detached run did not end"
        time.sleep(0.2)
        run = get_run(run.id)
    assert run.status == "SUCCEEDED", run.to_dict()
    said = (run_dir(run.id) / "runner.log").read_text()
    pid = facts(path, "detached")["pid"]
    assert f"started while the DAG was prepared (pid {pid})" in said, said
    assert gone(pid)


@pytest.mark.parametrize("given", ["0", "65", "100000"])
def test_a_max_parallel_out_of_bounds_is_refused_before_anything_starts(given, capsys):
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    assert cli(["pipeline", "run", str(EXAMPLES / "pipeline.yaml"), "--max-parallel", given]) == 2
    err = capsys.readouterr().err
    assert f"--max-parallel: is {given}, not a count of steps from 1 to 64" in err, err
    assert err.count("nbscale:") == 1
    assert first_kernel.held() is None and runs_in_home() == []  # nothing recorded
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before  # none started
