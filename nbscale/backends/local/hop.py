"""Whether a local endpoint's router stands in front of every request (the proxy hop).

Read both by ``deploy`` (``endpoints.py``), which records each endpoint's choice, and by the
router itself, which must not be imported by a deploy for it: the router's module pulls in
its HTTP server, metrics and zygote client (about 17 ms).
"""

from __future__ import annotations

import os

DIRECT_ENV = "NBSCALE_DIRECT"  # 0: the router proxies every request, even to a lone replica


def proxy_every_request() -> bool:
    """``NBSCALE_DIRECT=0``: no replica serves the endpoint's socket, whatever was deployed."""
    return os.environ.get(DIRECT_ENV, "1") == "0"
