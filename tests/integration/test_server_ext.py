"""The REST API under /nbscale/api/ against a real server, the real store and the local backend."""

from __future__ import annotations

import asyncio
import time

import pytest

from nbscale.store import get_store
from nbscale.store.jobs import list_jobs
from tests.support.notebooks import write_notebook

pytest_plugins = ["pytest_jupyter.jupyter_server"]


async def wait_status(fetch, job_id, wanted, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code, job = await fetch("jobs", job_id)
        assert code == 200, job
        if job["status"] in wanted:
            return job
        await asyncio.sleep(0.2)
    raise AssertionError(f"job {job_id} never reached {wanted}; last: {job['status']}")


# -- version, backends, cost -------------------------------------------------


async def test_version_names_the_package_and_api(fetch):
    code, body = await fetch("version")
    assert code == 200
    assert body["api_version"] == 1 and body["version"]


async def test_backends_lists_the_local_default_as_reachable(fetch):
    code, body = await fetch("backends")
    assert code == 200
    local = {b["name"]: b for b in body["backends"]}["local"]
    assert local == {
        **local,
        "type": "local",
        "default": True,
        "reachable": True,
        "price_per_node_hour": 0.0,
    }


async def test_cost_estimate_uses_the_configured_price(fetch, jp_root_dir):
    (jp_root_dir / "nbscale.toml").write_text(
        '[backends.cloud]\ntype = "sagemaker"\nregion = "us-east-1"\ninstance_type = "ml.g5.xlarge"\n'
    )
    code, body = await fetch("cost", params={"backend": "cloud", "nodes": 4, "hours": 2})
    assert code == 200
    assert body["price_per_node_hour"] == 1.408
    assert body["total"] == pytest.approx(2 * 4 * 1.408)
    code, body = await fetch("cost", params={"backend": "local", "nodes": 8})
    assert (code, body["total"]) == (200, 0.0)


@pytest.mark.parametrize(
    ("params", "status", "needle"),
    [
        ({"backend": "nowhere"}, 404, "unknown backend 'nowhere'"),
        ({"hours": "-1"}, 400, "hours"),
        ({"nodes": "two"}, 400, "nodes"),
        ({"colour": "red"}, 400, "colour"),
        ({"backend": "local", "instance_type": "ml.x.huge"}, 200, ""),
    ],
)
async def test_cost_estimate_rejects_bad_input_with_a_message(fetch, params, status, needle):
    code, body = await fetch("cost", params=params)
    assert code == status, body
    if status != 200:
        assert needle in body["message"] and body["error"] in ("bad_request", "not_found")


# -- jobs: errors --------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"status": "DONE"}, "status"),
        ({"limit": "0"}, "limit"),
        ({"limit": "100000"}, "limit"),
        ({"offset": "-3"}, "offset"),
        ({"page": "2"}, "page"),
    ],
)
async def test_list_jobs_rejects_bad_queries_with_400(fetch, params, needle):
    code, body = await fetch("jobs", params=params)
    assert code == 400 and needle in body["message"], body


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ({}, "path"),
        ({"path": "../outside.ipynb"}, "outside the server's root"),
        ({"path": "missing.ipynb"}, "does not exist"),
        ({"path": "notes.txt"}, "is not a .ipynb"),
        ({"path": "ok.ipynb", "nodes": 0}, "nodes"),
        ({"path": "ok.ipynb", "gpus_per_proc": "many"}, "gpus_per_proc"),
        ({"path": "ok.ipynb", "name": "Bad Name!"}, "not a valid job name"),
        ({"path": "ok.ipynb", "flavour": "x"}, "flavour"),
    ],
)
async def test_submit_rejects_bad_input_with_400_and_stores_nothing(
    fetch, jp_root_dir, body, needle
):
    write_notebook(jp_root_dir / "ok.ipynb", "print('hi')")
    (jp_root_dir / "notes.txt").write_text("x")
    code, answer = await fetch("jobs", method="POST", body=body)
    assert code == 400 and needle in answer["message"], answer
    assert list_jobs(get_store())[1] == 0


