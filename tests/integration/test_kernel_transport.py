"""Every kernel nbscale starts talks to it over Unix sockets in a private folder, not over TCP.

ipykernel warns ``Kernel is running over TCP without encryption`` for any unencrypted TCP
kernel, loopback included. These tests run what a user runs (``nbscale quickstart``, a
notebook as a job, a pipeline step's container command, a local pipeline run) as their own
processes and fail on that warning; the notebooks report, from inside the kernel, how the
kernel was reached; and afterwards nothing is left in the temporary folder or Jupyter's runtime
folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support.emulators import container_env
from tests.support.notebooks import write_notebook

WARNING = re.compile(r"running over TCP without encryption|\[IPKernelApp\] WARNING")

# run inside the kernel: how it is reached, read from its own connection file
REPORT = """
import json, os, stat
from ipykernel.connect import get_connection_file
_cf = get_connection_file()
with open(_cf) as _fh:
    _info = json.load(_fh)
_ports = [_info[p] for p in ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")]
_folder = os.path.dirname(_info["ip"]) if _info["transport"] == "ipc" else os.path.dirname(_cf)
print("KERNEL-TRANSPORT " + json.dumps({
    "transport": _info["transport"],
    "ip": _info["ip"],
    "connection_file": _cf,
    "folder": _folder,
    "folder_mode": stat.S_IMODE(os.stat(_folder).st_mode) & 0o777,
    "folder_owner": os.stat(_folder).st_uid == os.getuid(),
    "sockets": [
        _info["transport"] == "ipc" and stat.S_ISSOCK(os.stat(f"{_info['ip']}-{p}").st_mode)
        for p in _ports
    ],
    "curve": bool(_info.get("curve_secretkey")),
}))
"""


@pytest.fixture
def short_tmp():
    """A temporary folder of the process under test, short enough for socket paths, and
    Jupyter's runtime folder: both must be empty again when the process is done."""
    tmp = Path(tempfile.mkdtemp(prefix="nbk-", dir="/tmp"))
    (tmp / "tmp").mkdir()
    (tmp / "runtime").mkdir()
    yield tmp
    shutil.rmtree(tmp, ignore_errors=True)


def _env(short_tmp: Path) -> dict[str, str]:
    return {"TMPDIR": str(short_tmp / "tmp"), "JUPYTER_RUNTIME_DIR": str(short_tmp / "runtime")}


def _reports(text: str) -> list[dict]:
    return [json.loads(line.split(" ", 1)[1]) for line in re.findall(r"KERNEL-TRANSPORT .*", text)]


def _printed(notebook: Path) -> str:
    """What the cells of an executed notebook printed."""
    cells = json.loads(notebook.read_text())["cells"]
    return "".join(
        "".join(o.get("text", "")) for c in cells for o in c.get("outputs", []) if "text" in o
    )


def _assert_private_ipc(report: dict, short_tmp: Path) -> None:
    assert report["transport"] == "ipc", report
    folder = Path(report["folder"])
    assert folder.parent == short_tmp / "tmp", report  # under the process's TMPDIR
    assert report["folder_mode"] == 0o700 and report["folder_owner"], report
    assert all(report["sockets"]) and len(report["sockets"]) == 5, report
    assert Path(report["connection_file"]).parent == folder, report
    assert not folder.exists(), f"{folder} was left behind"


def _assert_nothing_left(short_tmp: Path) -> None:
    assert [p.name for p in (short_tmp / "tmp").glob("nbscale-k*")] == []
    assert list((short_tmp / "runtime").iterdir()) == []


@pytest.mark.timeout(300)
def test_the_quickstart_prints_no_kernel_security_warning(nbscale_cli, tmp_path, short_tmp):
    out = tmp_path / "quickstart-out.ipynb"
    proc = nbscale_cli("quickstart", "--output", str(out), timeout=280, env=_env(short_tmp))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "accuracy:" in proc.stdout
    assert not WARNING.search(proc.stdout + proc.stderr), proc.stderr
    _assert_nothing_left(short_tmp)


def test_the_quickstart_kernel_is_reached_over_a_private_unix_socket(
    nbscale_cli, tmp_path, short_tmp
):
    """``--notebook`` runs another notebook the same way: this one reports its kernel."""
    notebook = write_notebook(tmp_path / "report.ipynb", REPORT)
    out = tmp_path / "report-out.ipynb"
    proc = nbscale_cli(
        "quickstart", "--notebook", str(notebook), "--output", str(out), env=_env(short_tmp)
    )
    # the notebook has no result cell, so the command says so; the kernel ran all the same
    assert "has no result cell output" in proc.stderr, proc.stdout + proc.stderr
    assert not WARNING.search(proc.stdout + proc.stderr), proc.stderr
    (report,) = _reports(_printed(out))
    _assert_private_ipc(report, short_tmp)
    _assert_nothing_left(short_tmp)


@pytest.mark.timeout(300)
def test_a_notebook_job_runs_its_kernels_over_private_unix_sockets(
    nbscale_cli, tmp_path, short_tmp
):
    notebook = write_notebook(tmp_path / "ranks.ipynb", REPORT)
    proc = nbscale_cli(
        "run", str(notebook), "--procs-per-node", "2", timeout=240, env=_env(short_tmp)
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = proc.stdout + proc.stderr  # the ranks' logs, "[rank N] ..." lines
    assert not WARNING.search(text), text
    reports = {r["ip"]: r for r in _reports(text)}
    assert len(reports) == 2, text  # one kernel per rank, each in its own folder
    for report in reports.values():
        _assert_private_ipc(report, short_tmp)
    _assert_nothing_left(short_tmp)


@pytest.mark.timeout(200)
def test_a_cancelled_notebook_job_leaves_no_socket_folder(nbscale_cli, tmp_path, short_tmp):
    """Cancelling stops the rank with SIGTERM, which skips ``finally``: the folder goes anyway."""
    from tests.support import wait_for

    notebook = write_notebook(tmp_path / "slow.ipynb", "import time\ntime.sleep(120)")
    # the default grace before SIGKILL (the tier's 3 s is for jobs that ignore SIGTERM; a rank
    # that acts on it is gone at once either way, on a loaded machine too)
    env = {**_env(short_tmp), "NBSCALE_CANCEL_GRACE": "10"}
    proc = nbscale_cli("run", str(notebook), "--detach", env=env, check=True)
    job = proc.stdout.strip()
    folders = lambda: list((short_tmp / "tmp").glob("nbscale-k-*"))  # noqa: E731
    (folder,) = wait_for(folders, 120, what="the rank's kernel folder")
    wait_for(lambda: list(folder.glob("kernel-*")), 60, what="the kernel's sockets")
    nbscale_cli("cancel", job, env=env, check=True)
    try:
        wait_for(lambda: not folder.exists(), 30, what=f"{folder} to be removed")
    except AssertionError:
        logs = nbscale_cli("logs", job, env=_env(short_tmp))
        status = nbscale_cli("status", job, env=_env(short_tmp))
        raise AssertionError(
            f"{folder} was left: {list(folder.iterdir())}\n{logs.stdout}{status.stdout}"
        ) from None
    _assert_nothing_left(short_tmp)


@pytest.mark.timeout(200)
def test_a_rank_killed_with_sigkill_leaves_no_socket_folder(nbscale_cli, tmp_path, short_tmp):
    """SIGKILL runs no handler: the supervisor removes the folder the rank noted in the job's
    folder once the job's processes are gone."""
    import signal

    import psutil

    from nbscale.backends.local.processes import job_processes
    from tests.support import wait_for

    notebook = write_notebook(tmp_path / "slow.ipynb", "import time\ntime.sleep(120)")
    env = _env(short_tmp)
    job = nbscale_cli("run", str(notebook), "--detach", env=env, check=True).stdout.strip()
    folders = lambda: list((short_tmp / "tmp").glob("nbscale-k-*"))  # noqa: E731
    (folder,) = wait_for(folders, 120, what="the rank's kernel folder")
    wait_for(lambda: list(folder.glob("kernel-*")), 60, what="the kernel's sockets")
    (kernel,) = [p for p in job_processes(job) if "ipykernel_launcher" in " ".join(p.cmdline())]
    rank = kernel.parent()
    for proc in (rank, kernel):  # the rank and its kernel, as the OOM killer would
        proc.send_signal(signal.SIGKILL)
    psutil.wait_procs([rank, kernel], timeout=10)
    wait_for(lambda: not folder.exists(), 60, what=f"{folder} to be removed")
    status = nbscale_cli("status", job, env=env)
    assert "FAILED" in status.stdout, status.stdout
    _assert_nothing_left(short_tmp)


def test_a_pipeline_steps_container_command_runs_its_kernel_over_a_private_unix_socket(
    tmp_path, short_tmp
):
    """The exact command a SageMaker step runs, as its own "container": own home, own env."""
    code = tmp_path / "code"
    code.mkdir()
    write_notebook(code / "step.ipynb", REPORT)
    home = tmp_path / "container"
    home.mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "nbscale.pipelines.container_step",
            "--code",
            str(code),
            "--outputs",
            str(tmp_path / "outputs"),
            "--executed",
            str(tmp_path / "executed"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=container_env(home, **_env(short_tmp)),
        cwd=home,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not WARNING.search(proc.stdout + proc.stderr), proc.stderr
    (report,) = _reports(_printed(tmp_path / "executed" / "step.ipynb"))
    _assert_private_ipc(report, short_tmp)
    # the step's own scratch copy is its business; no kernel folder or socket may remain
    _assert_nothing_left(short_tmp)


def test_a_local_pipeline_run_leaves_no_kernel_folder(nbscale_cli, tmp_path, short_tmp):
    from tests.support.pipeline_notebooks import cell
    from tests.support.pipeline_notebooks import write_notebook as write_pipeline

    path = write_pipeline(
        tmp_path / "pipe.ipynb",
        [
            cell("x = 2", "step:first"),
            cell(REPORT + "\ny = x * 2", "step:second", "prev:first"),
        ],
    )
    proc = nbscale_cli("pipeline", "run", str(path), timeout=240, env=_env(short_tmp))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not WARNING.search(proc.stdout + proc.stderr), proc.stderr
    executed = list((Path(os.environ["NBSCALE_HOME"])).rglob("second*.ipynb"))
    reports = [r for p in executed for r in _reports(_printed(p))]
    assert reports, executed
    for report in reports:
        _assert_private_ipc(report, short_tmp)
    _assert_nothing_left(short_tmp)


# kfp.local says that resources and retries do nothing locally, and that the step image is not
# used by SubprocessRunner (this environment stands in for it): both expected
@pytest.mark.filterwarnings("ignore:Task .* no effect in the current local runner:UserWarning")
@pytest.mark.filterwarnings("ignore:You may be attemping to run a task:RuntimeWarning")
def test_a_kubeflow_step_runs_its_kernel_over_a_private_unix_socket(
    tmp_path, short_tmp, monkeypatch, capfd
):
    """The compiled KFP component, run by kfp.local as a subprocess of its own."""
    pytest.importorskip("kfp")
    from kfp import components, local

    from nbscale.pipelines import compile_pipeline
    from tests.support.pipeline_notebooks import cell
    from tests.support.pipeline_notebooks import write_notebook as write_pipeline

    for name, value in _env(short_tmp).items():
        monkeypatch.setenv(name, value)
    path = write_pipeline(tmp_path / "probe.ipynb", [cell(REPORT, "step:probe")])
    out = compile_pipeline(str(path), "kfp", str(tmp_path / "probe.yaml"), key_secret="")
    local.init(
        runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp-root")
    )
    components.load_component_from_file(out)()
    printed = capfd.readouterr()
    assert not WARNING.search(printed.out + printed.err), printed.out + printed.err
    (executed,) = (tmp_path / "kfp-root").rglob("step-probe/executed")
    (report,) = _reports(_printed(executed))
    _assert_private_ipc(report, short_tmp)
    _assert_nothing_left(short_tmp)


def test_a_temp_folder_too_deep_for_socket_paths_puts_the_sockets_under_tmp(
    nbscale_cli, tmp_path, short_tmp
):
    """TMPDIR's socket paths would pass the AF_UNIX limit: the private folder goes to /tmp."""
    deep = short_tmp / "tmp" / ("d" * 60) / ("e" * 30)
    deep.mkdir(parents=True)
    assert len(str(deep / "nbscale-k-xxxxxxxx" / "kernel-5")) > 107
    notebook = write_notebook(tmp_path / "report.ipynb", REPORT)
    out = tmp_path / "report-out.ipynb"
    env = {**_env(short_tmp), "TMPDIR": str(deep)}
    proc = nbscale_cli("quickstart", "--notebook", str(notebook), "--output", str(out), env=env)
    assert not WARNING.search(proc.stdout + proc.stderr), proc.stderr
    (report,) = _reports(_printed(out))
    assert report["transport"] == "ipc" and Path(report["folder"]).parent == Path("/tmp"), report
    assert report["folder_mode"] == 0o700 and all(report["sockets"]), report
    assert not Path(report["folder"]).exists()
    assert list(deep.iterdir()) == [] and list((short_tmp / "runtime").iterdir()) == []


WRAPPER = """
from ipykernel.kernelapp import launch_new_instance

launch_new_instance()
"""


@pytest.mark.parametrize("curve", [True, False], ids=["curve", "no-curve"])
def test_a_kernel_that_may_not_speak_ipc_gets_tcp_on_loopback_and_says_why(
    nbscale_cli, tmp_path, short_tmp, curve
):
    """A kernelspec that does not run ``-m ipykernel_launcher`` (here: a script around it) gets
    TCP on 127.0.0.1, CurveZMQ-encrypted where its kernelspec declares support."""
    import zmq

    if curve and not zmq.has("curve"):
        pytest.skip("this libzmq has no CurveZMQ")
    kernels = tmp_path / "jupyter" / "kernels" / "wrapped"
    kernels.mkdir(parents=True)
    script = tmp_path / "wrapped_kernel.py"
    script.write_text(WRAPPER)
    spec = {
        "argv": [sys.executable, str(script), "-f", "{connection_file}"],
        "display_name": "Wrapped",
        "language": "python",
        "metadata": {"supported_encryption": ["curve"]} if curve else {},
    }
    (kernels / "kernel.json").write_text(json.dumps(spec))
    notebook = write_notebook(tmp_path / "report.ipynb", REPORT)
    out = tmp_path / "report-out.ipynb"
    env = {**_env(short_tmp), "JUPYTER_PATH": str(tmp_path / "jupyter")}
    proc = nbscale_cli(
        "quickstart",
        "--notebook",
        str(notebook),
        "--kernel",
        "wrapped",
        "--output",
        str(out),
        env=env,
    )
    said = [line for line in proc.stderr.splitlines() if "over TCP on 127.0.0.1 only" in line]
    assert len(said) == 1 and "kernel 'wrapped' is not ipykernel" in said[0], proc.stderr
    assert ("encrypted with CurveZMQ" in said[0]) == curve, said
    (report,) = _reports(_printed(out))
    assert report["transport"] == "tcp" and report["ip"] == "127.0.0.1", report
    assert report["curve"] == curve, report
    # the connection file (its key signs every message) still sits in a private folder
    assert Path(report["folder"]).parent == short_tmp / "tmp" and report["folder_mode"] == 0o700
    # without CurveZMQ, ipykernel's own warning is the truth and is not hidden
    assert bool(WARNING.search(proc.stderr)) == (not curve), proc.stderr
    _assert_nothing_left(short_tmp)


@pytest.mark.timeout(200)
def test_a_cancelled_pipeline_run_leaves_no_socket_folder(nbscale_cli, tmp_path, short_tmp):
    from tests.support import wait_for
    from tests.support.pipeline_notebooks import cell
    from tests.support.pipeline_notebooks import write_notebook as write_pipeline

    path = write_pipeline(
        tmp_path / "slow.ipynb", [cell("import time\ntime.sleep(120)", "step:slow")]
    )
    env = _env(short_tmp)
    run = nbscale_cli("pipeline", "run", str(path), "--detach", env=env, check=True)
    folders = lambda: list((short_tmp / "tmp").glob("nbscale-k-*"))  # noqa: E731
    (folder,) = wait_for(folders, 120, what="the step's kernel folder")
    wait_for(lambda: list(folder.glob("kernel-*")), 60, what="the kernel's sockets")
    cancel = nbscale_cli("pipeline", "cancel", run.stdout.strip(), env=env, check=True)
    assert "CANCELLED" in cancel.stdout + cancel.stderr
    wait_for(lambda: not folder.exists(), 30, what=f"{folder} to be removed")
    _assert_nothing_left(short_tmp)
