"""requiredProjectors, pass by pass (pure): another set's projectors this release's code registers.

Sequent's ActiveProjectorsEventPublisher refuses every write from code that lacks an active projector
or has another version of it (docs/sequent-protocol.md), so a set whose code needs another set's
projector at a new version may switch only once the database shows it active there; it never
replays, activates, deactivates or clears that projector itself.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError
from rollout_world import World, _WorldCluster, _WorldRegistry, manifest

from projectorset.api import Phase
from projectorset.controller.reconciler import Reconciler
from projectorset.domain.observation import (
    Activate,
    ClearReplaying,
    Deactivate,
    RegisterReplaying,
    RunStageJob,
    SwitchService,
)
from projectorset.domain.ownership import claim_of
from projectorset.domain.planning import plan_upgrade
from projectorset.domain.sequent import DatabaseState, ProjectorState

OWN = "AuditProjector"
OTHER = "AccountProjector"  # another set's


def spec(version: str, own: dict[str, int], required: dict[str, int], **overrides: Any) -> Any:
    return manifest(
        version,
        own,
        requiredProjectors=[{"name": n, "version": v} for n, v in required.items()],
        **overrides,
    )


def reason(world: World) -> str:
    return next(c.reason for c in world.status.conditions if c.type == "Progressing")


def serving_v1(own: dict[str, int], required: dict[str, int]) -> World:
    """v1 serves; the database shows its own and the other set's projectors active."""
    world = World(spec("v1", own, required)).serving_v1(own)
    world.deployments["v1"] = replace(world.deployments["v1"], required=dict(required))
    for name, version in required.items():
        world.projectors[name] = ProjectorState(name, version)
    return world


def step(world: World) -> Any:
    decision = world.step()
    world.finish_running_jobs()
    world.now += timedelta(seconds=5)
    return decision


def touched(world: World, name: str) -> list[object]:
    """Every database action any pass asked for that names ``name``."""
    found = []
    for decision in world.history:
        for action in decision.actions:
            match action:
                case RegisterReplaying(versions=versions) | Activate(versions=versions) if name in versions:
                    found.append(action)
                case Activate(deactivate=names) | Deactivate(names=names) | ClearReplaying(names=names) if (
                    name in names
                ):
                    found.append(action)
                case RunStageJob(projectors=names) if name in names:
                    found.append(action)
    return found


def test_a_set_whose_required_projector_changes_waits_without_a_replay_then_switches_when_the_owner_lands() -> None:
    world = serving_v1({OWN: 1}, {OTHER: 1})
    world.upgrade(spec("v2", {OWN: 1}, {OTHER: 2}))

    for _ in range(6):
        step(world)
    assert world.service_version == "v1"  # the old version keeps serving
    assert world.status.phase is Phase.ACTIVATING
    assert reason(world) == "WaitingForProjectors"
    assert "AccountProjector version 2 (the database shows active 1" in world.status.message
    assert "no ProjectorSet on this event store lists it" in world.status.message
    assert "version v1 keeps serving" in world.status.message
    assert not world.jobs  # no replay of anything
    assert world.history[-1].requeue_after == 2.0  # a bounded poll as the fallback
    assert not world.history[-1].await_activation  # not the 20 ms watch: that can last a whole replay
    # The owner's replay runs: still waiting, and this set never touches the projector.
    world.projectors[OTHER] = ProjectorState(OTHER, 1, None, 2)
    step(world)
    assert world.service_version == "v1"
    assert "active 1, replaying 2" in world.status.message
    # status.projectors (what `kubectl projectorset get` lists) shows what the switch waits on.
    assert [
        (p.name, p.plan, p.spec_version, p.active_version, p.replaying_version) for p in world.status.projectors
    ] == [
        (OWN, "Unchanged", 1, 1, None),
        (OTHER, "Required", 2, 1, 2),
    ]

    # The owner's golive commits: the very next pass switches.
    world.projectors[OTHER] = ProjectorState(OTHER, 2)
    decision = step(world)
    assert any(isinstance(a, SwitchService) for a in decision.actions)
    assert world.service_version == "v2"
    assert world.status.phase is Phase.ACTIVE
    assert touched(world, OTHER) == []
    assert world.projectors[OWN] == ProjectorState(OWN, 1)


def test_the_wait_says_which_set_owns_the_projector() -> None:
    world = serving_v1({OWN: 1}, {OTHER: 1})
    world.upgrade(spec("v2", {OWN: 1}, {OTHER: 2}))
    cluster = world.cluster
    world.cluster = lambda: replace(cluster(), projector_owners={OTHER: "shop/web"})  # type: ignore[method-assign]
    for _ in range(3):
        step(world)
    assert "AccountProjector version 2 (the database shows active 1; ProjectorSet shop/web owns it)" in (
        world.status.message
    )


def test_entering_the_wait_and_the_switch_tell_the_controller_to_wake_the_sets_requiring_ours() -> None:
    world = serving_v1({OWN: 1}, {OTHER: 1})
    world.upgrade(spec("v2", {OWN: 1}, {OTHER: 2}))
    decisions = [step(world) for _ in range(4)]
    # Entering the wait: this set's projectors are live (another set may be waiting for them).
    assert [d.store_changed for d in decisions] == [True, False, False, False]
    world.projectors[OTHER] = ProjectorState(OTHER, 2)
    assert step(world).store_changed  # the switch