async def test_submit_to_an_unknown_backend_is_404(fetch, jp_root_dir):
    write_notebook(jp_root_dir / "ok.ipynb", "print('hi')")
    code, body = await fetch("jobs", method="POST", body={"path": "ok.ipynb", "backend": "mars"})
    assert code == 404 and "unknown backend 'mars'" in body["message"]
    assert list_jobs(get_store())[1] == 0


@pytest.mark.parametrize(
    ("parts", "method"),
    [
        (("jobs", "nope-000000"), "GET"),
        (("jobs", "nope-000000"), "DELETE"),
        (("jobs", "nope-000000", "logs"), "GET"),
        (("jobs", "nope-000000", "metrics"), "GET"),
        (("jobs", "nope-000000", "rerun"), "POST"),
    ],
)
async def test_unknown_job_is_404(fetch, parts, method):
    code, body = await fetch(*parts, method=method)
    assert code == 404 and "no job 'nope-000000'" in body["message"], body


# -- jobs: a real notebook job -------------------------------------------------


async def test_notebook_job_runs_logs_metrics_lists_and_reruns(fetch, jp_root_dir):
    write_notebook(
        jp_root_dir / "train.ipynb",
        "import nbscale\nfor step in range(3):\n    nbscale.log_metric('loss', 1.0 / (step + 1), step=step)\n",
        "print('trained with lr', lr)",
        parameters="lr = 0.1",
    )
    code, job = await fetch(
        "jobs", method="POST", body={"path": "train.ipynb", "parameters": {"lr": 0.5}}
    )
    assert code == 201, job
    assert job["notebook"] == str(jp_root_dir / "train.ipynb") and job["spec"]["entry"][
        "parameters"
    ] == {"lr": 0.5}

    done = await wait_status(fetch, job["id"], ("SUCCEEDED", "FAILED", "LOST"))
    assert done["status"] == "SUCCEEDED", done
    assert done["cost"] == 0.0 and done["duration"] > 0

    code, logs = await fetch("jobs", job["id"], "logs", params={"rank": 0})
    assert code == 200 and "trained with lr 0.5" in logs["text"] and logs["ranks"] == [0]
    code, tail = await fetch(
        "jobs", job["id"], "logs", params={"rank": 0, "offset": logs["next_offset"]}
    )
    assert (code, tail["text"], tail["offset"]) == (200, "", logs["next_offset"])

    code, metrics = await fetch("jobs", job["id"], "metrics")
    assert code == 200
    assert [m["value"] for m in metrics["metrics"] if m["name"] == "loss"] == pytest.approx(
        [1.0, 0.5, 1 / 3]
    )

    code, page = await fetch("jobs", params={"status": "SUCCEEDED"})
    assert code == 200 and page["total"] == 1 and page["jobs"][0]["id"] == job["id"]
    assert page["jobs"][0]["spec"] is None  # the list stays light; the detail has the spec
    code, page = await fetch("jobs", params={"status": "RUNNING"})
    assert (code, page["total"]) == (200, 0)

    code, body = await fetch("jobs", job["id"], method="DELETE")
    assert code == 409 and "already ended" in body["message"]

    code, again = await fetch("jobs", job["id"], "rerun", method="POST")
    assert (
        code == 201 and again["id"] != job["id"] and again["spec"]["entry"] == job["spec"]["entry"]
    )
    await wait_status(fetch, again["id"], ("SUCCEEDED", "FAILED", "LOST"))


async def test_cancel_stops_a_running_job(fetch, jp_root_dir):
    write_notebook(
        jp_root_dir / "slow.ipynb", "import time\nprint('started', flush=True)\ntime.sleep(120)"
    )
    code, job = await fetch("jobs", method="POST", body={"path": "slow.ipynb", "name": "slow"})
    assert code == 201 and job["name"] == "slow"
    await wait_status(fetch, job["id"], ("RUNNING",))
    code, cancelled = await fetch("jobs", job["id"], method="DELETE")
    assert code == 200 and cancelled["status"] == "CANCELLED", cancelled


