"""Steps over a rollout World that the regression tests share: the releases they move between,
a user's edit of the spec, passes until things settle, the Progressing reason."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from rollout_world import Faults, World, manifest

from projectorset.domain.observation import JobState

RELEASES: dict[str, dict[str, int]] = {
    "v1": {"PostProjector": 1},
    "v2": {"PostProjector": 2},
    "v3": {"PostProjector": 2, "TagProjector": 1},
    "v2b": {"PostProjector": 2},  # v2's projectors in another build
    "v4": {"PostProjector": 1},  # v1's projectors with a migration of its own
}


def serving_v1() -> World:
    return World(manifest("v1", RELEASES["v1"])).serving_v1(RELEASES["v1"])


def edit(world: World, version: str | None = None, **changes: Any) -> None:
    """A user's edit of the spec (a new generation)."""
    spec = world.spec
    if version is not None:
        fields = spec.model_dump(by_alias=True, mode="json")
        fields.update(
            version=version,
            projectors=[{"name": n, "version": v} for n, v in RELEASES[version].items()],
            template={"spec": {"containers": [{"name": "app", "image": "blog:" + version}]}},
        )
        spec = type(spec).model_validate(fields)
    world.upgrade(spec.model_copy(update=changes))


def settle(world: World, passes: int = 16) -> None:
    """Passes with nothing failing: every running Job ends well, 40 s apart."""
    for _ in range(passes):
        for name, job in list(world.jobs.items()):
            if job.state is JobState.RUNNING:
                world.finish_job(name)
        world.now += timedelta(seconds=40)
        world.reconcile(Faults())


def reason(world: World) -> str | None:
    return next((c.reason for c in world.status.conditions if c.type == "Progressing"), None)
