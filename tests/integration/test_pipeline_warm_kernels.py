"""Kernels kept warm between pipeline runs (``nbscale.pipelines.warm``), with real kernels and
a real keeper process: a run's first step takes a kernel started before the run, only a run
of the same environment gets it, it serves one step, the pool stays within its bound, idle
kernels go after the TTL leaving no process behind, a killed kernel is skipped, and the
results are those of a run without the pool."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from nbscale.pipelines import start_run, warm
from tests.support.pipeline_notebooks import probe_flow

PROBE = (
    "import json, os, time\nimport psutil\n"
    "me = psutil.Process()\n"
    "facts = {'pid': os.getpid(), 'ppid': os.getppid(), 'created': me.create_time(),\n"
    "         'mark': os.environ.get('POOL_MARK'), 'cwd': os.getcwd(), 'now': time.time(),\n"
    "         'names': sorted(n for n in globals() if not n.startswith('_'))}\n"
    "open(f'facts-{tag}.json', 'w').write(json.dumps(facts))\n"
    "value = [v * scale for v in range(5)]\n"
    "print('value', value)"
)


def flow(folder: Path) -> Path:
    return probe_flow(
        folder,
        "tag = 'one'\nscale = 3",
        PROBE,
        "result = (sum(value), len(value))\nprint('result', result)\n"
        "open(f'result-{tag}.txt', 'w').write(repr(result))",
    )


def run(path: Path, tag: str) -> dict:
    done = start_run(str(path), {"tag": tag}, detach=False, no_cache=True)
    record = done.to_dict()
    assert record["status"] == "SUCCEEDED", record
    facts = json.loads((path.parent / f"facts-{tag}.json").read_text())
    facts["step_started"] = next(s for s in record["steps"] if s["name"] == "probe")["started"]
    facts["outputs"] = {
        s["name"]: [
            o.get("text")
            for c in json.loads(Path(s["notebook"]).read_text())["cells"]
            for o in c.get("outputs", [])
            if c["metadata"].get("nbscale", {}).get("origin") is not None
        ]
        for s in record["steps"]
    }
    facts["result"] = (path.parent / f"result-{tag}.txt").read_text()
    return facts


def until(predicate, timeout: float = 120.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def ready() -> list[dict]:
    return [k for k in warm.kernels() if k.get("state") == "ready"]


def home_kernels(home: Path) -> list[psutil.Process]:
    """Kernel processes (ipykernel) of this test's home, wherever their parent is."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if "ipykernel_launcher" not in " ".join(proc.info["cmdline"] or []):
                continue
            if proc.environ().get("NBSCALE_HOME") == str(home) and proc.status() != "zombie":
                found.append(proc)
        except psutil.Error:
            continue
    return found


def mark_of(pid: int) -> str | None:
    try:
        return psutil.Process(pid).environ().get("POOL_MARK")
    except psutil.Error:
        return None


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


@pytest.fixture
def pool(monkeypatch, nbscale_home):
    monkeypatch.setenv("NBSCALE_KERNEL_POOL", "1")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    yield nbscale_home
    assert warm.shutdown(60), "the keepers did not exit"
    until(lambda: not home_kernels(nbscale_home), 30, "no kernel of the pool left")


def test_the_next_run_starts_on_a_kernel_kept_warm_and_gets_the_same_results(
    pool, tmp_path, monkeypatch
):
    path = flow(tmp_path / "flow")
    cold = run(path, "cold")
    assert cold["ppid"] == os.getpid()  # nothing was warm: the run started its own kernel

    waiting = until(ready, what="a warm kernel")
    assert len(waiting) == 1
    keeper = until(warm.keepers, what="a keeper")[0]
    spare = waiting[0]

    hot = run(path, "hot")
    # the first step ran on the kernel the keeper started before this run, not a new one
    assert hot["pid"] == spare["pid"]
    assert hot["ppid"] == keeper[0] != os.getpid()
    assert hot["created"] < hot["step_started"] - 0.1
    assert hot["cwd"] == str(path.parent)
    # fresh: the step saw only its own names, as on a kernel of its own
    assert hot["names"] == cold["names"]
    # used by that one step and never returned: killed after it, a new one warms for the next
    assert until(lambda: gone(hot["pid"]), 30, "the used kernel to exit")
    assert all(k["pid"] != hot["pid"] for k in warm.kernels())
    replacement = until(ready, what="a replacement")[0]
    assert replacement["pid"] != hot["pid"]

    monkeypatch.setenv("NBSCALE_KERNEL_POOL", "0")
    off = run(path, "off")
    assert off["ppid"] == os.getpid()
    for facts in (hot, off):
        assert facts["result"] == cold["result"] == repr((30, 5))
        assert [o for o in facts["outputs"]["use"]] == [o for o in cold["outputs"]["use"]]
        assert facts["outputs"]["probe"] == cold["outputs"]["probe"]


