"""Endpoints and pipeline routes of /nbscale/api/ over a real endpoint and a real papermill pipeline."""

from __future__ import annotations

import asyncio
import contextlib
import time

import nbformat
import pytest

from tests.support.notebooks import code, write_notebook

pytest_plugins = ["pytest_jupyter.jupyter_server"]


@pytest.fixture
def linear_endpoint():
    import torch

    from nbscale import endpoints

    torch.manual_seed(0)
    ep = endpoints.deploy(torch.nn.Linear(4, 2), name="lin", example=torch.zeros(1, 4))
    for _ in range(20):
        ep.predict(torch.ones(3, 4).numpy())
    yield ep
    with contextlib.suppress(Exception):
        endpoints.endpoint("lin").delete()


async def test_endpoint_routes_list_describe_metrics_scale_undeploy(fetch, linear_endpoint):
    code, body = await fetch("endpoints")
    assert code == 200 and [e["name"] for e in body["endpoints"]] == ["lin"]
    assert body["endpoints"][0]["url"].startswith("http://127.0.0.1:")

    code, ep = await fetch("endpoints", "lin")
    assert code == 200 and ep["replicas"]["min"] == 1

    code, metrics = await fetch("endpoints", "lin", "metrics")
    assert code == 200 and metrics["p50_ms"] > 0 and metrics["requests_total"] >= 20

    code, body = await fetch(
        "endpoints", "lin", "scale", method="POST", body={"min_replicas": 3, "max_replicas": 1}
    )
    assert code == 400 and "replicas" in body["message"]
    code, body = await fetch("endpoints", "lin", "scale", method="POST", body={"min_replicas": 1})
    assert code == 400 and "max_replicas" in body["message"]
    code, body = await fetch(
        "endpoints", "lin", "scale", method="POST", body={"min_replicas": 1, "max_replicas": 2}
    )
    assert code == 200 and body["replicas"]["max"] == 2, body

    code, body = await fetch("endpoints", "lin", method="DELETE")
    assert code == 200, body
    code, body = await fetch("endpoints")
    assert all(
        e["name"] != "lin" or e["status"] not in ("ready", "READY") for e in body["endpoints"]
    )


@pytest.mark.parametrize(
    ("parts", "method"),
    [
        (("endpoints", "ghost"), "GET"),
        (("endpoints", "ghost", "metrics"), "GET"),
        (("endpoints", "ghost"), "DELETE"),
    ],
)
async def test_unknown_endpoint_is_404(fetch, parts, method):
    code, body = await fetch(*parts, method=method)
    assert code == 404 and "ghost" in body["message"], body


def tagged_pipeline(root):
    write_notebook(
        root / "flow.ipynb",
        code("x = 20", "step:make"),
        code("y = x + 1\nprint('y is', y)", "step:use", "prev:make"),
    )


async def test_pipeline_routes_start_list_describe(fetch, jp_root_dir):
    tagged_pipeline(jp_root_dir)
    code, run = await fetch("pipelines", method="POST", body={"path": "flow.ipynb"})
    assert code == 201, run
    assert [s["name"] for s in run["steps"]] == ["make", "use"]
    assert run["steps"][1]["depends_on"] == ["make"]

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        code, run = await fetch("pipelines", run["id"])
        assert code == 200
        if run["status"] not in ("PENDING", "RUNNING"):
            break
        await asyncio.sleep(0.3)
    assert run["status"] == "SUCCEEDED", run
    assert all(s["status"] == "SUCCEEDED" for s in run["steps"])

    code, body = await fetch("pipelines", params={"limit": 5})
    assert code == 200 and [r["id"] for r in body["runs"]] == [run["id"]]


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"path": "untagged.ipynb"}, 400, "step:NAME"),
        ({"path": "../../etc/passwd.ipynb"}, 400, "outside"),
        ({"path": "flow.ipynb", "backend": "mars"}, 404, "mars"),
        ({"backend": "local"}, 400, "path"),
    ],
)
async def test_start_run_rejects_bad_input(fetch, jp_root_dir, body, status, needle):
    tagged_pipeline(jp_root_dir)
    nbformat.write(
        nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")]),
        jp_root_dir / "untagged.ipynb",
    )
    code, answer = await fetch("pipelines", method="POST", body=body)
    assert code == status and needle in answer["message"], answer
    code, runs = await fetch("pipelines")
    assert runs["runs"] == []


async def test_unknown_run_is_404_and_bad_paging_400(fetch):
    code, body = await fetch("pipelines", "p-nope")
    assert code == 404, body
    code, body = await fetch("pipelines", params={"limit": 0})
    assert code == 400 and "limit" in body["message"]
