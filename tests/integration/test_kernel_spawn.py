"""A kernel's process started before jupyter_client is imported (``nbscale.kernel_spawn``) and
taken over by a jupyter_client manager (``kernel_transport.kernel_sockets``), with real
ipykernel processes: started as jupyter_client's local provisioner starts one, answering
through the manager, killed and reaped with its folder; and where the kernelspec or the
environment is not what it was started for, killed and replaced by a kernel jupyter_client
starts."""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path

import psutil
import pytest
from jupyter_client import BlockingKernelClient

from nbscale import kernel_spawn
from nbscale.kernel_transport import kernel_sockets
from nbscale.pipelines.kernels import PooledKernel

NAME = "spawned"


def kernelspec(root: Path, **changes) -> Path:
    folder = root / "kernels" / NAME
    folder.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "spawned",
        "language": "python",
        "env": {"SPAWN_MARK": "from-${SPAWN_BASE}", "SPAWN_FIXED": "fixed"},
        **changes,
    }
    (folder / "kernel.json").write_text(json.dumps(spec))
    return folder


@pytest.fixture
def spec_root(tmp_path, monkeypatch):
    root = tmp_path / "jupyter"
    kernelspec(root)
    monkeypatch.setenv("JUPYTER_PATH", str(root))
    return root


def environment(**extra) -> dict[str, str]:
    return {**os.environ, "SPAWN_BASE": "base", "PYTHONEXECUTABLE": "/nowhere/python", **extra}


def facts(kernel: PooledKernel, folder: Path, tag: str) -> dict:
    """What the kernel process reports about itself, through its connection file."""
    client = BlockingKernelClient(connection_file=kernel.km.connection_file)
    client.load_connection_file()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        code = (
            "import json, os\n"
            "json.dump({'pid': os.getpid(), 'cwd': os.getcwd(), 'env': dict(os.environ)},"
            f" open({str(folder / (tag + '.json'))!r}, 'w'))"
        )
        reply = client.execute_interactive(code, timeout=60)
        assert reply["content"]["status"] == "ok", reply["content"]
    finally:
        client.stop_channels()
    return json.loads((folder / f"{tag}.json").read_text())


def gone(pid: int, timeout: float = 30.0) -> bool:
    """No such process any more: reaped, not a zombie."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid):
            return True
        time.sleep(0.05)
    return False


def started(kernel: PooledKernel) -> PooledKernel:
    kernel.start()
    assert kernel.ready.is_set() and kernel.error is None, kernel.error
    return kernel


def test_started_as_jupyter_client_starts_it_and_taken_over(spec_root, tmp_path):
    cwd = tmp_path / "work"
    cwd.mkdir()
    env = environment()
    spawned = kernel_spawn.spawn(NAME, str(cwd), env)
    assert spawned is not None
    pid = spawned.process.pid
    try:
        folder = Path(spawned.folder)
        assert stat.S_IMODE(folder.stat().st_mode) & 0o777 == 0o700
        assert stat.S_IMODE(Path(spawned.connection_file).stat().st_mode) == 0o600
        info = json.loads(Path(spawned.connection_file).read_text())
        assert info["transport"] == "ipc" and info["signature_scheme"] == "hmac-sha256"
        assert info["ip"] == str(folder / "kernel") and info["kernel_name"] == NAME
        assert sorted(info[p] for p in kernel_spawn.PORTS) == [1, 2, 3, 4, 5]
        assert len(bytes.fromhex(info["key"])) == 32
        cmd = spawned.process.args
        assert cmd[0] == sys.executable and cmd[-1] == os.path.realpath(spawned.connection_file)
        assert os.getsid(pid) == pid  # its own session, as jupyter_client starts a kernel

        kernel = started(PooledKernel(NAME, str(cwd), env, spawned))
        assert kernel.pid == pid
        seen = facts(kernel, tmp_path, "first")
        assert seen["pid"] == pid and seen["cwd"] == str(cwd)
        assert seen["env"]["SPAWN_MARK"] == "from-base" and seen["env"]["SPAWN_FIXED"] == "fixed"
        assert seen["env"]["JPY_PARENT_PID"] == str(os.getpid())
        assert "PYTHONEXECUTABLE" not in seen["env"]
    finally:
        if "kernel" in locals():
            kernel.close()
        else:
            spawned.discard()
    assert gone(pid), "the kernel was not killed and reaped"
    assert not Path(spawned.folder).exists()


@pytest.mark.parametrize(
    "changes",
    [
        {"argv": [sys.executable, "-c", "pass", "{connection_file}"]},  # not ipykernel
        {"metadata": {"kernel_provisioner": {"provisioner_name": "someone-elses"}}},
        {"argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}", "{extra}"]},
        {"argv": "python -m ipykernel_launcher"},  # not a list: jupyter_client says what is wrong
    ],
    ids=["not-ipykernel", "another-provisioner", "another-placeholder", "bad-argv"],
)
def test_left_to_jupyter_client_where_it_cannot_start_the_kernel_exactly(
    spec_root, tmp_path, changes
):
    kernelspec(spec_root, **changes)
    before = set(os.listdir(tmp_path))
    assert kernel_spawn.spawn(NAME, str(tmp_path), environment()) is None
    assert kernel_spawn.spawn("no-such-kernel", str(tmp_path), environment()) is None
    assert set(os.listdir(tmp_path)) == before


def test_a_kernelspec_changed_since_the_start_gets_a_kernel_jupyter_client_starts(
    spec_root, tmp_path
):
    spawned = kernel_spawn.spawn(NAME, str(tmp_path), environment())
    assert spawned is not None
    kernelspec(spec_root, env={"SPAWN_MARK": "changed"})
    sockets = kernel_sockets(NAME, spawned)
    assert gone(spawned.process.pid), "the kernel started for the old kernelspec was left"
    assert not Path(spawned.folder).exists()
    assert sockets.folder != spawned.folder
    sockets.remove()


def test_a_kernel_asked_for_another_environment_is_replaced(spec_root, tmp_path):
    spawned = kernel_spawn.spawn(NAME, str(tmp_path), environment())
    assert spawned is not None
    old = spawned.process.pid
    kernel = started(PooledKernel(NAME, str(tmp_path), environment(SPAWN_BASE="asked"), spawned))
    try:
        assert gone(old), "the kernel started for another environment was left running"
        seen = facts(kernel, tmp_path, "asked")
        assert seen["pid"] == kernel.pid != old
        assert seen["env"]["SPAWN_MARK"] == "from-asked"
        assert kernel.km.connection_file == spawned.connection_file  # in the same private folder
    finally:
        kernel.close()
    assert gone(seen["pid"]) and not Path(spawned.folder).exists()