def test_own_projectors_replay_and_go_live_then_the_switch_waits_for_the_required_one() -> None:
    world = serving_v1({OTHER: 1}, {OWN: 1})  # this time the set owns AccountProjector
    world.upgrade(spec("v2", {OTHER: 2}, {OWN: 2}))
    for _ in range(15):
        step(world)
        if reason(world) == "WaitingForProjectors":
            break
    # golive ran (this set's projector), and was not held by the required one.
    assert world.golive_runs == 1
    assert world.projectors[OTHER] == ProjectorState(OTHER, 2)
    assert world.service_version == "v1"
    assert touched(world, OWN) == []
    world.projectors[OWN] = ProjectorState(OWN, 2)
    step(world)
    assert world.service_version == "v2"
    assert world.status.phase is Phase.ACTIVE


def test_a_required_projector_already_active_does_not_hold_the_rollout() -> None:
    world = serving_v1({OTHER: 1}, {OWN: 1})
    world.upgrade(spec("v2", {OTHER: 2}, {OWN: 1}))
    trail = [reason(world) for _ in range(15) if step(world) and world.service_version != "v2"]
    assert world.service_version == "v2"
    assert "WaitingForProjectors" not in trail


def test_an_activating_required_projector_still_holds_the_switch() -> None:
    world = serving_v1({OWN: 1}, {OTHER: 1})
    world.upgrade(spec("v2", {OWN: 1}, {OTHER: 2}))
    world.projectors[OTHER] = ProjectorState(OTHER, 2, 2, None)
    for _ in range(4):
        step(world)
    assert world.service_version == "v1"
    assert "activating 2" in world.status.message


@pytest.mark.parametrize("annotated", [True, False], ids=["release-annotations", "legacy-deployments"])
def test_dropping_an_own_projector_deactivates_it_at_golive_and_never_a_required_one(annotated: bool) -> None:
    world = serving_v1({OTHER: 1, "TagProjector": 1}, {OWN: 1})
    if not annotated:  # Deployments made before the release annotation: every active projector is a suspect
        world.deployments["v1"] = replace(world.deployments["v1"], projectors=None)
    world.upgrade(spec("v2", {OTHER: 2}, {OWN: 1}))
    for _ in range(15):
        step(world)
    assert world.service_version == "v2"
    assert world.projectors["TagProjector"].active_version is None
    assert world.projectors[OWN] == ProjectorState(OWN, 1)
    assert touched(world, OWN) == []


def test_a_serving_version_whose_required_projector_moved_on_is_reported_out_of_sync() -> None:
    world = serving_v1({OWN: 1}, {OTHER: 1})
    world.status = world.status.model_copy(update={"target_version": "v1"})
    world.projectors[OTHER] = ProjectorState(OTHER, 2)  # the owner went live with version 2
    step(world)
    assert world.status.phase is Phase.ACTIVE
    assert reason(world) == "ProjectorsOutOfSync"
    assert "AccountProjector (required): the database shows active 2, release 1" in world.status.message
    assert touched(world, OTHER) == []


def test_a_projector_may_not_be_both_owned_and_required() -> None:
    with pytest.raises(ValidationError, match="requiredProjectors: AccountProjector also in projectors"):
        spec("v1", {OTHER: 1}, {OTHER: 1})


def test_the_plan_never_removes_a_required_projector() -> None:
    database = DatabaseState(projectors={OWN: ProjectorState(OWN, 1), OTHER: ProjectorState(OTHER, 1, None, 2)})
    plan = plan_upgrade({OWN: 1}, database, owned=None, required={OTHER})
    assert plan.to_deactivate == []
    assert not plan.issues  # the owner's replay is none of this plan's business
    assert not plan.needs_replay


# ---- through the controller: the owner's pass wakes the sets that require its projectors ----------------


def test_the_owners_switch_wakes_the_sets_requiring_its_projectors_once_and_names_the_owner_to_them() -> None:
    world = World(manifest("v1", {OTHER: 1})).serving_v1({OTHER: 1})
    woken: list[tuple[str, str]] = []
    world.reconciler = Reconciler(
        _WorldCluster(world), _WorldRegistry(world), clock=lambda: world.now, wake=lambda ns, n: woken.append((ns, n))
    )
    # Another set on the same event store (same Secret and schema) whose code needs AccountProjector 2.
    waiting = {
        "metadata": {"name": "worker", "namespace": "default", "creationTimestamp": "2026-01-02T00:00:00Z"},
        "spec": {**world.body()["spec"], "projectors": [{"name": OWN, "version": 1}]},
    }
    waiting["spec"]["requiredProjectors"] = [{"name": OTHER, "version": 2}]
    unrelated = {
        "metadata": {"name": "reports", "namespace": "default", "creationTimestamp": "2026-01-03T00:00:00Z"},
        "spec": {
            **waiting["spec"],
            "projectors": [{"name": "ReportProjector", "version": 1}],
            "requiredProjectors": [],
        },
    }
    world.reconciler.observe_set(waiting)
    world.reconciler.observe_set(unrelated)
    world.upgrade(manifest("v2", {OTHER: 2}))
    for _ in range(20):
        world.reconcile()
        if world.service_version == "v2":
            break
        assert woken == []  # nothing this set did yet concerns the waiting set
        world.finish_running_jobs()
        world.now += timedelta(seconds=5)
    assert world.service_version == "v2"
    assert woken == [("default", "worker")]  # in the pass that saw golive land, not at worker's next poll
    world.reconcile()
    assert woken == [("default", "worker")]  # once

    # And a set that requires this one's projectors is told who owns them.
    claim = claim_of(waiting)
    assert claim is not None
    assert world.reconciler.index.owners(claim, [OTHER, "NobodysProjector"]) == {OTHER: "default/blog"}