def test_a_run_with_another_environment_or_folder_never_gets_the_warm_kernel(
    pool, tmp_path, monkeypatch
):
    monkeypatch.setenv("NBSCALE_KERNEL_POOL_SIZE", "3")  # room for all three: none gives way
    monkeypatch.setenv("POOL_MARK", "a")
    path = flow(tmp_path / "flow")
    run(path, "first")
    spare = until(ready, what="a warm kernel")[0]

    monkeypatch.setenv("POOL_MARK", "b")  # one variable differs
    other = run(path, "other")
    assert other["pid"] != spare["pid"] and other["mark"] == "b"

    monkeypatch.setenv("POOL_MARK", "a")
    elsewhere = flow(tmp_path / "elsewhere")  # the same environment, another working folder
    moved = run(elsewhere, "moved")
    assert moved["pid"] != spare["pid"] and moved["cwd"] == str(elsewhere.parent)

    # the warm kernel of environment "a" in the first folder waited all along, untouched
    assert not gone(spare["pid"])
    assert spare["pid"] in [k["pid"] for k in ready()]
    same = run(path, "same")
    assert same["pid"] == spare["pid"] and same["mark"] == "a"


def test_the_pool_stays_within_its_bound_and_idle_kernels_go_after_the_ttl(
    pool, tmp_path, monkeypatch
):
    monkeypatch.setenv("NBSCALE_KERNEL_POOL_SIZE", "1")
    monkeypatch.setenv("NBSCALE_KERNEL_POOL_TTL", "6")
    path = flow(tmp_path / "flow")
    seen: list[int] = []
    stop = threading.Event()

    def sample() -> None:  # the whole time, ten times a second
        while not stop.is_set():
            kernels = warm.kernels()
            seen.append(len([k for k in kernels if k.get("state") in ("starting", "ready")]))
            time.sleep(0.1)

    def warm_for(mark: str) -> list[dict]:
        return [k for k in ready() if mark_of(k["pid"]) == mark]

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        for mark in ("a", "b", "c"):  # three environments, room for one warm kernel
            monkeypatch.setenv("POOL_MARK", mark)
            run(path, mark)
            # the environment used last gets the one place
            until(lambda m=mark: warm_for(m), what=f"a warm kernel for {mark}")
        time.sleep(1.0)
    finally:
        stop.set()
        sampler.join()
    assert max(seen) == 1
    (kept,) = ready()
    assert mark_of(kept["pid"]) == "c"
    assert len(home_kernels(pool)) == 1

    # nobody uses it: after the TTL it is shut down, its keeper exits, no process is left
    until(lambda: not warm.keepers() and not home_kernels(pool), 60, "the pool to empty")
    assert gone(kept["pid"])
    assert warm.kernels() == []
    assert not Path(kept["folder"]).exists()


def test_a_killed_warm_kernel_is_skipped(pool, tmp_path):
    path = flow(tmp_path / "flow")
    run(path, "first")
    spare = until(ready, what="a warm kernel")[0]
    keeper = until(warm.keepers, what="a keeper")[0]
    # the keeper cannot notice (stopped), the kernel is killed, its connection file is left
    os.kill(int(keeper[0]), signal.SIGSTOP)
    try:
        os.kill(spare["pid"], signal.SIGKILL)
        until(lambda: gone(spare["pid"]), 10, "the kernel to die")
        assert Path(spare["connection"]).exists()
        assert [k["pid"] for k in ready()] == [spare["pid"]]
        after = run(path, "after")
    finally:
        os.kill(int(keeper[0]), signal.SIGCONT)
    assert after["pid"] != spare["pid"] and after["ppid"] == os.getpid()
    assert after["result"] == repr((30, 5))
    assert spare["pid"] not in [k.get("pid") for k in warm.kernels()]


