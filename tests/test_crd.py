"""The CRD in crds/, and the Helm chart's template of it, are generated from the pydantic models
and must not drift from them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from projectorset.api import crd

REPO = Path(__file__).resolve().parent.parent
CRD_FILE = REPO / "crds" / "projectorsets.yaml"
CHART_TEMPLATE = REPO / "charts" / "projectorset-operator" / "templates" / "crd-projectorsets.yaml"


def test_crd_file_matches_the_models() -> None:
    assert CRD_FILE.read_text() == crd.render(), "crds/ is stale: run `make crds`"


def test_chart_template_matches_the_models() -> None:
    # tests/test_chart.py renders it with helm and compares the result with crds/.
    assert CHART_TEMPLATE.read_text() == crd.render_helm_template(), f"{CHART_TEMPLATE.name} is stale: run `make crds`"


def test_a_description_helm_would_execute_is_refused() -> None:
    definition = crd.custom_resource_definition()
    definition["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["description"] = "see {{ .Values }}"
    with pytest.raises(ValueError, match="which Helm would execute"):
        crd.render_helm_template(definition)


def test_schema_is_structural() -> None:
    """No $ref, anyOf or additionalProperties:false, which the API server rejects in a CRD."""
    schema = yaml.safe_load(CRD_FILE.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]

    def walk(node: object, path: str) -> None:
        if isinstance(node, dict):
            for bad in ("$ref", "anyOf", "oneOf", "allOf", "title", "$defs"):
                assert bad not in node, f"{bad} at {path}"
            assert node.get("additionalProperties") is not False, path
            for key, value in node.items():
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{path}[{index}]")

    walk(schema, "openAPIV3Schema")


def test_printer_columns_show_version_active_phase_and_age() -> None:
    columns = yaml.safe_load(CRD_FILE.read_text())["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [c["name"] for c in columns if not c.get("priority")] == ["Version", "Active", "Phase", "Age"]


def _schema() -> dict[str, Any]:
    return yaml.safe_load(CRD_FILE.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


def test_every_property_has_a_description() -> None:
    """kubectl explain shows each field's description: none may be empty."""
    missing: list[str] = []

    def walk(node: dict[str, Any], path: str) -> None:
        for name, child in (node.get("properties") or {}).items():
            # The API server forbids anything but the type on the object's own metadata.
            if path == "" and name == "metadata":
                continue
            if not str(child.get("description") or "").strip():
                missing.append(f"{path}.{name}")
            walk(child, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")

    schema = _schema()
    walk(schema, "")
    assert not missing, f"properties without a description: {', '.join(missing)}"
    # The walk reached both halves of the resource.
    assert "replay" in schema["properties"]["spec"]["properties"]
    assert "conditions" in schema["properties"]["status"]["properties"]


def test_conditions_are_shaped_like_metav1_condition() -> None:
    conditions = _schema()["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    item = conditions["items"]
    assert set(item["required"]) == {"type", "status", "reason", "message", "lastTransitionTime"}
    assert item["properties"]["lastTransitionTime"]["format"] == "date-time"
    assert item["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert item["properties"]["observedGeneration"]["type"] == "integer"


def test_status_times_are_date_times() -> None:
    status = _schema()["properties"]["status"]["properties"]
    for name in ("rolloutStartedAt", "activatedAt", "switchedAt"):
        assert status[name]["format"] == "date-time", name
    assert status["checks"]["items"]["properties"]["checkedAt"]["format"] == "date-time"


def test_scale_subresource_reads_the_serving_versions_pods() -> None:
    version = yaml.safe_load(CRD_FILE.read_text())["spec"]["versions"][0]
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert status["replicas"]["type"] == "integer"
    assert status["selector"]["type"] == "string"
