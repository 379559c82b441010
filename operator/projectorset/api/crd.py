"""Generate the ProjectorSet CustomResourceDefinition from the pydantic models.

``python -m projectorset.api.crd > crds/projectorsets.yaml`` writes the file that
``kubectl apply`` and the Helm chart install; a test fails when it is stale.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import core_schema

from projectorset import api


class _StructuralSchema(GenerateJsonSchema):
    """Emit defaults from default factories, so the API server fills nested defaults too."""

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        factory = schema.get("default_factory")
        if factory is None or schema.get("default_factory_takes_data"):
            return super().get_default_value(schema)
        value = factory()  # type: ignore[call-arg]
        # An empty object is enough: the API server then applies the nested fields' defaults.
        return {} if isinstance(value, BaseModel) else value

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def _to_openapi(node: Any, definitions: dict[str, Any]) -> Any:
    """Turn pydantic's JSON Schema into a structural OpenAPI v3 schema (no $ref, no anyOf-null)."""
    if isinstance(node, list):
        return [_to_openapi(item, definitions) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = definitions[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _to_openapi(merged, definitions)
    variants = node.get("anyOf")
    if variants is not None:
        non_null = [v for v in variants if v.get("type") != "null"]
        if len(non_null) == 1 and len(non_null) < len(variants):
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            merged = {**_to_openapi(non_null[0], definitions), **rest, "nullable": True}
            return _to_openapi(merged, definitions)
    converted: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("title", "$defs", "additionalProperties") and not isinstance(value, dict | list):
            continue
        if key in ("title", "$defs"):
            continue
        if key == "properties":
            converted[key] = {name: _to_openapi(sub, definitions) for name, sub in value.items()}
        else:
            converted[key] = _to_openapi(value, definitions)
    if converted.get("default") is None and "default" in converted:
        del converted["default"]
    return converted


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, schema_generator=_StructuralSchema, mode="validation")
    return _to_openapi(raw, raw.get("$defs", {}))  # type: ignore[no-any-return]


def _status_schema() -> dict[str, Any]:
    schema = openapi_schema(api.ProjectorSetStatus)
    # Status is written only by the operator; keep old fields readable across upgrades.
    schema["x-kubernetes-preserve-unknown-fields"] = True
    return schema


def custom_resource_definition() -> dict[str, Any]:
    spec_schema = openapi_schema(api.ProjectorSetSpec)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{api.PLURAL}.{api.GROUP}"},
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": api.KIND,
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": api.SHORT_NAMES,
                "listKind": f"{api.KIND}List",
                "categories": ["all"],
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Version", "type": "string", "jsonPath": ".spec.version"},
                        {"name": "Active", "type": "string", "jsonPath": ".status.activeVersion"},
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {
                            "name": "Stage",
                            "type": "string",
                            "jsonPath": ".status.replay.stage",
                            "priority": 1,
                        },
                        {"name": "Lag", "type": "integer", "jsonPath": ".status.replay.lag", "priority": 1},
                        {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A Sequent application whose projector upgrades the operator rolls out.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": _status_schema(),
                            },
                        }
                    },
                }
            ],
        },
    }


def render() -> str:
    header = "# Generated by `make crds` (python -m projectorset.api.crd) from operator/projectorset/api/models.py.\n"
    return header + yaml.safe_dump(custom_resource_definition(), sort_keys=False, width=120)


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
