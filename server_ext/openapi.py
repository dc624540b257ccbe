"""The OpenAPI document of ``/nbscale/api/``, built from the pydantic models.

``python -m nbscale.server_ext.openapi > server_ext/openapi.json`` refreshes the
published file; a test fails when the file and the models drift apart.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from . import API_VERSION
from . import models as m

_ERRORS = {
    "400": "bad input: a field, a query argument or the body is wrong",
    "403": "the user may not do this (launching or stopping compute needs the execute permission)",
    "404": "no such job, endpoint, pipeline run, sweep or backend",
    "409": "the request clashes with the current state",
    "504": "the job or run did not stop in time; it may still be stopping",
    "502": "the backend cannot be reached",
}


def _op(
    summary: str,
    response: type[BaseModel],
    status: str = "200",
    body: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    path_param: str | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            status: {
                "description": "OK",
                "content": {"application/json": {"schema": _ref(response)}},
            },
            **{
                code: {
                    "description": text,
                    "content": {"application/json": {"schema": _ref(m.ErrorResponse)}},
                }
                for code, text in _ERRORS.items()
            },
        },
    }
    params = []
    if path_param:
        params.append(
            {"name": path_param, "in": "path", "required": True, "schema": {"type": "string"}}
        )
    if query:
        for name in query.model_fields:
            params.append(
                {
                    "name": name,
                    "in": "query",
                    "required": False,
                    "schema": {"$ref": f"#/components/schemas/{query.__name__}/properties/{name}"},
                }
            )
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(body)}},
        }
    return op


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def document() -> dict[str, Any]:
    from . import __version__

    paths = {
        "/nbscale/api/version": {"get": _op("Server extension and API version", m.VersionResponse)},
        "/nbscale/api/backends": {
            "get": _op("Configured backends and whether they answer", m.ListBackendsResponse)
        },
        "/nbscale/api/cost": {
            "get": _op("Estimated cost of a job", m.CostEstimate, query=m.CostEstimateQuery)
        },
        "/nbscale/api/jobs": {
            "get": _op(
                "List jobs, newest first; page with ?after= the page's 'next' cursor",
                m.ListJobsResponse,
                query=m.ListJobsQuery,
            ),
            "post": _op("Submit a notebook as a job", m.DescribeJob, "201", body=m.CreateJob),
        },
        "/nbscale/api/jobs/{job_id}": {
            "get": _op("Describe a job", m.DescribeJob, path_param="job_id"),
            "delete": _op("Cancel a job", m.DescribeJob, path_param="job_id"),
        },
        "/nbscale/api/jobs/{job_id}/logs": {
            "get": _op(
                "Log text of one rank from an offset",
                m.JobLogs,
                query=m.JobLogsQuery,
                path_param="job_id",
            )
        },
        "/nbscale/api/jobs/{job_id}/metrics": {
            "get": _op("Metrics logged by the job", m.JobMetrics, path_param="job_id")
        },
        "/nbscale/api/jobs/{job_id}/rerun": {
            "post": _op("Submit the job's spec again", m.DescribeJob, "201", path_param="job_id")
        },
        "/nbscale/api/endpoints": {
            "get": _op(
                "List endpoints, oldest first; page with ?after= the page's 'next' cursor",
                m.ListEndpointsResponse,
                query=m.ListEndpointsQuery,
            )
        },
        "/nbscale/api/endpoints/{name}": {
            "get": _op("Describe an endpoint", m.DescribeEndpoint, path_param="name"),
            "delete": _op("Undeploy an endpoint", m.DescribeEndpoint, path_param="name"),
        },
        "/nbscale/api/endpoints/{name}/metrics": {
            "get": _op(
                "Latency, throughput and error metrics", m.EndpointMetrics, path_param="name"
            )
        },
        "/nbscale/api/endpoints/{name}/scale": {
            "post": _op(
                "Set the replica range", m.DescribeEndpoint, body=m.ScaleEndpoint, path_param="name"
            )
        },
        "/nbscale/api/endpoints/{name}/drift": {
            "get": _op(
                "Captured inputs against the baseline, per window (drifting features first)",
                m.EndpointDrift,
                query=m.EndpointDriftQuery,
                path_param="name",
            )
        },
        "/nbscale/api/idle": {
            "get": _op("What runs now (jobs, endpoints) and its cost per hour", m.ListIdleResponse)
        },
        "/nbscale/api/pipelines": {
            "get": _op(
                "List pipeline runs, newest first; page with ?after= the page's 'next' cursor",
                m.ListRunsResponse,
                query=m.ListRunsQuery,
            ),
            "post": _op("Run a notebook or pipeline", m.DescribeRun, "201", body=m.CreateRun),
        },
        "/nbscale/api/pipelines/{run_id}": {
            "get": _op("Describe a run", m.DescribeRun, path_param="run_id"),
            "delete": _op(
                "Cancel a detached run (its runner stops its kernels)",
                m.DescribeRun,
                path_param="run_id",
            ),
        },
        "/nbscale/api/sweeps": {
            "get": _op(
                "List sweeps, newest first: status, trials done of planned, best objective",
                m.ListSweepsResponse,
                query=m.ListSweepsQuery,
            )
        },
        "/nbscale/api/sweeps/{sweep_id}": {
            "get": _op(
                "Describe a sweep: its trials, best first by the objective",
                m.DescribeSweep,
                path_param="sweep_id",
            ),
            "delete": _op(
                "Cancel a sweep and its running trials", m.DescribeSweep, path_param="sweep_id"
            ),
        },
    }
    models = [
        obj
        for obj in vars(m).values()
        if isinstance(obj, type)
        and issubclass(obj, BaseModel)
        and obj.__module__ == m.__name__
        and obj not in (m.Model, m.OpenModel)
    ]
    _, schemas = models_json_schema(
        [(model, "serialization") for model in models], ref_template="#/components/schemas/{model}"
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "nbscale server extension",
            "version": __version__,
            "x-api-version": API_VERSION,
        },
        "security": [{"jupyterToken": []}],
        "paths": paths,
        "components": {
            "schemas": schemas["$defs"],
            "securitySchemes": {
                "jupyterToken": {"type": "apiKey", "in": "header", "name": "Authorization"}
            },
        },
    }


def main() -> None:
    json.dump(document(), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
