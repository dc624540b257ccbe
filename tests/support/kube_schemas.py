"""Validate manifests against the CRDs in ../shared/schemas the way the API server would.

``validate(obj)`` finds the CRD of ``obj``'s apiVersion/kind, checks it with
jsonschema against ``spec.versions[].schema.openAPIV3Schema`` (Draft 7 semantics,
which OpenAPI v3 schemas follow), then evaluates every CEL rule
(``x-kubernetes-validations``) that can be checked on create: rules that compare
with ``oldSelf`` are transition rules and only apply to updates. CEL runs in
``celpy`` (cel-python), a real CEL implementation.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml

SCHEMAS = Path(os.environ.get("NBSCALE_SCHEMAS", "/work/shared/schemas"))
CRDS = {
    ("trainer.kubeflow.org", "TrainJob"): "kubeflow-trainer/trainer.kubeflow.org_trainjobs.yaml",
    ("trainer.kubeflow.org", "ClusterTrainingRuntime"): (
        "kubeflow-trainer/trainer.kubeflow.org_clustertrainingruntimes.yaml"
    ),
    ("serving.kserve.io", "InferenceService"): "kserve/serving.kserve.io_inferenceservices.yaml",
    ("serving.kserve.io", "ClusterServingRuntime"): (
        "kserve/serving.kserve.io_clusterservingruntimes.yaml"
    ),
}

# core objects have no CRD: the fields nbscale sets, with the API server's own rules
CORE = {
    "ConfigMap": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata"],
        "properties": {
            "apiVersion": {"const": "v1"},
            "kind": {"const": "ConfigMap"},
            "metadata": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"}
                },
            },
            "binaryData": {
                "type": "object",
                "additionalProperties": {"type": "string", "contentEncoding": "base64"},
            },
            "data": {"type": "object", "additionalProperties": {"type": "string"}},
            "immutable": {"type": "boolean"},
        },
        "additionalProperties": False,
    },
    "Secret": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata"],
        "properties": {
            "apiVersion": {"const": "v1"},
            "kind": {"const": "Secret"},
            "type": {"type": "string"},
            "metadata": {"type": "object", "required": ["name"]},
            "data": {"type": "object", "additionalProperties": {"type": "string"}},
        },
        "additionalProperties": False,
    },
}
CONFIGMAP_MAX = 1024 * 1024  # the API server refuses larger ConfigMaps


class CELViolation(AssertionError):
    pass


@cache
def crd_schema(group: str, kind: str, version: str) -> dict[str, Any]:
    doc = yaml.safe_load((SCHEMAS / CRDS[(group, kind)]).read_text())
    for v in doc["spec"]["versions"]:
        if v["name"] == version:
            return v["schema"]["openAPIV3Schema"]
    raise KeyError(f"{group}/{version} {kind} is not in the CRD")


@cache
def _validator(group: str, kind: str, version: str) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(crd_schema(group, kind, version))


def _check(validator: jsonschema.Draft7Validator, obj: dict[str, Any]) -> None:
    error = jsonschema.exceptions.best_match(validator.iter_errors(obj))
    if error is not None:
        raise error


def _walk(schema: dict[str, Any], value: Any, path: str, found: list) -> None:
    for rule in schema.get("x-kubernetes-validations") or []:
        found.append((path, rule, value))
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, sub in value.items():
            if key in props:
                _walk(props[key], sub, f"{path}.{key}", found)
            elif isinstance(extra, dict):
                _walk(extra, sub, f"{path}.{key}", found)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, sub in enumerate(value):
            _walk(schema["items"], sub, f"{path}[{i}]", found)


_ENV = celpy.Environment()


@cache
def _program(rule: str):
    return _ENV.program(_ENV.compile(rule))


def cel_rules(schema: dict[str, Any], obj: Any) -> list[tuple[str, str, bool]]:
    """(path, rule, result) for every create-time CEL rule that applies to ``obj``."""
    found: list = []
    _walk(schema, obj, "", found)
    out = []
    for path, rule, value in found:
        text = rule["rule"]
        if "oldSelf" in text:
            continue  # transition rule: checked on update only
        result = _program(text).evaluate({"self": celpy.json_to_cel(value)})
        out.append((path or ".", text, bool(result)))
    return out


def validate(obj: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """Raise when ``obj`` would be refused; return the CEL rules that were checked."""
    api = obj["apiVersion"]
    kind = obj["kind"]
    if "/" not in api:
        jsonschema.validate(obj, CORE[kind], cls=jsonschema.Draft7Validator)
        if kind == "ConfigMap":
            size = sum(len(v) for v in (obj.get("binaryData") or {}).values())
            assert size < CONFIGMAP_MAX, f"ConfigMap of {size} bytes is over 1 MiB"
        return []
    group, version = api.split("/")
    schema = crd_schema(group, kind, version)
    _check(_validator(group, kind, version), obj)
    checked = cel_rules(schema, obj)
    bad = [(p, r) for p, r, ok in checked if not ok]
    if bad:
        raise CELViolation(f"CEL rules fail: {bad}")
    return checked