def test_a_bad_pool_setting_is_refused_before_the_run_is_recorded(tmp_path, monkeypatch):
    from nbscale.errors import SpecError
    from nbscale.pipelines import runs

    path = flow(tmp_path / "flow")
    monkeypatch.setenv("NBSCALE_KERNEL_POOL_TTL", "soon")
    with pytest.raises(SpecError, match="NBSCALE_KERNEL_POOL_TTL: is 'soon', not a number"):
        start_run(str(path), detach=False)
    monkeypatch.setenv("NBSCALE_KERNEL_POOL_TTL", "5")
    monkeypatch.setenv("NBSCALE_KERNEL_POOL_SIZE", "-1")
    with pytest.raises(SpecError, match="NBSCALE_KERNEL_POOL_SIZE: is '-1', not a count"):
        start_run(str(path), detach=False)
    # and the bounds: no more than 16 idle kernels, none kept longer than a day
    monkeypatch.setenv("NBSCALE_KERNEL_POOL_SIZE", "500")
    with pytest.raises(SpecError, match="NBSCALE_KERNEL_POOL_SIZE: is '500', .* from 0 to 16"):
        start_run(str(path), detach=False)
    monkeypatch.setenv("NBSCALE_KERNEL_POOL_SIZE", "2")
    monkeypatch.setenv("NBSCALE_KERNEL_POOL_TTL", "1e9")
    with pytest.raises(SpecError, match="NBSCALE_KERNEL_POOL_TTL: is '1e9', .* up to 86400"):
        start_run(str(path), detach=False)
    assert list(runs()) == []


DEFERRED = """
import json, sys
{prelude}
from nbscale.pipelines.kernels import register_engine
register_engine()
before = {m: m in sys.modules for m in ("boto3", "pyarrow", "requests", "click")}
import papermill.iorw, papermill.inspection
papermill.inspection.click.echo("echoed")  # papermill's call reaches the real click
selector = papermill.iorw.FileSelector("/tmp", recursive=False)
import pyarrow.fs, requests
print(json.dumps({"before": before, "selector": type(selector).__module__,
                  "real": [type(pyarrow.fs.LocalFileSystem()).__name__, requests.get.__module__]}))
"""


def test_papermill_is_imported_without_its_unused_handlers_which_still_work_when_called():
    import subprocess
    import sys

    def run(prelude: str = "") -> dict:
        out = subprocess.run(
            [sys.executable, "-c", DEFERRED.replace("{prelude}", prelude)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        assert out[0] == "echoed"
        return json.loads(out[-1])

    for prelude in ("", SPEC_LOOKUP):  # a run looks its kernelspec up first (ipykernel.kernelspec)
        facts = run(prelude)
        assert facts["before"] == dict.fromkeys(["boto3", "pyarrow", "requests", "click"], False)
        assert facts["selector"].startswith("pyarrow")
        assert facts["real"] == ["LocalFileSystem", "requests.api"]


# what a run does before papermill's import: its kernels' environment key reads the
# kernelspec, and jupyter_client imports ipykernel.kernelspec for the native kernel
SPEC_LOOKUP = """
from nbscale.pipelines.warm import environment_key
environment_key("python3", ".", {})
assert "ipykernel" in sys.modules
"""


def test_inside_an_ipython_shell_papermill_is_imported_plainly():
    import subprocess
    import sys

    pytest.importorskip("IPython")
    prelude = (
        "from IPython.core.interactiveshell import InteractiveShell\nInteractiveShell.instance()"
    )
    out = subprocess.run(
        [sys.executable, "-c", DEFERRED.replace("{prelude}", prelude)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    # the user's own threads may import requests meanwhile: no stand-ins there
    assert json.loads(out[-1])["before"]["requests"] is True
