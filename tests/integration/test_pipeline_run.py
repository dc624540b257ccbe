"""Running pipelines locally with real kernels: order, parallelism, cache, failures, partial runs."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest

from nbscale.cpus import allowed_cpus
from nbscale.pipelines import cancel_run, get_run, runs, start_run
from tests.support.pipeline_notebooks import cell, diamond, write_notebook


def intervals(path: Path) -> dict[str, tuple[float, float]]:
    marks: dict[str, dict[str, float]] = {}
    for line in path.read_text().splitlines():
        step, what, when = line.split()
        marks.setdefault(step, {})[what] = float(when)
    return {s: (m["start"], m["end"]) for s, m in marks.items()}


def statuses(run) -> dict[str, str]:
    return {s["name"]: s["status"] for s in run.to_dict()["steps"]}


def reasons(run) -> dict[str, str]:
    return {s["name"]: s["cache_reason"] for s in run.to_dict()["steps"]}


@pytest.fixture
def flow(tmp_path):
    (tmp_path / "helper.py").write_text("def twice(v):\n    return 2 * v\n")
    return diamond(tmp_path / "flow.ipynb", sleep=1.5)


def test_diamond_runs_in_order_in_parallel_then_hits_and_misses_the_cache(flow, tmp_path):
    run = start_run(str(flow), detach=False, max_parallel=2)
    assert run.status == "SUCCEEDED", run.to_dict()
    assert (tmp_path / "result.txt").read_text() == repr(([0, 4, 8, 12, 16], 10, "x"))
    spans = intervals(tmp_path / "marks.txt")
    assert spans["prepare"][1] <= min(spans["left"][0], spans["right"][0])
    assert max(spans["left"][1], spans["right"][1]) <= spans["join"][0]
    # the two middle steps overlap in time
    assert spans["left"][0] < spans["right"][1] and spans["right"][0] < spans["left"][1]
    if "OMP_NUM_THREADS" not in os.environ:  # parallel steps share the cores between their kernels
        assert (tmp_path / "threads.txt").read_text() == str(max(1, allowed_cpus() // 2))
    first = run.to_dict()
    assert all(
        not s["cached"] and s["cache_reason"] == "miss: first run of this step"
        for s in first["steps"]
    )
    executed = json.loads(Path(run.step("left")["notebook"]).read_text())
    assert any("parameters" in c["metadata"].get("tags", []) for c in executed["cells"])

    again = start_run(str(flow), detach=False)
    assert statuses(again) == dict.fromkeys(["prepare", "left", "right", "join"], "CACHED")
    assert all(r.startswith(f"hit: unchanged since run {run.id}") for r in reasons(again).values())
    assert all(s["cached"] for s in again.to_dict()["steps"])

    changed = start_run(str(flow), {"scale": 3}, detach=False)
    assert statuses(changed) == {
        "prepare": "CACHED",
        "left": "SUCCEEDED",
        "right": "CACHED",
        "join": "SUCCEEDED",
    }, changed.to_dict()
    assert reasons(changed)["left"] == "miss: parameter scale changed"
    assert reasons(changed)["join"] == "miss: input left changed"
    assert (tmp_path / "result.txt").read_text() == repr(([0, 6, 12, 18, 24], 10, "x"))

    (tmp_path / "helper.py").write_text("def twice(v):\n    return v + v\n")
    module = start_run(str(flow), {"scale": 3}, detach=False)
    # the imports cell runs in every step, so every step imports helper; left's values are the same
    assert set(reasons(module).values()) == {"miss: module helper.py changed"}

    diamond(flow, sleep=1.5, extra_a="unused = 1\n")
    edited = start_run(str(flow), {"scale": 3}, detach=False)
    assert reasons(edited)["left"] == "miss: source changed"
    assert statuses(edited)["right"] == "CACHED"

    forced = start_run(str(flow), {"scale": 3}, detach=False, no_cache=True, only=["right"])
    assert statuses(forced) == {
        "prepare": "REUSED",
        "left": "SKIPPED",
        "right": "SUCCEEDED",
        "join": "SKIPPED",
    }
    assert reasons(forced)["right"] == "miss: --no-cache"

    tail = start_run(str(flow), {"scale": 3}, detach=False, from_step="left")
    assert statuses(tail) == {
        "prepare": "REUSED",
        "left": "SUCCEEDED",
        "right": "REUSED",
        "join": "SUCCEEDED",
    }
    assert reasons(tail)["left"] == "miss: selected with --only/--from"

    assert [r.id for r in runs(limit=2)] == [tail.id, forced.id]


def test_a_failing_step_fails_the_run_names_the_cell_and_keeps_the_traceback(tmp_path):
    path = write_notebook(
        tmp_path / "fail.ipynb",
        [
            cell("a = 1", "step:one"),
            cell("b = a + 1", "step:two", "prev:one"),
            cell("raise ValueError(f'bad value {b}')"),
            cell("c = b", "step:three", "prev:two"),
        ],
    )
    run = start_run(str(path), detach=False)
    assert run.status == "FAILED"
    assert run.error == "step two failed in cell 2 of fail.ipynb: ValueError: bad value 2"
    assert statuses(run) == {"one": "SUCCEEDED", "two": "FAILED", "three": "SKIPPED"}
    text = Path(run.step("two")["notebook"]).read_text()
    assert (
        "ValueError" in text
        and "bad value 2" in text
        and "Traceback" in text
        or "raise ValueError" in text
    )
    assert get_run(run.id[:12]).status == "FAILED"


def test_a_dead_kernel_is_a_failure(tmp_path):
    path = write_notebook(tmp_path / "die.ipynb", [cell("import os\nos._exit(3)", "step:boom")])
    run = start_run(str(path), detach=False)
    assert run.status == "FAILED"
    assert "kernel died" in run.error or "without saving its outputs" in run.error
    assert run.step("boom")["status"] == "FAILED"


def test_timeout_stops_the_step_and_retries_run_it_again(tmp_path):
    path = write_notebook(
        tmp_path / "slow.ipynb", [cell("import time\ntime.sleep(60)", "step:slow")]
    )
    (tmp_path / "pipeline.yaml").write_text(
        "steps:\n"
        "  - {name: slow, notebook: slow.ipynb, timeout: 2}\n"
        "  - {name: flaky, notebook: flaky.ipynb, retries: 2}\n"
    )
    write_notebook(
        tmp_path / "flaky.ipynb",
        [
            cell(
                "import pathlib\np = pathlib.Path('tries.txt')\np.write_text(p.read_text() + 'x' if p.exists() else 'x')\n"
                "assert len(p.read_text()) >= 2, 'first try fails'"
            )
        ],
    )
    assert path.exists()
    run = start_run(str(tmp_path / "pipeline.yaml"), detach=False, max_parallel=2)
    assert run.status == "FAILED"
    assert run.step("slow")["error"] == "step slow timed out after 2 s; its kernel was stopped"
    assert run.step("flaky")["status"] == "SUCCEEDED" and run.step("flaky")["attempts"] == 2


def test_parameters_reach_the_notebook_typed(tmp_path):
    path = write_notebook(
        tmp_path / "types.ipynb",
        [
            cell(
                "code = 'a'\nn = 1\nratio = 0.5\nflag = False\nitems = [1]", "pipeline-parameters"
            ),
            cell(
                "import json\nopen('types.json', 'w').write(json.dumps("
                "[[type(v).__name__, v] for v in (code, n, ratio, flag, items)]))",
                "step:show",
            ),
        ],
    )
    run = start_run(
        str(path),
        {"code": "007", "n": 4, "ratio": 2, "flag": True, "items": ["a", "b's"]},
        detach=False,
    )
    assert run.status == "SUCCEEDED", run.error
    assert json.loads((tmp_path / "types.json").read_text()) == [
        ["str", "007"],
        ["int", 4],
        ["float", 2.0],
        ["bool", True],
        ["list", ["a", "b's"]],
    ]


def test_detached_run_from_the_cli_and_a_killed_runner_is_lost(flow, nbscale_cli, tmp_path):
    import psutil

    from tests.support import wait_for

    proc = nbscale_cli("pipeline", "run", str(flow), "--detach", check=True)
    run_id = proc.stdout.strip()
    wait_for(lambda: get_run(run_id).terminal, timeout=120, what="the detached run")
    status = json.loads(nbscale_cli("pipeline", "status", run_id, "--json", check=True).stdout)
    assert status["status"] == "SUCCEEDED" and len(status["steps"]) == 4
    listing = nbscale_cli("pipeline", "runs", check=True).stdout
    assert run_id in listing and "SUCCEEDED" in listing

    second = start_run(str(flow), {"scale": 5}, detach=True)
    wait_for(lambda: get_run(second.id).status == "RUNNING", timeout=60, what="the runner")
    from nbscale.store import get_store

    pid = get_store().query_one("SELECT pid FROM pipeline_runs WHERE id = ?", (second.id,))["pid"]
    runner = psutil.Process(pid)
    kids = runner.children(recursive=True)
    runner.kill()
    runner.wait(10)
    lost = get_run(second.id)
    assert lost.status == "LOST" and "runner process died" in lost.error
    for kid in kids:  # the runner's kernels are ours to clean up in the test
        with contextlib.suppress(psutil.Error):
            kid.kill()


def test_cli_reports_bad_input_in_one_line(nbscale_cli, tmp_path):
    proc = nbscale_cli("pipeline", "run", str(tmp_path / "missing.ipynb"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "does not exist" in proc.stderr


def test_stopping_a_detached_run_cancels_it_and_kills_its_kernels(tmp_path):
    import signal
    import time

    import psutil

    from nbscale.store import get_store
    from tests.support import wait_for

    path = write_notebook(
        tmp_path / "slow.ipynb",
        [
            cell("import time\ntime.sleep(120)", "step:slow"),
            cell("x = 1", "step:after", "prev:slow"),
        ],
    )
    run = start_run(str(path))
    wait_for(
        lambda: get_run(run.id).step("slow")["status"] == "RUNNING",
        timeout=60,
        what="the step to start",
    )
    pid = get_store().query_one("SELECT pid FROM pipeline_runs WHERE id = ?", (run.id,))["pid"]
    runner = psutil.Process(pid)
    kernels = wait_for(
        lambda: [
            p for p in runner.children(recursive=True) if "ipykernel" in " ".join(p.cmdline())
        ],
        timeout=60,
        what="the step's kernel",
    )
    try:
        assert cancel_run(run.id).status == "CANCELLED"  # SIGTERM to the runner, then waits for it
    except TimeoutError:
        from nbscale.pipelines.runner import run_dir

        runner.send_signal(signal.SIGUSR1)
        time.sleep(1)
        log = (run_dir(run.id) / "runner.log").read_text()
        runner.kill()
        raise AssertionError(f"the runner did not stop on SIGTERM; its log:\n{log}") from None
    try:
        runner.wait(60)
    except psutil.TimeoutExpired:
        from nbscale.pipelines.runner import run_dir

        log = (run_dir(run.id) / "runner.log").read_text()
        runner.kill()
        raise AssertionError(f"the runner did not stop on SIGTERM; its log:\n{log}") from None
    ended = get_run(run.id)
    assert ended.status == "CANCELLED" and ended.error == "interrupted"
    assert statuses(ended) == {"slow": "CANCELLED", "after": "CANCELLED"}
    gone, alive = psutil.wait_procs(kernels, timeout=10)
    assert not alive, f"kernels left running: {alive}"


def test_ctrl_c_on_the_cli_cancels_the_run(tmp_path):
    import signal
    import subprocess
    import sys

    import psutil

    from tests.support import wait_for

    path = write_notebook(
        tmp_path / "slow.ipynb", [cell("import time\ntime.sleep(120)", "step:slow")]
    )
    # Ctrl-C as a terminal delivers it: a suite started in the background (`cmd &` in a
    # non-interactive shell, nohup) passes SIGINT down as ignored, and a Python started
    # with SIGINT ignored keeps ignoring it, so the CLI must start with the default
    cli = subprocess.Popen(
        [sys.executable, "-m", "nbscale", "pipeline", "run", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    wait_for(
        lambda: runs() and runs()[0].step("slow")["status"] == "RUNNING",
        timeout=60,
        what="the step",
    )
    kernels = wait_for(
        lambda: [
            p
            for p in psutil.Process(cli.pid).children(recursive=True)
            if "ipykernel" in " ".join(p.cmdline())
        ],
        timeout=60,
        what="the kernel",
    )
    cli.send_signal(signal.SIGINT)
    try:
        out, err = cli.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        cli.kill()
        out, err = cli.communicate()
        raise AssertionError(f"the CLI did not stop on Ctrl-C:\n{err}") from None
    assert cli.returncode == 130, err
    assert "interrupted; the run was cancelled" in err
    assert runs()[0].status == "CANCELLED"
    assert not psutil.wait_procs(kernels, timeout=10)[1]
    from nbscale.errors import Conflict

    with pytest.raises(Conflict, match="already ended"):
        cancel_run(runs()[0].id)


def test_ctrl_c_while_the_step_kernel_starts_cancels_the_run(tmp_path):
    """The window the Ctrl-C flake was blamed on, held open on purpose: the step's kernel
    takes 8 s to start (a python3 kernelspec, first on JUPYTER_PATH, that sleeps before it
    execs ipykernel), and SIGINT arrives while it is still starting. The run must be
    cancelled and the half-started kernel killed, not the step run once the kernel is up."""
    import signal
    import subprocess
    import sys

    import psutil

    from tests.support import wait_for

    specs = tmp_path / "jupyter" / "kernels" / "python3"
    specs.mkdir(parents=True)
    launcher = (
        "import runpy, sys, time; time.sleep(8); "
        "sys.argv = ['ipykernel_launcher', '-f', sys.argv[1]]; "
        "runpy.run_module('ipykernel_launcher', run_name='__main__', alter_sys=True)"
    )
    (specs / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-c", launcher, "{connection_file}", "slow-start"],
                "display_name": "Python 3 (slow start)",
                "language": "python",
            }
        )
    )
    path = write_notebook(
        tmp_path / "slow.ipynb", [cell("import time\ntime.sleep(120)", "step:slow")]
    )
    cli = subprocess.Popen(
        [sys.executable, "-m", "nbscale", "pipeline", "run", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "JUPYTER_PATH": str(tmp_path / "jupyter")},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    starting = wait_for(
        lambda: [
            p
            for p in psutil.Process(cli.pid).children(recursive=True)
            if "slow-start" in p.cmdline()
        ],
        timeout=60,
        what="the starting kernel",
    )
    wait_for(
        lambda: runs() and runs()[0].step("slow")["status"] == "RUNNING",
        timeout=60,
        what="the step",
    )
    assert all(p.is_running() for p in starting)  # still inside its 8 s start
    cli.send_signal(signal.SIGINT)
    try:
        out, err = cli.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        cli.kill()
        out, err = cli.communicate()
        raise AssertionError(
            f"Ctrl-C during the kernel's start did not stop the run:\n{err}"
        ) from None
    assert cli.returncode == 130, err
    assert "interrupted; the run was cancelled" in err
    assert runs()[0].status == "CANCELLED"
    assert runs()[0].step("slow")["status"] == "CANCELLED"
    assert not psutil.wait_procs(starting, timeout=10)[1], "the half-started kernel was left"
