"""The settings of a ``[backends.NAME] type = "local"`` table, checked once.

.. code-block:: toml

    [backends.gpu-box]
    type = "local"
    # all optional; cost (nbscale.cost): this machine is free unless its hours are priced
    gpu_hour_price = 0.0          # USD per GPU hour
    node_hour_price = 0.0         # USD per node hour
    # price_per_node_hour = 1.5   # or one price for the whole node, GPUs included

The implicit ``local`` backend has an empty table. A setting nbscale does not know is
refused (a typo must not be silently ignored): the local platform reads nothing else
from its table (the jobs' and endpoints' settings come with each job and endpoint).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from ...config import BackendConfig
from ..settings_base import PlatformSettings


class LocalSettings(PlatformSettings):
    platform: ClassVar[str] = "local"

    # cost (nbscale.cost.node_price reads them; checked by nbscale.cost.check_price_settings)
    price_per_node_hour: float | None = Field(None, examples=[1.5])
    node_hour_price: float = Field(0.0, examples=[0.2])
    gpu_hour_price: float = Field(0.0, examples=[0.9])


#: the keys a ``type = "local"`` table may have
KNOWN = frozenset(LocalSettings.known_settings())


def settings(bconf: BackendConfig) -> LocalSettings:
    """Check a ``[backends.NAME] type = "local"`` table; one ``SpecError`` for the first
    problem (``[backends.NAME] PATH: PROBLEM; FIX``)."""
    return LocalSettings.load(bconf)
