"""The pod template is part of the release (issue 20, item 1).

A real application's replay failed on a missing environment variable; the spec was fixed with the
same version and retried. The stage Jobs ran the fixed template and the replay succeeded, but the
version's Deployment kept its first template, went live with it and answered 500 to writes.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from rollout_world import World, manifest

from projectorset.api import Phase
from projectorset.domain.observation import EnsureDeployment, RunStageJob
from projectorset.domain.resources import template_hash
from projectorset.domain.sequent import ProjectorState

V1 = {"PostProjector": 1}
V2 = {"PostProjector": 2}
BROKEN = {"spec": {"containers": [{"name": "app", "image": "blog:v2"}]}}
FIXED = {"spec": {"containers": [{"name": "app", "image": "blog:v2", "env": [{"name": "API_KEY", "value": "k"}]}]}}


def edit(world: World, **changes: Any) -> None:
    world.upgrade(world.spec.model_copy(update=changes))


def test_a_retry_that_fixes_the_template_rolls_the_pods_before_any_stage_and_goes_live_with_them() -> None:
    world = World(manifest("v1", V1)).serving_v1(V1)
    edit(world, version="v2", projectors=manifest("v2", V2).projectors, template=BROKEN)
    for _ in range(6):  # prepare runs and succeeds; the replay stage starts
        world.step()
        if "blog-v2-a1-replay" in world.jobs:
            break
        world.finish_running_jobs()
    world.stage_raises(world.running_job("replay"))
    assert world.run(passes=6).status.phase == Phase.FAILED
    assert world.deployments["v2"].template_hash == template_hash(BROKEN)

    edit(world, template=FIXED)  # same version: the README's way to retry
    world.auto_available = False  # the new pods take a while to start
    decision = world.step()
    assert EnsureDeployment("v2", 2) in decision.actions
    assert world.deployments["v2"].template_hash == template_hash(FIXED)
    # No stage runs while the pods still run the old template, whatever the passes.
    for _ in range(3):
        world.now += timedelta(seconds=5)
        decision = world.step()
        assert not [action for action in decision.actions if isinstance(action, RunStageJob)]
        assert decision.status.phase == Phase.DEPLOYING

    world.auto_available = True
    final = world.run(passes=30)
    assert final.status.phase == Phase.ACTIVE and world.service_version == "v2"
    assert world.deployments["v2"].template_hash == template_hash(FIXED)


def test_a_template_edit_of_the_serving_version_rolls_its_pods() -> None:
    world = World(manifest("v1", V1)).serving_v1(V1)
    edit(world, version="v2", projectors=manifest("v2", V2).projectors, template=BROKEN)
    assert world.run(passes=30).status.phase == Phase.ACTIVE and world.service_version == "v2"

    edit(world, template=FIXED)
    decision = world.step()
    assert EnsureDeployment("v2", 2) in decision.actions
    assert world.deployments["v2"].template_hash == template_hash(FIXED)
    assert world.run(passes=5).status.phase == Phase.ACTIVE and world.service_version == "v2"


def test_a_deployment_made_before_the_hash_was_recorded_is_not_rolled_by_an_operator_upgrade() -> None:
    world = World(manifest("v1", V1)).serving_v1(V1)  # v1's Deployment carries no template hash
    decision = world.run(passes=3)
    assert not [action for action in decision.actions if isinstance(action, EnsureDeployment)]
    assert world.deployments["v1"].template_hash is None


def test_pods_that_stay_unready_get_a_hint_at_the_readiness_probe_after_a_while() -> None:
    # A readiness probe that checks the active projector versions passes only after golive, which
    # waits for the pods: a real application's rollout failed after 9 min 55 s saying "0/1 ready".
    world = World(manifest("v1", V1)).serving_v1(V1)
    world.auto_available = False
    edit(world, version="v2", projectors=manifest("v2", V2).projectors, template=BROKEN)
    first = world.step()
    assert first.status.phase == Phase.DEPLOYING and "readiness probe" not in first.status.message
    world.now += timedelta(minutes=3)
    later = world.step()
    assert later.status.phase == Phase.DEPLOYING
    assert "(0/2 ready); if its pods run but stay unready, their readiness probe may need" in later.status.message


def test_a_first_install_onto_a_database_that_shows_it_active_waits_for_its_pods_without_a_warning() -> None:
    # Seen with a real application: installing v1 where projector_states already shows v1 active.
    world = World(manifest("v1", V1))
    world.projectors = {"PostProjector": ProjectorState("PostProjector", 1)}
    world.auto_available = False
    decisions = [world.step() for _ in range(3)]
    assert decisions[-1].status.phase == Phase.SWITCHING
    assert decisions[-1].status.conditions and not [e for d in decisions for e in d.events if e.type == "Warning"]
    world.auto_available = True
    assert world.run(passes=3).status.phase == Phase.ACTIVE and world.service_version == "v1"
