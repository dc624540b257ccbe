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

import pytest
import yaml

from nbscale import keys
from nbscale.backends.kubeflow.pipelines import KFPPipelines
from nbscale.backends.kubeflow.settings import settings
from nbscale.cli.pipeline_cmd import cmd_run
from nbscale.config import BackendConfig
from nbscale.errors import BackendUnavailable, NbscaleError, NotFound, SpecError
from nbscale.pipelines import compile_pipeline
from tests.support import wait_for
from tests.support.emulators import free_port
from tests.support.kfp_api import FakeKFP, service_account_token
from tests.support.kube_emulator import KubeApi, KubeEmulator

NS = "team-a"


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


IMAGE = "registry.example.com/ml/nbscale-runtime:0.1.0"  # built from docker/Dockerfile
KEYS = "nbscale-keys-emu"  # the user's own key Secret (the emulator's context user: emu)


def _conf(url: str):
    return settings(
        BackendConfig(
            "kf",
            "kubeflow",
            {"kfp_host": url, "namespace": NS, "poll_seconds": 0, "image": IMAGE},
        )
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
    compile_pipeline(str(small), "kfp", str(compiled), image=IMAGE, key_secret=KEYS)
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
    # every task mounts the user's key Secret (by its real name), which nbscale wrote into the
    # namespace the runs are in: a standalone KFP's own ("kubeflow")
    executors = body["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"][
        "executors"
    ]
    assert len(executors) == 4
    for executor in executors.values():
        (mount,) = executor["secretAsVolume"]
        assert mount["secretNameParameter"] == {"runtimeValue": {"constant": KEYS}}
        # no Istio sidecar in a step pod: the proxy would keep the pod from ending
        assert executor["podMetadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
        assert mount["mountPath"] == "/var/run/secrets/nbscale"
    text = json.dumps(body)
    assert keys.load("pipeline").hex() not in text
    secret = KubeApi(kube_env.url).core.read_namespaced_secret(KEYS, "kubeflow")
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
        f'image = "{IMAGE}"\n'
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
        f'image = "{IMAGE}"\n'
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


# -- credentials and namespaces ---------------------------------------------------------


@pytest.fixture
def multi_user():
    """A multi-user KFP (Kubeflow with profiles): user alice works in the profile NS."""
    fake = FakeKFP(multi_user=True)
    fake.access["alice"] = {NS}
    yield fake
    fake.stop()


def _conf_with(url: str | None, **extra):
    table = {"namespace": NS, "poll_seconds": 0, "image": IMAGE, **extra}
    if url:
        table["kfp_host"] = url
    return settings(BackendConfig("kf", "kubeflow", table))


def _runs(fake: FakeKFP) -> list[dict]:
    return list(fake.runs.values())


def test_a_multi_user_kfp_refuses_a_run_without_credentials(small, multi_user, kube_env):
    runner = KFPPipelines(_conf_with(multi_user.url))
    with pytest.raises(NbscaleError) as err:
        runner.start(str(small), {})
    text = str(err.value)
    assert "refused the call (401" in text and "credentials used: no credentials" in text
    assert "NBSCALE_KFP_TOKEN" in text
    assert _runs(multi_user) == []
    assert multi_user.refused and multi_user.refused[0][1] == 16


def test_the_notebook_pods_pipelines_token_is_used_and_runs_go_to_the_profile_namespace(
    small, multi_user, kube_env, tmp_path, monkeypatch, capfd
):
    token = service_account_token("team-a:default-editor")
    multi_user.tokens[token] = "alice"
    path = tmp_path / "pipelines-token"
    path.write_text(token)
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(path))
    runner = KFPPipelines(_conf_with(multi_user.url))
    assert "service-account token for pipelines.kubeflow.org" in runner.access.source
    assert token not in repr(runner.access)

    run = runner.start(str(small), {"n": 3})
    (stored,) = _runs(multi_user)
    assert stored["run_id"] == run.run_id and stored["namespace"] == NS
    (exp,) = multi_user.experiments.values()
    assert exp["namespace"] == NS and exp["display_name"] == "nbscale"
    # the key Secret is where the step pods run: the profile namespace
    secret = KubeApi(kube_env.url).core.read_namespaced_secret(KEYS, NS)
    assert json.loads(base64.b64decode(secret.data["keys.json"]))["pipeline"]
    # the kubelet refreshes the token: the SDK reads the file again on the next call
    fresh = service_account_token("team-a:default-editor-2")
    multi_user.tokens[fresh] = "alice"
    del multi_user.tokens[token]
    path.write_text(fresh)
    multi_user.set_tasks(run.run_id, "RUNNING", {"make": ("RUNNING", None)})
    assert runner.refresh(run).steps["make"]["status"] == "RUNNING"
    runner.cancel(run.run_id)
    assert multi_user.runs[run.run_id]["state"] == "CANCELING"
    out, err = capfd.readouterr()
    assert token not in out + err and fresh not in out + err


def test_a_token_without_the_pipelines_audience_is_refused(
    small, multi_user, kube_env, tmp_path, monkeypatch
):
    token = service_account_token(
        "team-a:default-editor", audience="https://kubernetes.default.svc"
    )
    multi_user.tokens[token] = "alice"
    path = tmp_path / "token"
    path.write_text(token)
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(path))
    with pytest.raises(NbscaleError, match="refused the call \\(401"):
        KFPPipelines(_conf_with(multi_user.url)).start(str(small), {})
    assert _runs(multi_user) == []


