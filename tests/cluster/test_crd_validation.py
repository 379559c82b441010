"""The ProjectorSet CRD on the real API server: discovery, printer columns, and bad manifests
rejected by schema and CEL rules with the offending field in the message."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from testbed.cluster import LocalCluster
from testbed.manifests import sample_projectorset
from testbed.workloads import wait_until

NAMESPACE = "crd-validation"


@pytest.fixture(scope="module")
def crd_installed(local_cluster: LocalCluster, projectorset_crd: None) -> None:
    local_cluster.create_namespace(NAMESPACE)


def manifest(**spec_changes: Any) -> dict[str, Any]:
    body = sample_projectorset("v1", namespace=NAMESPACE)
    body["spec"].update(spec_changes)
    return body


def apply(kubectl: Callable[..., Any], body: dict[str, Any]) -> Any:
    return kubectl("apply", "-f", "-", input=yaml.safe_dump(body))


def test_crd_is_discoverable_with_short_name(crd_installed: None, kubectl: Callable[..., Any]) -> None:
    resources = kubectl("api-resources", "--api-group=projectorset.io", "-o", "name", check=True).stdout
    assert "projectorsets.projectorset.io" in resources
    # The API server publishes the CRD's OpenAPI a few seconds after it is Established.
    explained = wait_until(
        "kubectl explain to know the CRD",
        lambda: kubectl("explain", "projectorset.spec.replay.catchup").stdout,
        timeout=60,
    )
    assert "maxLag" in explained


def test_valid_manifest_is_accepted_with_defaults_and_columns(crd_installed: None, kubectl: Callable[..., Any]) -> None:
    body = manifest()
    body["metadata"]["name"] = "valid"
    del body["spec"]["strategy"]
    result = apply(kubectl, body)
    assert result.returncode == 0, result.stderr
    stored = json.loads(kubectl("get", "pjs", "valid", "-n", NAMESPACE, "-o", "json", check=True).stdout)
    assert stored["spec"]["strategy"] == {
        "promotion": "Automatic",
        "scaleDownDelaySeconds": 30,
        "revisionHistoryLimit": 2,
    }
    assert stored["spec"]["database"]["eventStoreSchema"] == "sequent_schema"
    table = kubectl("get", "projectorsets", "-n", NAMESPACE, check=True).stdout.splitlines()[0].split()
    assert table == ["NAME", "VERSION", "ACTIVE", "PHASE", "AGE"]


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("version-with-space", {"version": "v 2"}, "spec.version"),
    ("no-projectors", {"projectors": []}, "spec.projectors"),
    (
        "duplicate-projector",
        {"projectors": [{"name": "AccountProjector", "version": 1}, {"name": "AccountProjector", "version": 2}]},
        "spec.projectors[1]",
    ),
    (
        "projector-version-zero",
        {"projectors": [{"name": "AccountProjector", "version": 0}]},
        "spec.projectors[0].version",
    ),
    ("projector-not-a-class", {"projectors": [{"name": "account_projector", "version": 1}]}, "spec.projectors[0].name"),
    ("no-containers", {"template": {"spec": {"containers": []}}}, "spec.template.spec.containers"),
    (
        "reserved-label",
        {
            "template": {
                "metadata": {"labels": {"projectorset.io/version": "x"}},
                "spec": {"containers": [{"name": "a"}]},
            }
        },
        "must not set projectorset.io/name or projectorset.io/version",
    ),
    (
        "same-schemas",
        {"database": {"secretRef": {"name": "db"}, "viewSchema": "views", "replaySchema": "views"}},
        "viewSchema, replaySchema and archiveSchema must be three different schemas",
    ),
    (
        "owned-and-required",
        {"requiredProjectors": [{"name": "AccountProjector", "version": 2}]},
        "a projector is listed in both projectors and requiredProjectors",
    ),
    ("negative-replicas", {"replicas": -1}, "spec.replicas"),
    ("unknown-promotion", {"strategy": {"promotion": "Sometimes"}}, "spec.strategy.promotion"),
    ("replay-container-missing", {"replay": {"container": "nope"}}, "spec.replay.container"),
    ("no-secret-name", {"database": {"secretRef": {"key": "uri"}}}, "spec.database.secretRef.name"),
    (
        "bad-schema-name",
        {"database": {"secretRef": {"name": "db"}, "viewSchema": "Views!"}},
        "spec.database.viewSchema",
    ),
    ("zero-catchup-rounds", {"replay": {"catchup": {"maxRounds": 0}}}, "spec.replay.catchup.maxRounds"),
    ("unknown-field", {"replicaz": 3}, "replicaz"),
    (
        "duplicate-check",
        {"replay": {"checks": [{"name": "c", "query": "SELECT true"}, {"name": "c", "query": "SELECT 1"}]}},
        "spec.replay.checks[1]",
    ),
    (
        "bad-check-name",
        {"replay": {"checks": [{"name": "Rows Match", "query": "SELECT 1"}]}},
        "spec.replay.checks[0].name",
    ),
    (
        "check-timeout-zero",
        {"replay": {"checks": [{"name": "c", "query": "SELECT 1", "timeoutSeconds": 0}]}},
        "spec.replay.checks[0].timeoutSeconds",
    ),
]


@pytest.mark.parametrize(("name", "changes", "field"), INVALID, ids=[case[0] for case in INVALID])
def test_invalid_manifest_is_rejected_naming_the_field(
    crd_installed: None, kubectl: Callable[..., Any], name: str, changes: dict[str, Any], field: str
) -> None:
    body = manifest(**changes)
    body["metadata"]["name"] = name
    result = apply(kubectl, body)
    assert result.returncode != 0, f"{name} was accepted"
    assert field in result.stderr, result.stderr
    missing = kubectl("get", "pjs", name, "-n", NAMESPACE)
    assert missing.returncode != 0


def test_event_store_schema_is_immutable(crd_installed: None, kubectl: Callable[..., Any]) -> None:
    body = manifest()
    body["metadata"]["name"] = "immutable"
    assert apply(kubectl, body).returncode == 0
    changed = copy.deepcopy(body)
    changed["spec"]["database"]["eventStoreSchema"] = "other_schema"
    result = apply(kubectl, changed)
    assert result.returncode != 0
    assert "eventStoreSchema is immutable" in result.stderr
