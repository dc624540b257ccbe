"""The auth tests' table of routes covers every route the server extension registers."""

from __future__ import annotations

from tests.support.routes import ROUTE_VERBS


def test_the_route_table_is_covered():
    # every verb of every handler is in the list the next test walks
    assert len(ROUTE_VERBS) == 29  # 24, and the five verbs of the JSON 404 catch-all
    for compute in (
        ("nbscale/api/jobs", "POST"),
        ("nbscale/api/jobs/some-id-1", "DELETE"),
        ("nbscale/api/pipelines/some-id-1", "DELETE"),
        ("nbscale/api/sweeps/some-id-1", "DELETE"),
    ):
        assert compute in ROUTE_VERBS