def test_a_token_or_cookie_from_the_environment_or_a_secret(
    small, multi_user, kube_env, monkeypatch
):
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", "/nonexistent/token")
    multi_user.tokens["opaque-token"] = "alice"
    monkeypatch.setenv("NBSCALE_KFP_TOKEN", "opaque-token")
    runner = KFPPipelines(_conf_with(multi_user.url))
    assert runner.access.source == "the token in $NBSCALE_KFP_TOKEN"
    runner.start(str(small), {})
    monkeypatch.delenv("NBSCALE_KFP_TOKEN")

    # a session cookie of the auth proxy, kept in a Secret of the kube namespace
    multi_user.cookies["s3ss10n"] = "alice"
    KubeApi(kube_env.url).core.create_namespaced_secret(
        NS,
        {
            "metadata": {"name": "kfp-credentials", "namespace": NS},
            "data": {"cookie": base64.b64encode(b"authservice_session=s3ss10n").decode()},
        },
    )
    runner = KFPPipelines(_conf_with(multi_user.url, kfp_secret="kfp-credentials"))
    assert runner.access.source == "the cookie in Secret kfp-credentials"
    runner.start(str(small), {})
    assert [r["namespace"] for r in _runs(multi_user)] == [NS, NS]

    # a Secret with neither key: one message naming it and its namespace
    KubeApi(kube_env.url).core.create_namespaced_secret(
        NS, {"metadata": {"name": "empty", "namespace": NS}, "data": {"x": "eA=="}}
    )
    with pytest.raises(SpecError, match="Secret empty in namespace team-a has neither"):
        KFPPipelines(_conf_with(multi_user.url, kfp_secret="empty")).start(str(small), {})


def test_a_namespace_the_user_may_not_use_is_named(small, multi_user, kube_env, monkeypatch):
    multi_user.tokens["opaque-token"] = "alice"
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", "/nonexistent/token")
    monkeypatch.setenv("NBSCALE_KFP_TOKEN", "opaque-token")
    runner = KFPPipelines(_conf_with(multi_user.url, kfp_namespace="team-b"))
    with pytest.raises(NbscaleError) as err:
        runner.start(str(small), {})
    assert "in namespace team-b" in str(err.value) and "(403" in str(err.value)
    assert "opaque-token" not in str(err.value)
    # the Secret went where the runs would have been
    KubeApi(kube_env.url).core.read_namespaced_secret(KEYS, "team-b")


def test_standalone_kfp_runs_in_its_own_namespace_or_kfp_namespace(small, kfp_api, kube_env):
    api = KubeApi(kube_env.url)
    KFPPipelines(_conf_with(kfp_api.url)).start(str(small), {})
    api.core.read_namespaced_secret(KEYS, "kubeflow")
    KFPPipelines(_conf_with(kfp_api.url, kfp_namespace="pipelines")).start(str(small), {})
    api.core.read_namespaced_secret(KEYS, "pipelines")
    # a standalone KFP takes no namespace with its experiments
    assert all("namespace" not in e or not e["namespace"] for e in kfp_api.experiments.values())


def test_no_host_and_no_pipelines_token_is_one_message(monkeypatch):
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", "/nonexistent/token")
    with pytest.raises(SpecError, match="kfp_host: is not set, and this is no Kubeflow notebook"):
        KFPPipelines(_conf_with(None))


def test_a_key_secret_that_cannot_be_written_names_the_runs_namespace(
    small, kfp_api, tmp_path, monkeypatch
):
    dead = tmp_path / "dead"
    dead.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters: [{{name: c, cluster: {{server: 'http://127.0.0.1:{free_port()}'}}}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: lab, context: {cluster: c, user: u, namespace: team-a}}]\n"
        "current-context: lab\n"
    )
    monkeypatch.setenv("KUBECONFIG", str(dead))
    with pytest.raises(BackendUnavailable) as err:
        KFPPipelines(_conf_with(kfp_api.url)).start(str(small), {})
    text = str(err.value)
    assert "nbscale-keys" in text and "cannot be reached" in text
    assert "the pipeline's steps run in namespace kubeflow (KFP's own namespace" in text
    assert kfp_api.runs == {}


def test_no_pushed_image_and_no_storage_for_the_wheelhouse_is_refused_before_anything_is_sent(
    small, kfp_api, kube_env
):
    """Without an image the steps install nbscale's wheelhouse from object storage
    (test_kubeflow_pipeline_stock_image.py): without storage either, one message."""
    table = {"kfp_host": kfp_api.url, "namespace": NS}
    runner = KFPPipelines(settings(BackendConfig("kf", "kubeflow", table)))
    with pytest.raises(SpecError, match=r"\[backends.kf\] image: is not set, and storage is not"):
        runner.start(str(small), {})
    assert kfp_api.requests == []
    assert kube_env.writes() == []
