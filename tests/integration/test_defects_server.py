"""Defects of issue 14 in the server extension, against a real jupyter server: each test
failed before its fix (five 500s, a LIKE wildcard, unbounded numbers, paths outside the root)."""

from __future__ import annotations

import json

import pytest
from tornado.httpclient import HTTPClientError

from nbscale.store import get_store
from nbscale.store.jobs import JobRecord, insert_job, list_jobs
from tests.support.notebooks import write_notebook

pytest_plugins = ["pytest_jupyter.jupyter_server"]


@pytest.fixture
def jp_server_config():
    return {
        "ServerApp": {"jpserver_extensions": {"nbscale.server_ext": True}},
        "NbscaleExtension": {"poll_interval": 0.2},
    }


@pytest.fixture
def fetch(jp_fetch):
    """``await fetch("jobs", method=..., body=...)`` -> (status, json); errors are answers."""

    async def call(*parts, method="GET", body=None, params=None):
        kwargs = {"method": method, "params": params}
        if body is not None:
            kwargs["body"] = body if isinstance(body, str | bytes) else json.dumps(body)
        try:
            resp = await jp_fetch("nbscale", "api", *parts, **kwargs)
        except HTTPClientError as err:
            return err.code, json.loads(err.response.body)
        return resp.code, json.loads(resp.body)

    return call


def _old_job(job_id: str, **spec) -> None:
    spec = {"entry": {"kind": "script", "target": "x.py"}, **spec}
    insert_job(get_store(), JobRecord(job_id, "old", "local", "local", "SUCCEEDED", spec, 1.0))


def _says_what_to_do(body: dict) -> None:
    assert body["error"] == "bad_request" and body["message"], body


async def test_a_body_that_is_not_utf8_is_a_400(fetch):
    for route in (("jobs",), ("pipelines",)):
        code, body = await fetch(*route, method="POST", body=b'{"path": "\xff\xfe.ipynb"}')
        assert code == 400, body
        _says_what_to_do(body)
        assert "not valid UTF-8" in body["message"]


@pytest.mark.parametrize(
    "path",
    ["a" * 100_000 + ".ipynb", "nb\x00.ipynb", "x/" * 3000 + "n.ipynb"],
    ids=["long", "nul", "deep"],
)
async def test_bad_paths_are_a_400_not_a_500(fetch, path):
    for route in (("jobs",), ("pipelines",)):
        code, body = await fetch(*route, method="POST", body={"path": path})
        assert code == 400, (route, body)
        _says_what_to_do(body)
        assert body["field"] == "path"
    assert list_jobs(get_store())[1] == 0


async def test_a_50k_character_job_id_is_a_404(fetch):
    for suffix in ("", "/logs", "/metrics"):
        code, body = await fetch("jobs", "a" * 50_000 + suffix)
        assert code == 404, body
        assert body["error"] == "not_found"


async def test_like_wildcards_in_a_job_id_prefix_match_nothing(fetch):
    _old_job("train-abc123")
    for probe in ("_", "______", "train_"):
        code, body = await fetch("jobs", probe)
        assert code == 404, (probe, body)
    code, body = await fetch("jobs", "train-a")  # a real prefix still works
    assert code == 200 and body["id"] == "train-abc123"


async def test_id_patterns_refuse_dot_dot(fetch):
    _old_job("a..b")
    for parts in (("jobs", "a..b"), ("jobs", ".."), ("endpoints", "..x"), ("pipelines", "x..")):
        code, body = await fetch(*parts)
        assert code == 404, (parts, body)
        assert body["error"] == "not_found" and "never '..'" in body["message"]
    code, body = await fetch("jobs", "a..b", "logs")
    assert code == 404 and body["error"] == "not_found"


async def test_post_jobs_refuses_a_billion_nodes(fetch, jp_root_dir):
    write_notebook(jp_root_dir / "nb.ipynb", "x = 1")
    for field, value in (("nodes", 1e9), ("nodes", 10**9), ("procs_per_node", 10**6)):
        code, body = await fetch("jobs", method="POST", body={"path": "nb.ipynb", field: value})
        assert code == 400, body
        assert body["message"].startswith(f"{field}: ")
        assert "less than or equal to" in body["message"]
    assert list_jobs(get_store())[1] == 0


