"""The published OpenAPI file, the pydantic models and the panel's TypeScript types agree."""

from __future__ import annotations

import json
import re

from nbscale.server_ext.openapi import document

from tests.support import REPO

OPENAPI = REPO / "server_ext" / "openapi.json"
MODELS_TS = REPO / "extension" / "src" / "api" / "models.ts"


def ts_interfaces() -> dict[str, set[str]]:
    text = MODELS_TS.read_text()
    out = {}
    for name, body in re.findall(r"export interface (\w+) \{\n(.*?)\n\}", text, flags=re.S):
        out[name] = set(re.findall(r"^  (\w+)\??:", body, flags=re.M))
    return out


def test_published_openapi_file_matches_the_models():
    published = json.loads(OPENAPI.read_text())
    assert published == json.loads(json.dumps(document())), (
        "server_ext/openapi.json is stale: python -m nbscale.server_ext.openapi > server_ext/openapi.json"
    )


def test_every_route_is_documented():
    from nbscale.server_ext.app import ROUTES

    documented = {re.sub(r"\{\w+\}", "X", p) for p in document()["paths"]}
    served = {"/" + re.sub(r"\(\?P<\w+>[^)]*\)", "X", pattern) for pattern, _ in ROUTES}
    served.remove("/nbscale/api/X")  # the catch-all that answers a JSON 404
    assert documented == served


def test_typescript_interfaces_mirror_the_schemas():
    schemas = document()["components"]["schemas"]
    interfaces = ts_interfaces()
    assert len(interfaces) >= 20
    for name, fields in interfaces.items():
        assert name in schemas, f"models.ts has {name}, the API has no such body"
        assert fields == set(schemas[name].get("properties", {})), (
            f"{name} differs between models.ts and the API"
        )
    missing = set(schemas) - set(interfaces) - {"EndpointMetrics", "JobStatus"}
    assert not missing, f"bodies without a TypeScript type: {sorted(missing)}"


def test_job_status_union_matches_the_engine():
    from nbscale.store.jobs import STATUSES

    union = re.search(r"export type JobStatus =(.*?);", MODELS_TS.read_text(), flags=re.S).group(1)
    assert set(re.findall(r"'(\w+)'", union)) == set(STATUSES)
