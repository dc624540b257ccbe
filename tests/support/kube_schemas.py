"""Validate manifests against the CRDs in ../shared/schemas the way the API server would.

``validate(obj)`` finds the CRD of ``obj``'s apiVersion/kind, checks it with
jsonschema against ``spec.versions[].schema.openAPIV3Schema`` (Draft 7 semantics,
which OpenAPI v3 schemas follow), then evaluates every CEL rule
(``x-kubernetes-validations``) that can be checked on create: rules that compare
with ``oldSelf`` are transition rules and only apply to updates. CEL runs in
``celpy`` (cel-python), a real CEL implementation.

Strictly: an object schema that lists its ``properties`` (and does not set
``x-kubernetes-preserve-unknown-fields`` or ``additionalProperties``) takes no other
field, and the top-level ``metadata`` takes only ObjectMeta's fields, as the API
server decodes with ``fieldValidation=Strict`` (by default it would drop a misspelt
field silently, so ``commandd`` or ``storageURI`` would pass and do nothing). A
Kubeflow Trainer object is checked against the CRDs of every supported release
(``TRAINER_RELEASES``); ``release=`` picks one. ``unknown_fields(obj)`` lists the
fields a strict decode refuses (the emulator answers with them).
"""

from __future__ import annotations

import os
import re
from functools import cache
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml

SCHEMAS = Path(os.environ.get("NBSCALE_SCHEMAS", "/work/shared/schemas"))
TRAINER_RELEASES = ("v2.2.1", "v2.3.0")  # the Kubeflow Trainer releases nbscale supports
TRAINER_FILES = {
    "TrainJob": "trainer.kubeflow.org_trainjobs.yaml",
    "ClusterTrainingRuntime": "trainer.kubeflow.org_clustertrainingruntimes.yaml",
    # a TrainingRuntime has the ClusterTrainingRuntime's spec, in a namespace
    "TrainingRuntime": "trainer.kubeflow.org_clustertrainingruntimes.yaml",
}
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


# ObjectMeta's fields a client may send (the API server decodes metadata strictly too)
OBJECT_META = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "generateName": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "ownerReferences": {"type": "array", "items": {"type": "object"}},
        "finalizers": {"type": "array", "items": {"type": "string"}},
        "uid": {"type": "string"},
        "resourceVersion": {"type": "string"},
        "generation": {"type": "integer"},
        "creationTimestamp": {"type": ["string", "null"]},
        "deletionTimestamp": {"type": ["string", "null"]},
        "deletionGracePeriodSeconds": {"type": "integer"},
        "managedFields": {"type": "array"},
        "selfLink": {"type": "string"},
    },
    "additionalProperties": False,
}
_COMBINATORS = ("allOf", "anyOf", "oneOf", "not")


def strict(schema: Any) -> Any:
    """A copy of a structural schema in which every object schema that lists its
    ``properties`` takes no other field (unless it preserves unknown fields or says
    what ``additionalProperties`` may be). Value-only branches (``anyOf``...) are kept
    as they are: they cannot declare fields in a structural schema."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in ("properties", "patternProperties", "definitions"):
            out[key] = {k: strict(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict | list):
            out[key] = strict(value)
        else:
            out[key] = value
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def crd_file(group: str, kind: str, release: str | None = None) -> Path:
    """The CRD file of ``kind``; a Trainer kind's of ``release`` (``main``: the main
    branch's, the next release)."""
    if group == "trainer.kubeflow.org" and kind in TRAINER_FILES:
        folder = SCHEMAS / "kubeflow-trainer"
        if release != "main":
            folder = folder / (release or TRAINER_RELEASES[0])
        return folder / TRAINER_FILES[kind]
    return SCHEMAS / CRDS[(group, kind)]


@cache
def _crd_doc(path: Path) -> dict[str, Any]:
    return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


@cache
def crd_schema(group: str, kind: str, version: str, release: str | None = None) -> dict[str, Any]:
    """The CRD's own schema of ``kind`` (a Trainer kind: of ``release``, default the
    oldest supported)."""
    doc = _crd_doc(crd_file(group, kind, release))
    for v in doc["spec"]["versions"]:
        if v["name"] == version:
            return v["schema"]["openAPIV3Schema"]
    raise KeyError(f"{group}/{version} {kind} is not in the CRD")


@cache
def strict_schema(group: str, kind: str, version: str, release: str | None = None) -> dict:
    schema = strict(crd_schema(group, kind, version, release))
    props = dict(schema.get("properties") or {})
    props["metadata"] = OBJECT_META
    return {**schema, "properties": props, "additionalProperties": False}


@cache
def _validator(
    group: str, kind: str, version: str, release: str | None = None
) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(strict_schema(group, kind, version, release))


