"""Idle endpoints: --idle-ttl is checked as a duration before anything is deployed."""

from __future__ import annotations

import pytest

from nbscale.endpoints import deploy, endpoints
from nbscale.errors import SpecError
from tests.support.serving import mlp


def test_idle_ttl_must_be_a_duration():
    with pytest.raises(SpecError, match="not a duration"):
        deploy(mlp(), name="bad-ttl", idle_ttl="soonish")
    assert endpoints() == []
