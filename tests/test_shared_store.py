"""ProjectorSets sharing one event store: the cross-set index and the replay queue, with a real
PostgreSQL and the sample application's real stages (the cluster is the in-process fake)."""

from __future__ import annotations

import copy
from typing import Any

import psycopg
import pytest

from projectorset.domain.ownership import ProjectorIndex, SetClaim, claim_of
from projectorset.domain.planning import plan_upgrade
from projectorset.domain.sequent import DatabaseState, ProjectorState
from support.conditions import condition
from support.harness import Harness
from testbed.manifests import sample_projectorset
from testbed.sequent_schema import projector_rows


def body(name: str, created: str, version: str = "v1") -> dict[str, Any]:
    manifest = sample_projectorset(version, name=name, namespace="default")
    manifest["metadata"].update(uid=f"uid-{name}", generation=1, creationTimestamp=created)
    return manifest


@pytest.fixture
def harness(harness: Harness) -> Harness:
    """The suite's harness, its ProjectorSet created first: the later sets on its store wait."""
    harness.body["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    return harness


def test_a_later_set_listing_the_same_projectors_on_one_store_does_nothing_and_says_whose_they_are(
    harness: Harness,
) -> None:
    harness.run_until(harness.phase_is("Active"))
    rows_before = harness.projector_rows()
    deployments_before = set(harness.cluster.deployments)

    copy_of = body("accounts-copy", "2026-02-01T00:00:00Z", "v2")
    result = harness.reconciler.reconcile(copy.deepcopy(copy_of))

    assert result.decision is None
    status = harness.cluster.status or {}
    held = condition(status, "Progressing")
    assert (held["status"], held["reason"]) == ("False", "ProjectorsOwnedByOther")
    assert "default/accounts " in held["message"] and "AccountProjector" in held["message"]
    assert set(harness.cluster.deployments) == deployments_before  # nothing created for the copy
    assert harness.projector_rows() == rows_before
    assert [e.reason for e in harness.cluster.events].count("ProjectorsOwnedByOther") == 1
    copy_of["status"] = status
    harness.reconciler.reconcile(copy.deepcopy(copy_of))
    assert [e.reason for e in harness.cluster.events].count("ProjectorsOwnedByOther") == 1  # once, not per pass


def test_a_replay_of_another_sets_projectors_is_waited_for_then_the_rollout_starts_by_itself(
    harness: Harness,
) -> None:
    harness.run_until(harness.phase_is("Active"))
    with psycopg.connect(harness.database_url) as conn:
        # Another application on this event store is replaying its own projector.
        conn.execute(
            "INSERT INTO sequent_schema.projector_states (name, replaying_version) VALUES ('InvoiceProjector', 1)"
        )
        replay_id = conn.execute(
            "INSERT INTO sequent_schema.replay_states (state, projectors) "
            "VALUES ('replaying', ARRAY['InvoiceProjector']) RETURNING id"
        ).fetchone()[0]  # type: ignore[index]
    harness.reconciler.observe_set(body("invoices", "2026-03-01T00:00:00Z") | {"spec": invoices_spec()})

    harness.set_spec("v2")
    harness.reconcile()
    held = condition(harness.status, "Progressing")
    assert (held["status"], held["reason"]) == ("True", "ReplayQueued")
    assert "ProjectorSet default/invoices" in held["message"]
    assert harness.cluster.created_jobs == []
    assert projector_rows(harness.database_url)["InvoiceProjector"] == (None, None, 1)  # never touched

    with psycopg.connect(harness.database_url) as conn:
        conn.execute("UPDATE sequent_schema.replay_states SET state = 'live' WHERE id = %s", (replay_id,))
        conn.execute(
            "UPDATE sequent_schema.projector_states SET active_version = 1, replaying_version = NULL "
            "WHERE name = 'InvoiceProjector'"
        )
    harness.run_until(lambda: harness.status.get("phase") == "Active" and harness.status.get("activeVersion") == "v2")
    stages = [name.split("-a1-")[-1] for name in harness.cluster.created_jobs]
    assert stages[-4:] == ["prepare", "replay", "optimize", "golive"]
    # The other application's projector: not in this set's releases, so never deactivated.
    assert projector_rows(harness.database_url)["InvoiceProjector"] == (1, None, None)


def invoices_spec() -> dict[str, Any]:
    spec = sample_projectorset("v1")["spec"]
    spec["projectors"] = [{"name": "InvoiceProjector", "version": 1}]
    return dict(spec)


# ---- the index alone ---------------------------------------------------------------------------------


def claim(owner: str, created: str, projectors: set[str], store: str | None = None, source: str = "s") -> SetClaim:
    return SetClaim(owner, created, source, frozenset(projectors), store)


def test_the_earliest_set_owns_a_projector_on_one_store() -> None:
    index = ProjectorIndex()
    first = claim("ns/a", "2026-01-01T00:00:00Z", {"P", "Q"}, "store-1")
    later = claim("ns/b", "2026-01-02T00:00:00Z", {"Q", "R"}, "store-1")
    elsewhere = claim("ns/c", "2026-01-01T00:00:00Z", {"Q"}, "store-2")
    for each in (later, first, elsewhere):
        index.record(each)
    assert index.earlier_overlap(later) == (first, frozenset({"Q"}))
    assert index.earlier_overlap(first) is None
    assert index.earlier_overlap(elsewhere) is None
    index.forget("ns/a")
    assert index.earlier_overlap(later) is None


def test_before_their_first_pass_sets_on_one_secret_and_schema_share_a_store() -> None:
    index = ProjectorIndex()
    first = claim_of(body("a", "2026-01-01T00:00:00Z"))
    later = claim_of(body("b", "2026-01-02T00:00:00Z"))
    assert first is not None and later is not None
    index.record(first)
    assert index.earlier_overlap(later) is not None
    # The watch's view of a set keeps the store its pass learnt.
    index.record(SetClaim(first.owner, first.created, first.source, first.projectors, "store-1"))
    index.record(first)
    assert (
        index.earlier_overlap(SetClaim(later.owner, later.created, later.source, later.projectors, "store-2")) is None
    )


def test_only_projectors_of_the_sets_own_releases_are_removed() -> None:
    database = DatabaseState(
        projectors={
            "A": ProjectorState("A", active_version=1),
            "B": ProjectorState("B", active_version=1),  # this set's, dropped by the new release
            "C": ProjectorState("C", active_version=3),  # another application's
            "D": ProjectorState("D", replaying_version=2),  # another application's replay
        }
    )
    plan = plan_upgrade({"A": 1}, database, owned={"A", "B"})
    assert plan.to_deactivate == ["B"]
    assert not plan.issues
    # Without knowing what the set owns (Deployments from before the release annotation): as before.
    assert plan_upgrade({"A": 1}, database).to_deactivate == ["B", "C"]
