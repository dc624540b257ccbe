"""Pipeline runs over /nbscale/api/, without a server: a cancel that outlasts its wait is a 504."""

from __future__ import annotations

import pytest
from nbscale.server_ext.errors import translate


@pytest.mark.parametrize("exc", [TimeoutError("pipeline run p-1 still RUNNING after 30.0 s")])
def test_a_cancel_that_outlasts_its_wait_is_a_504_with_the_reason(exc):
    status, body = translate(exc)
    assert status == 504 and body == {"error": "timeout", "message": str(exc)}
