"""No nbscale route answers without credentials; launching compute needs the execute permission."""

from __future__ import annotations

import json

import pytest
from jupyter_server.auth.authorizer import Authorizer
from tornado.httpclient import HTTPClientError

from nbscale.store import get_store
from nbscale.store.jobs import list_jobs
from tests.support.routes import ROUTE_VERBS

pytest_plugins = ["pytest_jupyter.jupyter_server"]


class NoComputeAuthorizer(Authorizer):
    """Lets a user read everything but start or stop nothing."""

    def is_authorized(self, handler, user, action, resource):
        return not (resource == "nbscale" and action == "execute")


@pytest.fixture
def jp_server_config():
    return {
        "ServerApp": {
            "jpserver_extensions": {"nbscale.server_ext": True},
            "allow_unauthenticated_access": False,
            "authorizer_class": NoComputeAuthorizer,
        },
    }


@pytest.mark.parametrize(("path", "method"), ROUTE_VERBS)
async def test_no_route_answers_without_credentials(
    http_server_client, jp_serverapp, jp_base_url, path, method
):
    body = (
        json.dumps({"path": "x.ipynb", "min_replicas": 1, "max_replicas": 1})
        if method != "GET"
        else None
    )
    if method == "DELETE":
        body = None
    with pytest.raises(HTTPClientError) as err:
        await http_server_client.fetch(
            jp_base_url + path,
            method=method,
            body=body,
            allow_nonstandard_methods=True,
            follow_redirects=False,
        )
    assert err.value.code in (401, 403), (
        f"{method} {path} answered {err.value.code} without credentials"
    )
    assert list_jobs(get_store())[1] == 0


async def test_with_a_token_the_api_answers(jp_fetch):
    resp = await jp_fetch("nbscale", "api", "version")
    assert resp.code == 200 and json.loads(resp.body)["api_version"] == 1


@pytest.mark.parametrize(
    ("parts", "method", "body"),
    [
        (("jobs",), "POST", {"path": "x.ipynb"}),
        (("jobs", "some-id-1"), "DELETE", None),
        (("jobs", "some-id-1", "rerun"), "POST", {}),
        (("endpoints", "some-id-1"), "DELETE", None),
        (("endpoints", "some-id-1", "scale"), "POST", {"min_replicas": 1, "max_replicas": 2}),
        (("pipelines",), "POST", {"path": "x.ipynb"}),
        (("pipelines", "some-id-1"), "DELETE", None),
    ],
)
async def test_compute_routes_need_the_execute_permission(jp_fetch, parts, method, body):
    kwargs = {"method": method}
    if body is not None:
        kwargs["body"] = json.dumps(body)
    with pytest.raises(HTTPClientError) as err:
        await jp_fetch("nbscale", "api", *parts, **kwargs)
    assert err.value.code == 403
    assert list_jobs(get_store())[1] == 0
