"""The panel in a real browser: Chromium (playwright-core) against JupyterLab on 127.0.0.1.

The browser steps live in extension/ui-tests/panel.test.mjs; this test starts
JupyterLab with the installed extension, a real endpoint with traffic and a
real pipeline run, then runs the script. Set NBSCALE_SCREENSHOTS=docs to
refresh the README's screenshots.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.notebooks import code, write_notebook

REPO = Path(__file__).resolve().parents[2]
EXTENSION = REPO / "extension"
CHROMIUM = os.environ.get("NBS_CHROMIUM", "/usr/bin/chromium")
QUICKSTART = REPO / "examples" / "quickstart.ipynb"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


@pytest.fixture
def lab(tmp_path):
    with running_lab(tmp_path) as info:
        yield info


@contextlib.contextmanager
def running_lab(tmp_path, *extra_args: str, api_path: str = "nbscale/api/version"):
    _prerequisites()
    root = tmp_path / "work"
    root.mkdir()
    port, token = _free_port(), secrets.token_hex(16)
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


@pytest.fixture
def endpoint_with_traffic():
    import torch

    from nbscale import endpoints

    torch.manual_seed(0)
    ep = endpoints.deploy(torch.nn.Linear(8, 3), name="digits-linear", example=torch.zeros(1, 8))
    stop = threading.Event()

    def traffic():
        x = torch.randn(4, 8).numpy()
        while not stop.is_set():
            with contextlib.suppress(Exception):
                ep.predict(x)
            stop.wait(0.05)

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    yield ep.name
    stop.set()
    thread.join(5)
    with contextlib.suppress(Exception):
        endpoints.endpoint(ep.name).delete()


@pytest.fixture
def pipeline_run(lab):
    from nbscale import pipelines

    path = write_notebook(
        lab["root"] / "flow.ipynb",
        code("rows = list(range(100))", "step:prepare"),
        code("total = sum(rows)\nprint('total', total)", "step:train", "prev:prepare"),
        code("print('report', total)", "step:report", "prev:train"),
    )
    return pipelines.start_run(str(path), detach=True)


@pytest.fixture
def slow_pipeline_run(lab):
    """A detached run whose first step sleeps until the browser cancels it."""
    from nbscale import pipelines

    path = write_notebook(
        lab["root"] / "slowflow.ipynb",
        code("import time\ntime.sleep(300)", "step:wait"),
        code("print('never')", "step:after", "prev:wait"),
    )
    run = pipelines.start_run(str(path), detach=True)
    yield run
    with contextlib.suppress(Exception):
        if not pipelines.get_run(run.id).terminal:
            pipelines.cancel_run(run.id)


def test_panel_submits_follows_charts_and_cancels(
    lab, endpoint_with_traffic, pipeline_run, slow_pipeline_run, tmp_path
):
    root = lab["root"]
    if QUICKSTART.exists():
        # the quickstart trains with %%train (a job of its own) and prints its accuracy
        shutil.copy(QUICKSTART, root / "quick.ipynb")
        log_text, nested = "test accuracy", "train-cell"
    else:
        write_notebook(
            root / "quick.ipynb",
            "import nbscale\nfor epoch in range(epochs):\n    nbscale.log_metric('loss', 1.0 / (epoch + 1), step=epoch)\n",
            "print(f'finished {epochs} epochs')",
            parameters="epochs = 1",
        )
        log_text, nested = "finished 30 epochs", ""
    write_notebook(
        root / "slow.ipynb", "import time\nprint('sleeping', flush=True)\ntime.sleep(300)"
    )
    shots = Path(os.environ.get("NBSCALE_SCREENSHOTS") or tmp_path / "shots")
    if not shots.is_absolute():
        shots = REPO / shots
    shots.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "NBS_URL": lab["url"],
        "NBS_TOKEN": lab["token"],
        "NBS_NOTEBOOK": "quick.ipynb",
        "NBS_SLOW_NOTEBOOK": "slow.ipynb",
        "NBS_PIPELINE_RUN": pipeline_run.id,
        "NBS_SLOW_RUN": slow_pipeline_run.id,
        "NBS_ENDPOINT": endpoint_with_traffic,
        "NBS_LOG_TEXT": log_text,
        "NBS_NESTED_JOB": nested,
        "NBS_SHOTS": str(shots),
        "NBS_CHROMIUM": CHROMIUM,
    }
    try:
        proc = subprocess.run(
            [shutil.which("node") or "node", "ui-tests/panel.test.mjs"],
            cwd=EXTENSION,
            env=env,
            capture_output=True,
            text=True,
            timeout=540,
        )
    finally:
        _cancel_leftovers()
    assert proc.returncode == 0, (
        f"browser test failed:\n{proc.stdout}\n{proc.stderr}\n--- lab log ---\n{lab['log'].read_text()[-4000:]}"
    )
    # what the browser did is in the store too
    from nbscale.jobs import jobs

    statuses = sorted(j.record.status for j in jobs(refresh=False))
    assert statuses == ["CANCELLED", *["SUCCEEDED"] * (len(statuses) - 1)], statuses
    from nbscale import pipelines

    assert pipelines.get_run(slow_pipeline_run.id).status == "CANCELLED"
    for name in (
        "panel-job.png",
        "panel-endpoint.png",
        "panel-pipeline.png",
        "run-as-job-dialog.png",
    ):
        assert (shots / name).stat().st_size > 10_000


def test_panel_says_when_the_server_extension_is_missing(tmp_path):
    # given Lab with the panel but without nbscale's server extension
    with running_lab(
        tmp_path, "--ServerApp.jpserver_extensions=nbscale.server_ext=False", api_path="api/status"
    ) as lab:
        write_notebook(lab["root"] / "quick.ipynb", "print(1)")
        env = {
            **os.environ,
            "NBS_URL": lab["url"],
            "NBS_TOKEN": lab["token"],
            "NBS_NOTEBOOK": "quick.ipynb",
            "NBS_SHOTS": str(tmp_path),
            "NBS_CHROMIUM": CHROMIUM,
            "NBS_SCENARIO": "missing-server",
        }
        # when the panel opens, then it tells the user how to enable the server extension
        proc = subprocess.run(
            [shutil.which("node") or "node", "ui-tests/panel.test.mjs"],
            cwd=EXTENSION,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert proc.returncode == 0, f"browser test failed:\n{proc.stdout}\n{proc.stderr}"


def _cancel_leftovers() -> None:
    from nbscale.jobs import jobs

    for handle in jobs(refresh=True):
        if not handle.record.terminal:
            with contextlib.suppress(Exception):
                handle.cancel()
