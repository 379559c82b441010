"""The sample application's web service against a real PostgreSQL."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from sampleapp_tests.helpers import projector_state_rows, run_migrate

from sampleapp.store import aggregate_id


def set_state(database_url: str, name: str, active=None, activating=None, replaying=None) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO sequent_schema.projector_states (name, active_version, activating_version, "
            "replaying_version) VALUES (%s, %s, %s, %s) ON CONFLICT (name) DO UPDATE SET "
            "active_version = excluded.active_version, activating_version = excluded.activating_version, "
            "replaying_version = excluded.replaying_version",
            [name, active, activating, replaying],
        )


def event_count(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM sequent_schema.events").fetchone()
    assert row is not None
    return int(row[0])


def test_deposits_are_stored_as_events_and_projected(database_url: str, app) -> None:
    run_migrate(database_url, "v1", activate=True)
    with app("v1") as client:
        first = client.deposit("alice", 30)
        second = client.deposit("alice", 12)
        client.deposit("bob", 5)
        assert first.status == 201 and second.status == 201
        assert first.body["aggregate_id"] == str(aggregate_id("alice"))
        assert (first.body["sequence_number"], second.body["sequence_number"]) == (1, 2)
        assert client.account("alice").body == {"account_id": "alice", "balance": 42}
        assert client.account("nobody").status == 404
        assert client.request("GET", "/version").body == {
            "release": "v1",
            "projectors": {"AccountProjector": 1, "AuditProjector": 1},
        }
        assert client.request("GET", "/healthz").status == 200
        assert client.deposit("alice", 0).status == 400
        assert client.deposit("bad%21id", 1).status == 400
    with psycopg.connect(database_url) as conn:
        audit = conn.execute(
            "SELECT account_id, sequence_number, amount FROM view_schema.account_audit_log ORDER BY 1, 2"
        ).fetchall()
    assert audit == [("alice", 1, 30), ("alice", 2, 12), ("bob", 1, 5)]


def test_v2_projection_has_its_own_shape(database_url: str, app) -> None:
    run_migrate(database_url, "v2", activate=True)
    with app("v2") as client:
        client.deposit("carol", 7)
        client.deposit("carol", 8)
        body = client.account("carol").body
    assert (body["balance"], body["deposit_count"], body["last_sequence_number"]) == (15, 2, 2)


def test_concurrent_deposits_to_one_account_lose_nothing(database_url: str, app) -> None:
    run_migrate(database_url, "v1", activate=True)
    with app("v1") as client, ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda n: client.deposit("hot", n), range(1, 61)))
        assert [r.status for r in responses] == [201] * 60
        assert sorted(r.body["sequence_number"] for r in responses) == list(range(1, 61))
        assert client.account("hot").body["balance"] == sum(range(1, 61))


def test_gate_with_empty_projector_states_stores_events_but_runs_no_projector(database_url: str, app) -> None:
    # Sequent's ActiveProjectorsEventPublisher: without a row a projector is not active.
    run_migrate(database_url, "v1", activate=False)
    assert projector_state_rows(database_url) == {}
    with app("v1") as client:
        response = client.deposit("dave", 3)
        assert (response.status, response.body["projected_by"]) == (201, [])
        assert client.account("dave").status == 404
    assert event_count(database_url) == 1


def test_only_replaying_projector_is_skipped_and_missing_row_too(database_url: str, app) -> None:
    run_migrate(database_url, "v1", activate=False)
    set_state(database_url, "AccountProjector", replaying=2)
    with app("v1") as client:
        response = client.deposit("erin", 4)
        assert response.status == 201
        assert response.body["projected_by"] == []
        assert client.account("erin").status == 404
    assert event_count(database_url) == 1


@pytest.mark.parametrize(
    ("states", "error"),
    [
        ({"SomeOtherProjector": (1, None, None)}, "UnknownActiveProjectorError"),
        ({"SomeOtherProjector": (None, 1, None)}, "UnknownActiveProjectorError"),
        ({"AccountProjector": (1, 2, None)}, "ProjectorIsActivatingError"),
        ({"AccountProjector": (2, None, None)}, "DifferentProjectorVersionIsActiveError"),
    ],
)
def test_publisher_rules_refuse_with_503_and_write_nothing(database_url: str, app, states, error) -> None:
    run_migrate(database_url, "v1", activate=True)
    for name, (active, activating, replaying) in states.items():
        set_state(database_url, name, active, activating, replaying)
    with app("v1") as client:
        response = client.deposit("frank", 10)
    assert response.status == 503
    assert response.body["error"] == error
    assert response.body["message"]
    assert event_count(database_url) == 0


def test_missing_tables_answer_503_not_500(database_url: str, app) -> None:
    with app("v1") as client:
        response = client.account("gina")
    assert response.status == 503
    assert response.body["error"] == "SchemaMissing"
