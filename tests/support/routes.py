"""Every route of the nbscale server extension with each verb its handler answers."""

from __future__ import annotations

import re

from nbscale.server_ext.app import ROUTES

VERBS = ("get", "post", "put", "patch", "delete")


def every_route():
    for pattern, handler in ROUTES:
        path = re.sub(r"\(\?P<[a-z_]+>[^)]*\)", "some-id-1", pattern)
        for verb in VERBS:
            if verb in vars(handler):
                yield path, verb.upper()


ROUTE_VERBS = sorted(set(every_route()))
