"""Fixtures of the UI tier."""

from __future__ import annotations

import pytest

from tests.support.lab import running_lab


@pytest.fixture
def lab(tmp_path):
    """JupyterLab on 127.0.0.1 with the nbscale extension: url, token, log."""
    with running_lab(tmp_path) as info:
        yield info
