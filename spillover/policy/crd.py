"""Generates the ModelDeployment CRD from the pydantic models.

    python -m spillover.policy.crd > manifests/crd-modeldeployment.yaml

pydantic's JSON Schema is turned into a Kubernetes *structural* schema: references
inlined, `X | None` unions collapsed, int-or-string and free-form fields marked with the
x-kubernetes extensions, keywords the API server does not know removed. Defaults are
applied by spillover itself (same code in file and cluster mode), so none are written
into the CRD; descriptions mention them instead.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

import yaml  # type: ignore[import-untyped]

from spillover.policy.meta import API_GROUP, KIND
from spillover.policy.model import ModelDeployment

PLURAL = "modeldeployments"
SINGULAR = "modeldeployment"
SHORT_NAMES = ["md", "mdep"]
VERSION = "v1alpha1"
HEADER = "# Generated from spillover/policy/model.py by `python -m spillover.policy.crd`. Do not edit.\n"

# Keywords of the apiextensions.k8s.io/v1 JSONSchemaProps that we may emit.
ALLOWED_KEYWORDS = {
    "description", "type", "format", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum",
    "maxLength", "minLength", "pattern", "maxItems", "minItems", "enum", "required", "items",
    "properties", "additionalProperties", "nullable", "anyOf", "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields", "x-kubernetes-list-type", "x-kubernetes-map-type",
}


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_resolve(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "anyOf" in node:
        branches = [b for b in node.pop("anyOf") if b != {"type": "null"}]
        if len(branches) == 1:
            # `X | None`: the CRD expresses optional by omission, not by null.
            merged = {k: v for k, v in node.items() if k != "description"}
            merged.update(branches[0])
            if "description" in node:
                merged["description"] = node["description"]
            node = merged
        else:
            node["anyOf"] = branches
    if "$ref" in node:
        target = copy.deepcopy(defs[node.pop("$ref").split("/")[-1]])
        # A field's own description wins over the referenced class docstring.
        target.update({k: v for k, v in node.items() if k == "description"})
        return _resolve(target, defs)
    return {k: _resolve(v, defs) for k, v in node.items()}


def _clean(node: Any) -> Any:
    if isinstance(node, list):
        return [_clean(n) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: _clean(v) for name, v in value.items()}
        elif key in ("title", "default", "writeOnly", "readOnly", "examples", "$defs", "propertyNames") or (
            key == "format" and value == "password"
        ):
            continue
        elif key == "const":
            out["enum"] = [value]
        elif key == "patternProperties":
            (schema,) = value.values()
            out["additionalProperties"] = _clean(schema)
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "additionalProperties":
            if value is True or value == {}:
                out["x-kubernetes-preserve-unknown-fields"] = True
            elif value is False:
                continue  # structural schemas cannot say it; unknown fields are pruned anyway
            else:
                out[key] = _clean(value)
        elif key == "description":
            out[key] = " ".join(str(value).split())
        else:
            out[key] = _clean(value)
    if "properties" in out and "additionalProperties" in out:
        del out["additionalProperties"]
    if not out.get("type") and not out.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        if "properties" in out or "additionalProperties" in out:
            out["type"] = "object"
        else:
            out["x-kubernetes-preserve-unknown-fields"] = True
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return {k: out[k] for k in sorted(out, key=_key_order)}


_ORDER = ["description", "type", "required", "properties", "additionalProperties", "items", "enum"]


def _key_order(key: str) -> tuple[int, str]:
    return (_ORDER.index(key) if key in _ORDER else len(_ORDER), key)


def openapi_schema() -> dict[str, Any]:
    raw = ModelDeployment.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    schema = _clean(_resolve(raw, defs))
    props = schema["properties"]
    props["apiVersion"] = {"description": "spillover.dev/v1alpha1", "type": "string"}
    props["kind"] = {"description": "ModelDeployment", "type": "string"}
    props["metadata"] = {"type": "object"}
    schema["required"] = ["spec"]
    return schema


def structural_problems(node: Any, path: str = "") -> list[str]:
    """Why a schema would not be structural (empty list: it is). Used by the tests."""
    problems: list[str] = []
    if not isinstance(node, dict):
        return [f"{path or '.'}: not a schema object"]
    for key in node:
        if key not in ALLOWED_KEYWORDS:
            problems.append(f"{path or '.'}: keyword {key} is not allowed")
    int_or_string = node.get("x-kubernetes-int-or-string") is True
    preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
    if "anyOf" in node and not (int_or_string and node["anyOf"] == [{"type": "integer"}, {"type": "string"}]):
        problems.append(f"{path or '.'}: anyOf is only allowed for int-or-string")
    if "type" not in node and not int_or_string and not preserve:
        problems.append(f"{path or '.'}: type is missing")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{path or '.'}: properties and additionalProperties together")
    if "additionalProperties" in node and not isinstance(node["additionalProperties"], dict):
        problems.append(f"{path or '.'}: additionalProperties must be a schema")
    for name, sub in (node.get("properties") or {}).items():
        problems += structural_problems(sub, f"{path}.{name}")
    if "items" in node:
        problems += structural_problems(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        problems += structural_problems(node["additionalProperties"], f"{path}.*")
    return problems


def crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{API_GROUP}"},
        "spec": {
            "group": API_GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": ["spillover"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "MODEL", "type": "string", "jsonPath": ".spec.model"},
                        {"name": "STATE", "type": "string", "jsonPath": ".status.state"},
                        {"name": "REMOTE%", "type": "number", "jsonPath": ".status.remoteShare"},
                        {"name": "COPY", "type": "string", "jsonPath": ".status.destination.state",
                         "description": "The copy on the destination cluster"},
                        {"name": "COPY-READY", "type": "integer", "jsonPath": ".status.destination.readyReplicas",
                         "description": "Ready replicas of the copy"},
                        {"name": "AGE", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }


def render() -> str:
    return HEADER + yaml.safe_dump(crd(), sort_keys=False, width=110, allow_unicode=True)


def main() -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