def releases(group: str, kind: str) -> tuple[str | None, ...]:
    """The releases whose CRDs an object of ``kind`` is checked against: every supported
    Trainer release, and the main branch (the next one)."""
    if group == "trainer.kubeflow.org" and kind in TRAINER_FILES:
        return (*TRAINER_RELEASES, "main")
    return (None,)


def field_path(parts: Any) -> str:
    """``spec.trainer.env[0].name``: a path as the API server writes it."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def unknown_paths(obj: dict[str, Any], release: str | None = None) -> list[tuple]:
    """The paths (tuples of keys and indexes) of the fields of ``obj`` its CRD does not
    declare."""
    group, version = obj["apiVersion"].split("/")
    found: set[tuple] = set()
    for error in _validator(group, obj["kind"], version, release).iter_errors(obj):
        for e in [error, *error.context]:
            if e.validator == "additionalProperties" and e.validator_value is False:
                declared = e.schema.get("properties") or {}
                found.update((*e.absolute_path, key) for key in e.instance if key not in declared)
    return sorted(found, key=lambda p: [str(x) for x in p])


def unknown_fields(obj: dict[str, Any], release: str | None = None) -> list[str]:
    """The fields of ``obj`` its CRD does not declare (``spec.trainer.commandd``), as the
    API server names them in a strict decoding error."""
    return sorted(field_path(p) for p in unknown_paths(obj, release))


def prune(obj: dict[str, Any], paths: list[tuple]) -> None:
    """Drop the fields at ``paths`` (what the API server does with unknown fields)."""
    for path in paths:
        node: Any = obj
        for part in path[:-1]:
            node = node[part]
        node.pop(path[-1], None)


def schema_errors(
    obj: dict[str, Any], release: str | None = None
) -> list[jsonschema.exceptions.ValidationError]:
    """Every schema error of ``obj`` (undeclared fields included)."""
    group, version = obj["apiVersion"].split("/")
    return list(_validator(group, obj["kind"], version, release).iter_errors(obj))


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


def cel_failures(schema: dict[str, Any], obj: Any) -> list[tuple[str, str]]:
    """(path, message) of every create-time CEL rule that ``obj`` breaks."""
    found: list = []
    _walk(schema, obj, "", found)
    out = []
    for path, rule, value in found:
        if "oldSelf" in rule["rule"]:
            continue
        if not bool(_program(rule["rule"]).evaluate({"self": celpy.json_to_cel(value)})):
            out.append((path.lstrip(".") or "<root>", rule.get("message") or rule["rule"]))
    return out


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


def validate(obj: dict[str, Any], release: str | None = None) -> list[tuple[str, str, bool]]:
    """Raise when ``obj`` would be refused (by any supported release, or by ``release``);
    return the CEL rules that were checked."""
    api = obj["apiVersion"]
    kind = obj["kind"]
    if "/" not in api:
        jsonschema.validate(obj, CORE[kind], cls=jsonschema.Draft7Validator)
        if kind == "ConfigMap":
            size = sum(len(v) for v in (obj.get("binaryData") or {}).values())
            assert size < CONFIGMAP_MAX, f"ConfigMap of {size} bytes is over 1 MiB"
        return []
    group, version = api.split("/")
    checked: list[tuple[str, str, bool]] = []
    for rel in (release,) if release else releases(group, kind):
        try:
            _check(_validator(group, kind, version, rel), obj)
        except jsonschema.exceptions.ValidationError as exc:
            if rel:
                exc.message = f"(Kubeflow Trainer {rel}) {exc.message}"
            raise
        rules = cel_rules(crd_schema(group, kind, version, rel), obj)
        checked += [rule for rule in rules if rule not in checked]
        bad = [(p, r) for p, r, ok in rules if not ok]
        if bad:
            raise CELViolation(
                f"CEL rules fail{f' (Kubeflow Trainer {rel})' if rel else ''}: {bad}"
            )
    return checked


@cache
def _torch_runtime_text(release: str) -> str:
    """The ``torch-distributed`` runtime of a release, rendered as its Helm chart does with
    the runtime enabled and no extra labels: the template's own lines (``{{ ... }}``) and
    comments dropped."""
    path = SCHEMAS / "kubeflow-trainer" / release / "runtime-torch-distributed.yaml"
    text = path.read_text()
    text = re.sub(r"\{\{-?\s*/\*.*?\*/\s*-?\}\}", "", text, flags=re.S)  # the licence block
    return "\n".join(line for line in text.splitlines() if not line.strip().startswith(("{{", "#")))


def torch_runtime(release: str = TRAINER_RELEASES[0]) -> dict[str, Any]:
    """The ``torch-distributed`` ClusterTrainingRuntime as installed by ``release``'s chart."""
    return yaml.safe_load(_torch_runtime_text(release))
