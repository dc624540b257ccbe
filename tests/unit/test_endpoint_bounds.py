"""Every number a user types for an endpoint has an upper bound, checked before anything
starts: nothing is stored, packaged or started for a refused deploy or scale."""

from __future__ import annotations

import math

import pytest

from nbscale.backends.local.endpoints import LocalEndpoints
from nbscale.endpoints import deploy, endpoints
from nbscale.errors import SpecError
from nbscale.monitoring.drift import parse_duration


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"replicas": (0, 10**9)}, "replicas"),
        ({"replicas": (1, 10**12)}, "replicas"),
        ({"max_batch_size": 10**9}, "max_batch_size"),
        ({"max_batch_delay_ms": math.inf}, "max_batch_delay_ms"),
        ({"max_queue": 10**12}, "max_queue"),
        ({"target_concurrency": math.nan}, "target_concurrency"),
        ({"scale_down_delay_s": 1e12}, "scale_down_delay_s"),
        ({"idle_timeout_s": -1}, "idle_timeout_s"),
        ({"idle_ttl": "99999d"}, "idle_ttl"),
        ({"idle_ttl": math.inf}, "idle_ttl"),
    ],
)
def test_out_of_range_settings_are_refused_before_anything_is_made(
    tmp_path, nbscale_home, kwargs, field
):
    with pytest.raises(SpecError) as err:
        deploy(str(tmp_path / "no-artifact-needed"), name="bounded", **kwargs)
    assert err.value.field == field
    assert endpoints() == []
    assert not (nbscale_home / "endpoints" / "bounded").exists()


def test_local_replicas_are_capped_by_this_machine(tmp_path):
    from nbscale.backends import get_endpoint_backend

    backend = get_endpoint_backend("local")
    assert isinstance(backend, LocalEndpoints)
    limit = backend.replica_limit()
    assert limit >= 4
    with pytest.raises(SpecError, match=f"at most {limit} replicas"):
        deploy(str(tmp_path / "x"), name="too-many", replicas=(1, limit + 1))
    assert endpoints() == []


def test_durations_are_finite_and_at_most_a_year():
    assert parse_duration("30m") == 1800
    for bad in ("400d", math.inf, math.nan, 0):
        with pytest.raises(SpecError):
            parse_duration(bad, "idle_ttl")


def test_a_budget_must_be_finite(tmp_path):
    from nbscale.specs import Entry, JobSpec

    (tmp_path / "t.py").write_text("")
    for bad in (math.inf, math.nan, 1e12):
        with pytest.raises(SpecError, match="max_cost"):
            JobSpec(entry=Entry.from_path(str(tmp_path / "t.py")), max_cost=bad)
