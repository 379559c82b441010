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


def test_kubectl_explain_describes_every_replay_field(crd_installed: None, kubectl: Callable[..., Any]) -> None:
    explained = wait_until(
        "kubectl explain to know the CRD",
        lambda: kubectl("explain", "projectorset.spec.replay").stdout,
        timeout=60,
    )
    print(explained)  # the closing note of issue 18 quotes it
    for field in ("catchup", "checks", "commands", "container", "groupSize", "processes", "stageRetries"):
        assert f"\n  {field}\t" in explained, field
    # Fields that had no description before: each shows its own now.
    assert "When the replay has caught up enough to go live." in explained
    assert "The command of each stage" in explained
    commands = kubectl("explain", "projectorset.spec.replay.commands.prepare", check=True).stdout
    assert "Default: bundle exec rake sequent:projectors:replay:prepare[{projectors}]" in commands


def _condition(**changes: Any) -> dict[str, Any]:
    condition = {
        "type": "Ready",
        "status": "True",
        "reason": "Active",
        "message": "version v1 serves",
        "lastTransitionTime": "2026-11-29T12:00:00Z",
        "observedGeneration": 1,
    }
    condition.update(changes)
    return {key: value for key, value in condition.items() if value is not None}


def _patch_status(kubectl: Callable[..., Any], name: str, status: dict[str, Any]) -> Any:
    return kubectl(
        "patch",
        "pjs",
        name,
        "-n",
        NAMESPACE,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )


def test_conditions_are_validated_like_metav1_conditions(crd_installed: None, kubectl: Callable[..., Any]) -> None:
    body = manifest()
    body["metadata"]["name"] = "conditions"
    assert apply(kubectl, body).returncode == 0
    accepted = _patch_status(kubectl, "conditions", {"conditions": [_condition(), _condition(type="Progressing")]})
    assert accepted.returncode == 0, accepted.stderr
    stored = json.loads(kubectl("get", "pjs", "conditions", "-n", NAMESPACE, "-o", "json", check=True).stdout)
    assert [c["lastTransitionTime"] for c in stored["status"]["conditions"]] == ["2026-11-29T12:00:00Z"] * 2
    refused = {
        "no lastTransitionTime": ([_condition(lastTransitionTime=None)], "lastTransitionTime: Required value"),
        "not a time": ([_condition(lastTransitionTime="yesterday")], "lastTransitionTime"),
        "status not a word of three": ([_condition(status="Yes")], "status.conditions[0].status"),
        "type twice": ([_condition(), _condition(reason="Deploying")], "Duplicate value"),
        "reason not a word": ([_condition(reason="two words")], "status.conditions[0].reason"),
    }
    for what, (conditions, expected) in refused.items():
        result = _patch_status(kubectl, "conditions", {"conditions": conditions})
        assert result.returncode != 0, f"{what} was accepted"
        assert expected in result.stderr, (what, result.stderr)
