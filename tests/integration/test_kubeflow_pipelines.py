"""Pipelines on Kubeflow Pipelines through the kfp SDK ``Client``, at the HTTP boundary.

The test plays the KFP API server on 127.0.0.1 (``/apis/v2beta1``: healthz, experiments,
runs, terminate): it keeps every request body, so the run request can be checked to
carry the compiled IR (loaded back by the kfp SDK), and it moves the run's tasks
through their states the way KFP reports them.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from nbscale import keys
from nbscale.backends.kubeflow.pipelines import KFPPipelines
from nbscale.backends.kubeflow.settings import settings
from nbscale.cli.pipeline_cmd import cmd_run
from nbscale.config import BackendConfig
from nbscale.errors import BackendUnavailable, NotFound, SpecError
from nbscale.pipelines import compile_pipeline
from tests.support import wait_for
from tests.support.emulators import free_port
from tests.support.kube_emulator import KubeApi, KubeEmulator

NS = "team-a"


class FakeKFP:
    """Kubeflow Pipelines' REST API (v2beta1), the parts the kfp SDK Client uses."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict]] = []
        self.runs: dict[str, dict] = {}
        self.experiments: dict[str, dict] = {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> dict:
                n = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(n) or b"{}")

            def do_GET(self):  # noqa: N802
                fake.requests.append(("GET", self.path, {}))
                path = self.path.split("?")[0]
                if path == "/apis/v2beta1/healthz":
                    return self._send(200, {"multi_user": False})
                if path == "/apis/v2beta1/experiments":
                    return self._send(200, {"experiments": list(fake.experiments.values())})
                if path.startswith("/apis/v2beta1/runs/"):
                    run = fake.runs.get(path.rsplit("/", 1)[1])
                    return self._send(200, run) if run else self._send(404, {"error": "no run"})
                return self._send(404, {"error": f"unknown {path}"})

            def do_POST(self):  # noqa: N802
                body = self._body()
                fake.requests.append(("POST", self.path, body))
                path = self.path.split("?")[0]
                if path == "/apis/v2beta1/experiments":
                    exp = {**body, "experiment_id": str(uuid.uuid4())}
                    fake.experiments[exp["experiment_id"]] = exp
                    return self._send(200, exp)
                if path == "/apis/v2beta1/runs":
                    run = {**body, "run_id": str(uuid.uuid4()), "state": "PENDING"}
                    fake.runs[run["run_id"]] = run
                    return self._send(200, run)
                if path.endswith(":terminate"):
                    run_id = path.rsplit("/", 1)[1].split(":")[0]
                    fake.runs[run_id]["state"] = "CANCELING"
                    return self._send(200, {})
                return self._send(404, {"error": f"unknown {path}"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def set_tasks(self, run_id: str, state: str, tasks: dict[str, tuple[str, str | None]]) -> None:
        run = self.runs[run_id]
        run["state"] = state
        run["run_details"] = {
            "task_details": [
                {"display_name": "root-driver", "task_id": "t0", "state": "SUCCEEDED"},
                *(
                    {
                        "display_name": name,
                        "task_id": f"t-{name}",
                        "state": st,
                        **({"error": {"message": err}} if err else {}),
                    }
                    for name, (st, err) in tasks.items()
                ),
            ]
        }

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def kfp_api():
    fake = FakeKFP()
    yield fake
    fake.stop()


@pytest.fixture
def kube_env(tmp_path, monkeypatch):
    emu = KubeEmulator()
    monkeypatch.setenv("KUBECONFIG", str(emu.kubeconfig(tmp_path / "kubeconfig", NS)))
    yield emu
    emu.stop()


def _conf(url: str):
    return settings(
        BackendConfig("kf", "kubeflow", {"kfp_host": url, "namespace": NS, "poll_seconds": 0})
    )


def test_a_run_carries_the_compiled_ir_and_is_followed_per_step_then_cancelled(
    small,
    kfp_api,
    kube_env,
    tmp_path,
):
    runner = KFPPipelines(_conf(kfp_api.url))
    with pytest.raises(SpecError, match="no parameter 'nope'"):
        runner.start(str(small), {"nope": 1})
    assert not [r for r in kfp_api.requests if r[1].startswith("/apis/v2beta1/runs")]

    run = runner.start(str(small), {"n": 5})
    (post,) = [r for r in kfp_api.requests if r[0] == "POST" and r[1] == "/apis/v2beta1/runs"]
    body = post[2]
    # the request body is the compiled IR: the same document a compile writes ...
    compiled = tmp_path / "small.yaml"
    compile_pipeline(str(small), "kfp", str(compiled))
    ir, platform = yaml.safe_load_all(compiled.read_text())
    assert body["pipeline_spec"] == {"pipeline_spec": ir, "platform_spec": platform}
    assert body["runtime_config"]["parameters"] == {"n": 5}
    # ... and the kfp SDK loads it back as a pipeline
    from kfp import components

    loaded = components.load_component_from_text(
        yaml.safe_dump(body["pipeline_spec"]["pipeline_spec"])
    )
    assert loaded.name == ir["pipelineInfo"]["name"]
    assert {"make", "double", "square", "total"} <= {
        t["taskInfo"]["name"] for t in ir["root"]["dag"]["tasks"].values()
    }
    # every task mounts the key Secret (by name), which nbscale wrote into the cluster
    text = json.dumps(body)
    assert '"secretName": "nbscale-keys"' in text or '"secretNameParameter"' in text
    assert keys.load("pipeline").hex() not in text
    secret = KubeApi(kube_env.url).core.read_namespaced_secret("nbscale-keys", NS)
    doc = json.loads(base64.b64decode(secret.data["keys.json"]))
    assert doc["pipeline"] == keys.load("pipeline").hex()

    seen: list[tuple[str, str]] = []

    def on_step(name, fields):
        seen.append((name, fields["status"]))

    kfp_api.set_tasks(run.run_id, "RUNNING", {"make": ("RUNNING", None)})
    runner.refresh(run, on_step)
    kfp_api.set_tasks(
        run.run_id,
        "RUNNING",
        {"make": ("SUCCEEDED", None), "double": ("RUNNING", None), "square": ("FAILED", "boom")},
    )
    runner.refresh(run, on_step)
    assert seen == [
        ("make", "RUNNING"),
        ("make", "SUCCEEDED"),
        ("double", "RUNNING"),
        ("square", "FAILED"),
    ]
    assert run.steps["square"] == {"status": "FAILED", "error": "boom"}
    assert run.status == "RUNNING"

    runner.cancel(run.run_id)
    assert ("POST", f"/apis/v2beta1/runs/{run.run_id}:terminate", {}) in [
        (m, p, b) for m, p, b in kfp_api.requests
    ]
    kfp_api.set_tasks(run.run_id, "CANCELED", {"double": ("CANCELED", None)})
    assert runner.follow(run, on_step).status == "CANCELLED"


def test_cli_entry_records_the_run_and_unreachable_api(
    small,
    kfp_api,
    kube_env,
    nbscale_home,
    capsys,
):
    from nbscale.pipelines import cancel_run, get_run

    nbscale_home.mkdir(parents=True, exist_ok=True)
    (nbscale_home / "config.toml").write_text(
        f'[backends.kf]\ntype = "kubeflow"\nkfp_host = "{kfp_api.url}"\nnamespace = "{NS}"\n'
        "poll_seconds = 0\n"
    )
    args = argparse.Namespace(
        path=str(small),
        backend="kf",
        detach=False,
        only=None,
        from_step=None,
        no_cache=False,
        max_parallel=None,
        json=False,
        parameter=None,
        dry_run=False,
    )

    def play():  # KFP runs the tasks while the CLI follows the run
        wait_for(lambda: kfp_api.runs, 60, what="a run")
        (kfp_id,) = kfp_api.runs
        kfp_api.set_tasks(kfp_id, "RUNNING", {"make": ("RUNNING", None)})

        def make_running():
            try:
                return get_run(kfp_id).step("make")["status"] == "RUNNING"
            except NotFound:  # KFP accepted the run; the CLI records it a moment later
                return False

        wait_for(make_running, 60, what="make")
        done = {n: ("SUCCEEDED", None) for n in ("make", "double", "square", "total")}
        kfp_api.set_tasks(kfp_id, "SUCCEEDED", done)

    player = threading.Thread(target=play, daemon=True)
    player.start()
    assert cmd_run(args) == 0
    player.join(10)
    (kfp_id,) = kfp_api.runs
    # recorded as a pipeline run, with the KFP run id, every step's state and the outcome
    run = get_run(kfp_id)
    assert run.backend == "kf" and run.status == "SUCCEEDED"
    assert run.options["remote"]["id"] == kfp_id and run.options["remote"]["type"] == "kubeflow"
    assert {s["status"] for s in run.steps} == {"SUCCEEDED"}
    err = capsys.readouterr().err
    assert "  make: running" in err and "  total: succeeded" in err
    assert "kfp run " + kfp_id in err

    # a detached run: followed in the background, cancelled from the store (terminate_run)
    args.detach = True
    assert cmd_run(args) == 0
    run_id = capsys.readouterr().out.strip()
    (second,) = set(kfp_api.runs) - {kfp_id}
    assert get_run(run_id).options["remote"]["id"] == second
    follower = get_run(run_id)
    try:
        cancel_run(run_id)
        assert ("POST", f"/apis/v2beta1/runs/{second}:terminate", {}) in kfp_api.requests
        kfp_api.set_tasks(second, "CANCELED", {"make": ("CANCELED", None)})
        assert get_run(run_id).wait(60).status == "CANCELLED"
    finally:
        import psutil

        from nbscale.store import get_store
        from nbscale.store import pipelines as db

        pid = db.get_run(get_store(), follower.id)["pid"]
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).wait(30)

    args.no_cache = True
    with pytest.raises(SpecError, match="--no-cache"):
        cmd_run(args)
    dead = KFPPipelines(_conf(f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(BackendUnavailable, match="cannot be reached"):
        dead.start(str(small), {})


def test_pipeline_magic_runs_on_kfp(small, kfp_api, kube_env, nbscale_home, capsys):
    from IPython.core.interactiveshell import InteractiveShell

    nbscale_home.mkdir(parents=True, exist_ok=True)
    (nbscale_home / "config.toml").write_text(
        f'[backends.kf]\ntype = "kubeflow"\nkfp_host = "{kfp_api.url}"\nnamespace = "{NS}"\n'
    )
    shell = InteractiveShell.instance()
    try:
        shell.run_cell("%load_ext nbscale", store_history=False)
        result = shell.run_cell(f"%pipeline run {small} --backend kf --detach", store_history=False)
        assert result.success, result.error_in_exec
    finally:
        InteractiveShell.clear_instance()
    (run_id,) = kfp_api.runs
    assert run_id in capsys.readouterr().out
    # recorded like the CLI's runs; its follower is stopped with the test
    import psutil

    from nbscale.store import get_store
    from nbscale.store import pipelines as db

    (record,) = db.list_runs(get_store())
    assert record["backend"] == "kf" and record["options"]["remote"]["id"] == run_id
    with contextlib.suppress(psutil.Error):
        psutil.Process(record["pid"]).kill()
