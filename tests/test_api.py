"""The ProjectorSet models: defaults, and invalid specs rejected with the field named.

The same rules are in the CRD (schema and CEL) and are checked against a real API server in
tests/cluster; these tests cover the operator's own parsing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from projectorset.api import ProjectorSetSpec, ProjectorSetStatus, parse_time
from projectorset.domain.cluster import Owner
from projectorset.domain.resources import build_deployment, build_stage_job, job_name, stage_command
from testbed.manifests import sample_projectorset


def spec_with(**changes: Any) -> dict[str, Any]:
    spec = sample_projectorset("v1")["spec"]
    spec.update(changes)
    return spec


def test_defaults_are_sequents() -> None:
    spec = ProjectorSetSpec.model_validate(
        {
            "version": "1.0.0",
            "service": {"name": "blog"},
            "database": {"secretRef": {"name": "blog-db"}},
            "projectors": [{"name": "Blog::PostProjector", "version": 1}],
            "template": {"spec": {"containers": [{"name": "web"}]}},
        }
    )
    assert spec.database.event_store_schema == "sequent_schema"
    assert spec.database.secret_ref.key == "uri"
    assert spec.replay.commands.prepare == ["bundle", "exec", "rake", "sequent:projectors:replay:prepare[{projectors}]"]
    # Sequent's group size counts events (its default 250,000); a large replay takes hours.
    assert stage_command(spec, "replay", ["A"]) == [
        "bundle",
        "exec",
        "rake",
        "sequent:projectors:replay:replay[250000,1]",
    ]
    assert spec.replay.stage_timeout_seconds == 86_400
    assert spec.replay.commands.migrate == ["bundle", "exec", "rake", "sequent:db:migrate"]
    assert stage_command(spec, "prepare", ["A", "B"])[-1] == "sequent:projectors:replay:prepare[A,B]"
    assert spec.strategy.promotion == "Automatic"


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"version": "v 2"}, "version", "pattern"),
        ({"projectors": []}, "projectors", "at least 1"),
        ({"projectors": [{"name": "P", "version": 1}, {"name": "P", "version": 2}]}, "projectors", "listed twice"),
        ({"projectors": [{"name": "lowercase", "version": 1}]}, "projectors.0.name", "pattern"),
        ({"projectors": [{"name": "P", "version": 0}]}, "projectors.0.version", "greater than or equal to 1"),
        ({"template": {"spec": {"containers": []}}}, "template", "at least one container"),
        (
            {"template": {"metadata": {"labels": {"projectorset.io/version": "x"}}, "spec": {"containers": [{}]}}},
            "template",
            "must not set projectorset.io/version",
        ),
        ({"database": {"secretRef": {"name": "db"}, "viewSchema": "x", "replaySchema": "x"}}, "database", "different"),
        ({"replicas": -1}, "replicas", "greater than or equal to 0"),
        ({"strategy": {"promotion": "Sometimes"}}, "strategy.promotion", "Automatic"),
        ({"replay": {"container": "nope"}}, "", "replay.container 'nope'"),
        ({"unknownField": 1}, "unknownField", "Extra inputs"),
        (
            {"replay": {"checks": [{"name": "c", "query": "SELECT true"}, {"name": "c", "query": "SELECT 1"}]}},
            "replay.checks",
            "c listed twice",
        ),
        ({"replay": {"checks": [{"name": "Rows Match", "query": "SELECT true"}]}}, "replay.checks.0.name", "pattern"),
        ({"replay": {"checks": [{"name": "c", "query": ""}]}}, "replay.checks.0.query", "at least 1"),
        (
            {"replay": {"checks": [{"name": "c", "query": "SELECT true", "timeoutSeconds": 601}]}},
            "replay.checks.0.timeoutSeconds",
            "less than or equal to 600",
        ),
    ],
)
def test_invalid_specs_name_the_field(changes: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(ValidationError) as raised:
        ProjectorSetSpec.model_validate(spec_with(**changes))
    errors = raised.value.errors()
    locations = [".".join(str(p) for p in error["loc"]) for error in errors]
    assert any(location.startswith(field) for location in locations), locations
    assert words in str(raised.value)


def test_built_objects_carry_version_labels_owner_and_bounded_names() -> None:
    spec = ProjectorSetSpec.model_validate(sample_projectorset("v2")["spec"])
    owner = Owner("accounts", "shop", "uid-7")
    deployment = build_deployment(owner, spec, "v2")
    assert deployment["metadata"]["name"] == "accounts-v2"
    assert deployment["spec"]["selector"]["matchLabels"] == {
        "projectorset.io/name": "accounts",
        "projectorset.io/version": "v2",
    }
    assert deployment["spec"]["template"]["metadata"]["labels"]["app"] == "accounts"
    assert deployment["metadata"]["ownerReferences"][0]["uid"] == "uid-7"

    job = build_stage_job(owner, spec, "v2", 1, "prepare", 0, ["AccountProjector"])
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][-1] == "sequent:projectors:replay:prepare[AccountProjector]"
    assert "readinessProbe" not in container and "ports" not in container
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    # Sequent marks the replay failed when prepare fails: never retried in place, unlike golive.
    assert job["spec"]["backoffLimit"] == 0
    golive = build_stage_job(owner, spec, "v2", 1, "golive", 0, ["AccountProjector"])
    assert golive["spec"]["backoffLimit"] == spec.replay.stage_retries
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"

    long_owner = Owner("a" * 60, "shop", "uid")
    name = job_name(long_owner, "1.2.3-rc.1", 3, "catchup", 12)
    assert len(name) <= 63 and name == job_name(long_owner, "1.2.3-rc.1", 3, "catchup", 12)


def test_status_times_are_aware_datetimes_written_as_rfc3339_utc() -> None:
    moment = datetime(2026, 11, 29, 13, 0, 5, 123_456, tzinfo=timezone(timedelta(hours=1)))
    status = ProjectorSetStatus(switched_at=moment)
    # Kept in UTC to the second, as metav1.Time: what is read back equals what was written.
    assert status.switched_at == datetime(2026, 11, 29, 12, 0, 5, tzinfo=UTC)
    written = status.model_dump(by_alias=True, mode="json")
    assert written["switchedAt"] == "2026-11-29T12:00:05Z"
    assert ProjectorSetStatus.model_validate(written) == status


def test_a_status_time_without_a_zone_is_refused_naming_the_field() -> None:
    with pytest.raises(ValidationError) as raised:
        ProjectorSetStatus.model_validate({"rolloutStartedAt": "2026-11-29T12:00:05"})
    assert [error["loc"] for error in raised.value.errors()] == [("rolloutStartedAt",)]


def test_times_of_kubernetes_objects_are_read_in_utc() -> None:
    """Job conditions and Events, read by the rollout and the plugin: one reader for both."""
    expected = datetime(2026, 11, 29, 12, 0, 5, tzinfo=UTC)
    assert parse_time("2026-11-29T12:00:05Z") == expected
    assert parse_time("2026-11-29T13:00:05+01:00") == expected
    assert parse_time("2026-11-29T12:00:05") == expected
    assert parse_time(expected) == expected
    assert parse_time("yesterday") is None
    assert parse_time(None) is None
