"""Generate the ProjectorSet CustomResourceDefinition from the pydantic models.

``python -m projectorset.api.crd > crds/projectorsets.yaml`` writes the file that
``kubectl apply`` installs; ``--helm-template`` writes the same CRD as the Helm chart's
template (``make crds`` writes both; a test fails when either is stale). The chart renders
the CRD from templates/, not crds/, so that ``helm upgrade`` applies new fields.
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
                    "subresources": {
                        "status": {},
                        # kubectl scale and a HorizontalPodAutoscaler scale the serving version, as for a
                        # Deployment (Argo Rollouts does the same).
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
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
                                "apiVersion": {
                                    "type": "string",
                                    "description": f"{api.GROUP}/{api.VERSION}: the group and version of the API.",
                                },
                                "kind": {"type": "string", "description": f"{api.KIND}: the kind of object."},
                                # No description: the API server allows none here (kubectl explain shows ObjectMeta's).
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


_GENERATED = "Generated by `make crds` (python -m projectorset.api.crd{flag}) from operator/projectorset/api/models.py."


def _dump(document: dict[str, Any]) -> str:
    return yaml.safe_dump(document, sort_keys=False, width=120)


def render() -> str:
    return f"# {_GENERATED.format(flag='')}\n" + _dump(custom_resource_definition())


def render_helm_template(definition: dict[str, Any] | None = None) -> str:
    """The CRD (by default the models') as a template of the chart: behind ``crds.install``, with
    the chart's labels, the keep policy and the check that the release may own it (``_helpers.tpl``)."""
    crd = definition or custom_resource_definition()
    name = crd["metadata"]["name"]
    spec = _dump({"spec": crd["spec"]})
    if "{{" in spec or "}}" in spec:
        # Helm would read it as template code; no field description needs braces.
        raise ValueError("the CRD contains '{{' or '}}', which Helm would execute: reword the description")
    context = f'(dict "root" . "name" "{name}")'
    return (
        f"{{{{/* {_GENERATED.format(flag=' --helm-template')} */}}}}\n"
        + "{{- if .Values.crds.install }}\n"
        + f'{{{{- include "projectorset-operator.crdOwnership" {context} }}}}\n'
        + f"apiVersion: {crd['apiVersion']}\n"
        + f"kind: {crd['kind']}\n"
        + "metadata:\n"
        + f"  name: {name}\n"
        + "  labels:\n"
        + '    {{- include "projectorset-operator.labels" . | nindent 4 }}\n'
        + '  {{- include "projectorset-operator.crdAnnotations" . | nindent 2 }}\n'
        + spec
        + "{{- end }}\n"
    )


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args not in ([], ["--helm-template"]):
        sys.exit("usage: python -m projectorset.api.crd [--helm-template]")
    sys.stdout.write(render_helm_template() if args else render())


if __name__ == "__main__":
    main()