async def test_list_pages_through_jobs_newest_first(fetch, jp_root_dir):
    from nbscale.store.jobs import JobRecord, insert_job

    store = get_store()
    for i in range(7):
        insert_job(
            store,
            JobRecord(
                f"j-{i}",
                "j",
                "local",
                "local",
                "SUCCEEDED",
                {"nodes": 2},
                created=1000 + i,
                started=1000 + i,
                ended=1000 + i + 3600,
                info={},
            ),
        )
    code, first = await fetch("jobs", params={"limit": 3})
    assert [j["id"] for j in first["jobs"]] == ["j-6", "j-5", "j-4"] and first["next"]
    code, page = await fetch("jobs", params={"limit": 3, "after": first["next"]})
    assert code == 200 and page["total"] == 7
    assert [j["id"] for j in page["jobs"]] == ["j-3", "j-2", "j-1"]
    assert page["jobs"][0]["nodes"] == 2 and page["jobs"][0]["cost"] == 0.0


# -- the background poller ------------------------------------------------------


async def start_hooks(jp_fetch, serverapp):
    """Run the extension's start hook, as ``ServerApp.start`` does once its loop runs.

    pytest-jupyter's server never calls it (it starts no IO loop of its own).
    """
    await jp_fetch("nbscale", "api", "version")
    (app,) = serverapp.extension_manager.extension_apps["nbscale.server_ext"]
    await app._start_jupyter_server_extension(serverapp)


async def test_poller_marks_a_job_whose_supervisor_died_lost_without_any_request(
    jp_fetch, jp_serverapp
):
    import subprocess
    import sys

    from nbscale.store.jobs import JobRecord, get_job, insert_job

    await start_hooks(jp_fetch, jp_serverapp)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store = get_store()
    insert_job(
        store,
        JobRecord(
            "orphan-1",
            "orphan",
            "local",
            "local",
            "RUNNING",
            {"nodes": 1},
            created=time.time(),
            started=time.time(),
            info={
                "supervisor_pid": dead.pid,
                "supervisor_started": 1.0,
                "job_dir": str(jp_serverapp.root_dir),
            },
        ),
    )
    deadline = time.monotonic() + 30
    while get_job(store, "orphan-1").status == "RUNNING" and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    record = get_job(store, "orphan-1")
    assert record.status == "LOST" and "vanished" in record.error
    (app,) = jp_serverapp.extension_manager.extension_apps["nbscale.server_ext"]
    assert app.poller.ticks > 0


async def test_stopping_the_extension_stops_the_poller(jp_fetch, jp_serverapp):
    await start_hooks(jp_fetch, jp_serverapp)
    (app,) = jp_serverapp.extension_manager.extension_apps["nbscale.server_ext"]
    assert app.poller._task is not None and not app.poller._task.done()
    task = app.poller._task
    await app.stop_extension()
    assert task.cancelled() and app.poller._task is None


async def test_job_cost_is_hours_times_nodes_times_the_instance_price(fetch, jp_root_dir):
    from nbscale.store.jobs import JobRecord, insert_job

    (jp_root_dir / "nbscale.toml").write_text(
        '[backends.cloud]\ntype = "sagemaker"\nregion = "us-east-1"\n'
    )
    store = get_store()
    spec = {"nodes": 4, "procs_per_node": 1, "gpus_per_proc": 1, "instance_type": "ml.p3.2xlarge"}
    insert_job(
        store,
        JobRecord(
            "sm-1",
            "sm",
            "cloud",
            "sagemaker",
            "SUCCEEDED",
            spec,
            created=1000.0,
            started=1000.0,
            ended=1000.0 + 1800,
            info={},
        ),
    )
    insert_job(
        store,
        JobRecord("sm-2", "sm", "cloud", "sagemaker", "PENDING", spec, created=999.0, info={}),
    )
    code, page = await fetch("jobs", params={"backend": "cloud"})
    assert code == 200
    costs = {j["id"]: j["cost"] for j in page["jobs"]}
    assert costs == {"sm-1": pytest.approx(0.5 * 4 * 3.825), "sm-2": None}
