"""JupyterLab with the installed extension as a real process, and the browser scripts of
extension/ui-tests run in node against it (the UI tier)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support import REPO
from tests.support.emulators import free_port

EXTENSION = REPO / "extension"
CHROMIUM = os.environ.get("NBS_CHROMIUM", "/usr/bin/chromium")


def _prerequisites() -> None:
    missing = []
    if not Path(CHROMIUM).exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    if not (EXTENSION / "node_modules" / "playwright-core").is_dir():
        missing.append("extension/node_modules (run .ci/build-extension.sh)")
    out = subprocess.run(
        [sys.executable, "-m", "jupyter", "labextension", "list"], capture_output=True, text=True
    )
    if "nbscale" not in out.stdout + out.stderr:
        missing.append("the nbscale labextension (pip install . after .ci/build-extension.sh)")
    if missing:
        pytest.fail("the UI test needs: " + "; ".join(missing))


def run_browser_script(lab: dict, script: str, shots: Path, **env: str) -> None:
    """Run ``extension/ui-tests/<script>`` in node against ``lab``; fail with its output."""
    shots.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [shutil.which("node") or "node", f"ui-tests/{script}"],
        cwd=EXTENSION,
        env={
            **os.environ,
            "NBS_URL": lab["url"],
            "NBS_TOKEN": lab["token"],
            "NBS_SHOTS": str(shots),
            "NBS_CHROMIUM": CHROMIUM,
            **env,
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, (
        f"browser test failed:\n{proc.stdout}\n{proc.stderr}\n--- lab log ---\n"
        f"{lab['log'].read_text()[-3000:]}"
    )


@contextlib.contextmanager
def running_lab(tmp_path, *extra_args: str, api_path: str = "nbscale/api/version"):
    _prerequisites()
    root = tmp_path / "work"
    root.mkdir()
    port, token = free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter-runtime"),
    }
    cmd = [
        sys.executable,
        "-m",
        "jupyter",
        "lab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        f"--LabApp.user_settings_dir={tmp_path / 'lab-settings'}",
        f"--LabApp.workspaces_dir={tmp_path / 'lab-workspaces'}",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
        "--NbscaleExtension.poll_interval=0.5",
        *extra_args,
    ]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    # no "would you like news?" toast over the screenshots
    news = tmp_path / "lab-settings" / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True)
    (news / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    log = open(tmp_path / "lab.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                req = urllib.request.Request(
                    f"{url}/{api_path}", headers={"Authorization": f"token {token}"}
                )
                with urllib.request.urlopen(req, timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"JupyterLab did not start:\n{(tmp_path / 'lab.log').read_text()[-3000:]}"
                )
            time.sleep(0.3)
        yield {"url": url, "token": token, "root": root, "log": tmp_path / "lab.log"}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