@pytest.mark.parametrize("hours", ["inf", "nan", "-inf", "1e400", "0"])
async def test_cost_refuses_non_finite_hours(fetch, hours):
    code, body = await fetch("cost", params={"hours": hours})
    assert code == 400, body
    assert body["message"].startswith("hours: "), body


async def test_cost_refuses_huge_nodes(fetch):
    code, body = await fetch("cost", params={"nodes": "99999999999999999999"})
    assert code == 400, body
    assert body["message"].startswith("nodes: ")


async def test_a_pipeline_yaml_cannot_reach_outside_the_server_root(fetch, jp_root_dir):
    (jp_root_dir / "p").mkdir()
    (jp_root_dir / "p" / "pipeline.yaml").write_text(
        "steps:\n  - name: a\n    notebook: /etc/passwd\n"
    )
    code, body = await fetch("pipelines", method="POST", body={"path": "p/pipeline.yaml"})
    assert code == 400, body
    assert "is outside the pipeline's folder" in body["message"]
    assert "root:" not in body["message"]


@pytest.mark.parametrize("route", ["jobs", "pipelines"])
async def test_an_offset_past_sqlite_integers_is_a_400(fetch, route):
    code, body = await fetch(route, params={"offset": str(2**64)})
    assert code == 400, body
    assert body["message"].startswith("offset: ")


async def test_a_huge_log_rank_is_a_400(fetch):
    _old_job("old-1")
    code, body = await fetch("jobs", "old-1", "logs", params={"rank": "9" * 400})
    assert code == 400, body
    assert body["message"].startswith("rank: ")


async def test_an_unauthenticated_request_is_told_how_to_authenticate(
    http_server_client, jp_base_url
):
    with pytest.raises(HTTPClientError) as err:
        await http_server_client.fetch(
            jp_base_url + "nbscale/api/jobs", headers={"Authorization": "token wrong"}
        )
    assert err.value.code == 403
    body = json.loads(err.value.response.body)
    assert body["error"] == "http_error"
    assert body["message"].startswith("Forbidden (send the Jupyter server's token")


async def test_a_body_nested_past_the_parser_is_a_400(fetch):
    deep = '{"path": "a.ipynb", "parameters": {"x": ' + "[" * 100_000 + "]" * 100_000 + "}}"
    for route in ("jobs", "pipelines"):
        code, body = await fetch(route, method="POST", body=deep)
        assert code == 400, body
        assert body["message"].startswith("body: is nested too deeply")


async def test_a_bad_field_says_what_was_sent_and_where_the_fields_are(fetch):
    code, body = await fetch("jobs", method="POST", body={"nodes": 0, "colour": "blue"})
    assert code == 400
    message = body["message"]
    assert "path: is required" in message
    assert "nodes: Input should be greater than or equal to 1, got 0" in message
    assert "colour: is not a field of this request" in message
    assert message.endswith("(the fields and their limits are in server_ext/openapi.json)")


async def test_a_log_offset_past_what_a_file_can_hold_is_a_400(fetch, nbscale_home):
    from nbscale import paths
    from nbscale.runtime.jobdir import JobDir

    d = JobDir(paths.job_dir("old-1")).make()
    (d.path / "logs" / "rank-0.log").write_text("a line\n")
    spec = {"entry": {"kind": "script", "target": "x.py"}}
    insert_job(
        get_store(),
        JobRecord(
            "old-1", "old", "local", "local", "SUCCEEDED", spec, 1.0, info={"job_dir": str(d.path)}
        ),
    )
    code, body = await fetch("jobs", "old-1", "logs", params={"offset": str(2**62)})
    assert code == 400, body
    assert body["message"].startswith("offset: ")
    code, body = await fetch("jobs", "old-1", "logs", params={"offset": str(2**40)})
    assert code == 200 and body["text"] == "", body  # past the end: nothing more yet
    code, body = await fetch("jobs", "old-1", "logs")
    assert code == 200 and body["text"] == "a line\n"
