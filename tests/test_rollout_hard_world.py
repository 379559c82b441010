"""Counterexamples ``make fuzz`` found once the world was as hard as the real one (issue 17,
item 4), one test per distinct failure, written out as the steps a user or the cluster took.

Each names the defect of issue 17 it shows. The defects are not fixed yet: a test that fails on
today's operator is marked ``xfail(strict=True)``, so the suite stays green and the test turns
red the day the defect is fixed (then drop the mark).
"""

from __future__ import annotations

import pytest
from rollout_world import Faults, World, manifest
from test_rollout_regressions import RELEASES, edit, reason, settle

from projectorset.domain.sequent import ProjectorState


def serving(projectors: dict[str, int]) -> World:
    """Version v1 serves ``projectors``, all active."""
    return World(manifest("v1", projectors)).serving_v1(projectors)


def inactive_for_the_service(world: World) -> dict[str, ProjectorState | None]:
    """The projectors the Service's pods need that the database does not show active (their
    writes are refused): THE invariant of issue 17 says this stays empty."""
    deployment = world.deployments[world.service_version or ""]
    needed = {**dict(deployment.required or {}), **dict(deployment.projectors or {})}
    return {
        name: world.projectors.get(name)
        for name, version in needed.items()
        if world.projectors.get(name) is None or world.projectors[name].active_version != version
    }


@pytest.mark.xfail(strict=True, reason="issue 17: 5 (removed projectors deactivated before the switch)")
def test_a_release_that_drops_a_projector_keeps_it_active_while_the_old_pods_serve() -> None:
    """v1 serves {PostProjector 2, TagProjector 1}; the user edits to v2 {PostProjector 2}: nothing
    to replay. The activation deactivated TagProjector in the pass before the Service moved, so v1's
    pods (still serving, their code registers TagProjector) had every write refused meanwhile."""
    world = serving(RELEASES["v3"])
    edit(world, "v2")
    for _ in range(6):
        world.reconcile(Faults())
        assert not inactive_for_the_service(world), (
            f"the Service selects {world.service_version} ({reason(world)}) while "
            f"{inactive_for_the_service(world)} is not active"
        )
    settle(world)
    assert world.service_version == "v2"
