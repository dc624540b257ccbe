"""R2: the Jupyter server and the kernel restart while jobs run. The jobs keep running, the
restarted server answers for them, ``%attach`` in the restarted kernel reconnects and
delivers the cell's outputs, and no record is lost."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from nbscale.backends.local.processes import job_processes
from nbscale.store import get_store
from nbscale.store.jobs import events, list_jobs
from tests.support import wait_for
from tests.support.notebooks import write_notebook

pytestmark = pytest.mark.timeout(420)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A real ``jupyter server`` process with the nbscale extension, on loopback."""

    def __init__(self, root: Path, tmp: Path):
        self.port, self.token = _free_port(), secrets.token_hex(16)
        cmd = [
            sys.executable,
            "-m",
            "jupyter",
            "server",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={root}",
            "--ServerApp.jpserver_extensions={'nbscale.server_ext': True}",
            "--NbscaleExtension.poll_interval=0.2",
        ]
        if os.geteuid() == 0:
            cmd.append("--allow-root")
        env = {
            **os.environ,
            "JUPYTER_CONFIG_DIR": str(tmp / "jupyter-config"),
            "JUPYTER_RUNTIME_DIR": str(tmp / "jupyter-runtime"),
        }
        self.log = open(tmp / f"server-{self.port}.log", "wb")  # noqa: SIM115 - closed in stop
        self.proc = subprocess.Popen(
            cmd,
            cwd=root,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.started = time.monotonic()
        wait_for(self._answers, 120, 0.2, what="the Jupyter server to answer")
        self.ready_s = time.monotonic() - self.started

    def _answers(self) -> bool:
        assert self.proc.poll() is None, Path(self.log.name).read_text()[-3000:]
        try:
            return self.api("version")[0] == 200
        except OSError:
            return False

    def api(self, *parts: str, method: str = "GET", body: dict | None = None):
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/nbscale/api/{'/'.join(parts)}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)  # the harshest end: no shutdown hooks run
        self.proc.wait(timeout=30)
        self.log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


CELL = """
%%train --async --outputs total
import time
from pathlib import Path
import torch
while not Path(go).exists():
    time.sleep(0.1)
total = int(torch.tensor([20, 22]).sum())
"""


def test_jobs_outlive_a_server_and_a_kernel_restart_and_outputs_still_arrive(
    kernel,
    tmp_path,
):
    root = tmp_path / "work"
    root.mkdir()
    go_nb, go_cell = tmp_path / "go-notebook", tmp_path / "go-cell"
    write_notebook(
        root / "waits.ipynb",
        f"import time, pathlib\nwhile not pathlib.Path({str(go_nb)!r}).exists():\n"
        "    time.sleep(0.1)\nprint('notebook job done')",
    )
    first = Server(root, tmp_path)
    servers = [first]
    try:
        code, created = first.api("jobs", method="POST", body={"path": "waits.ipynb"})
        assert code == 201, created
        nb_job = created["id"]
        k = kernel()
        k.ok(f"go = {str(go_cell)!r}")
        reply = k.ok(CELL)
        cell_job = re.search(r"job:\s+(\S+)", reply.text).group(1)
        wait_for(lambda: job_processes(nb_job) and job_processes(cell_job), 120, what="jobs")
        before = {r.id: len(events(get_store(), r.id)) for r in list_jobs(get_store())[0]}

        # both faces go away while the jobs run
        first.kill()
        k.km.restart_kernel(now=True)
        k.kc.wait_for_ready(timeout=60)
        second = Server(root, tmp_path)
        servers.append(second)
        for job_id in (nb_job, cell_job):
            code, body = second.api("jobs", job_id)
            assert code == 200 and body["status"] == "RUNNING", body
            assert job_processes(job_id)

        # the restarted kernel attaches and gets the outputs once the cell's job ends
        k.ok("%load_ext nbscale")
        assert "total" not in k.ok("print(dir())").text
        go_cell.touch()
        began = time.monotonic()
        attached = k.ok(f"%attach {cell_job} --outputs total", timeout=240)
        attach_s = time.monotonic() - began
        assert "succeeded" in attached.text, attached.text
        assert k.ok("print(total)").text.strip() == "42"

        go_nb.touch()

        def ended():
            code, body = second.api("jobs", nb_job)
            return body if body["status"] not in ("PENDING", "RUNNING") else None

        assert wait_for(ended, 240, 0.5, what="the notebook job to end")["status"] == "SUCCEEDED"
        code, logs = second.api("jobs", nb_job, "logs")
        assert code == 200, logs
        # no record lost: the same rows, each with its history and an end
        rows, total = list_jobs(get_store())
        assert total == 2 and {r.id for r in rows} == set(before)
        for r in rows:
            assert r.status == "SUCCEEDED"
            assert len(events(get_store(), r.id)) > before[r.id]
        print(
            f"R2: server back in {second.ready_s:.1f} s, %attach delivered the outputs "
            f"{attach_s:.1f} s after the job could end; 2 of 2 jobs succeeded, 0 records lost"
        )
    finally:
        for s in servers:
            s.stop()
