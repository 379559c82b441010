"""Counterexamples ``make fuzz`` found once the world was as hard as the real one (issue 17,
item 4), one test per distinct failure, written out as the steps a user or the cluster took.

Each names the defect of issue 17 it shows. The defects are not fixed yet: a test that fails on
today's operator is marked ``xfail(strict=True)``, so the suite stays green and the test turns
red the day the defect is fixed (then drop the mark).

Not yet written out as steps (two attempts did not reproduce it outside the state machine):
``make fuzz SEED=3653744722`` with ``ROLLOUT_STRICT=c,d``, TestRolloutsOnASharedStore, ended
"Active at v1 but the database shows PostProjector active at 2" (an invariant ``make test`` has
too) after stage Jobs that ended after their database work (prepare's pod exiting 1 once golive
had started) and a return to v1 (its reproduction blob is in the report of branch hardworld).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from rollout_world import Faults, Schema, World, manifest

from projectorset.api import Phase, Promotion
from projectorset.domain.observation import JobState
from projectorset.domain.sequent import ProjectorState
from support.worlds import RELEASES, edit, reason, settle

MIGRATE = {"commands": {"migrate": ["bundle", "exec", "rake", "sequent:db:migrate"]}}


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


@pytest.mark.xfail(strict=True, reason="issue 17: 2 (a release with no projector change never runs its migrations)")
def test_a_release_without_projector_changes_is_migrated_before_it_serves() -> None:
    """v1 serves with a migrate command; v4 has v1's projectors and a migration of its own (schema
    4). The release counted as active at once: the Service moved to v4 as soon as its pods were
    ready, on a schema v4's code does not know, and no migrate Job ever ran."""
    world = World(manifest("v1", RELEASES["v1"], replay=MIGRATE), schema=Schema({"v1": 1, "v4": 4}))
    world.serving_v1(RELEASES["v1"])
    edit(world, "v4")
    for _ in range(8):
        world.reconcile(Faults())
        assert world.schema is not None and world.schema.serves(world.service_version), (
            f"the Service selects {world.service_version} on schema {world.schema.version} "
            f"({reason(world)}); migrate Jobs: {[n for n, j in world.jobs.items() if j.stage == 'migrate']}"
        )
        for name, job in list(world.jobs.items()):
            if job.state is JobState.RUNNING:
                world.finish_job(name)
        world.advance(40)
    assert world.service_version == "v4"


@pytest.mark.xfail(strict=True, reason="issue 17: 4 (awaiting promotion burns catch-up rounds and fails)")
def test_a_rollout_awaiting_promotion_while_writes_go_on_never_fails_by_itself() -> None:
    """Manual promotion: v2 caught up and waits for the promote request. The applications keep
    writing (5000 events behind after every catch-up). Each pass ran another catch-up round, and
    after maxRounds the rollout failed with CatchupDidNotConverge and aborted the replay, because
    nobody had promoted it yet."""
    world = World(manifest("v1", RELEASES["v1"])).serving_v1(RELEASES["v1"])
    edit(world, "v2", strategy=world.spec.strategy.model_copy(update={"promotion": Promotion.MANUAL}))
    settle(world)
    assert reason(world) == "AwaitingPromotion", f"{reason(world)}: {world.status.message}"
    world.lag = world.lag_after_catchup = 5000
    for _ in range(30):
        world.reconcile(Faults())
        assert world.status.phase is not Phase.FAILED, f"{reason(world)}: {world.status.message}"
        for name, job in list(world.jobs.items()):
            if job.state is JobState.RUNNING:
                world.finish_job(name)
        world.advance(60)


@pytest.mark.xfail(strict=True, reason="issue 17: 7 (a retry edit made while a pass is blocked is lost)")
def test_a_retry_made_while_the_database_is_down_is_acted_on_once_it_is_back() -> None:
    """v2's replay raises: the rollout fails and is cleaned up. The database goes down; the user
    retries (a new generation); the pass that sees the edit is blocked on the outage but recorded
    the generation as seen. With the database back the set stayed Failed until edited again."""
    world = World(manifest("v1", RELEASES["v1"])).serving_v1(RELEASES["v1"])
    edit(world, "v2")
    for _ in range(8):
        world.reconcile(Faults())
        replay = [n for n, j in world.jobs.items() if j.stage == "replay" and j.state is JobState.RUNNING]
        if replay:
            world.stage_raises(replay[0])
            break
        for name, job in list(world.jobs.items()):
            if job.state is JobState.RUNNING:
                world.finish_job(name)
    settle(world)
    assert world.status.phase is Phase.FAILED, f"{reason(world)}: {world.status.message}"
    failed_attempt = world.status.attempt
    world.database_error = ("DatabaseUnreachable", "cannot connect to the database")
    edit(world, retry=world.spec.retry + 1)
    world.reconcile(Faults())
    world.database_error = None
    world.now += timedelta(seconds=300)
    settle(world)
    assert (world.status.phase, world.status.attempt) != (Phase.FAILED, failed_attempt), (
        f"the retry was never acted on: {reason(world)}: {world.status.message}"
    )
    assert world.service_version == "v2"


def with_projectors(world: World, projectors: dict[str, int]) -> None:
    """A user's edit of spec.projectors alone (same version label, same image tag)."""
    fields = world.spec.model_dump(by_alias=True, mode="json")
    fields["projectors"] = [{"name": n, "version": v} for n, v in projectors.items()]
    world.upgrade(type(world.spec).model_validate(fields))


def run_to_running(world: World, stage: str) -> str:
    """Passes, finishing every other Job, until a ``stage`` Job runs; its name."""
    for _ in range(12):
        world.reconcile(Faults())
        running = [n for n, j in world.jobs.items() if j.state is JobState.RUNNING]
        found = [n for n in running if world.jobs[n].stage == stage]
        if found:
            return found[0]
        for name in running:
            world.finish_job(name)
        world.advance(40)
    raise AssertionError(f"no {stage} Job ran: {reason(world)}: {world.status.message}")


@pytest.mark.xfail(strict=True, reason="issue 17: 3 (projectors edited without a version change while golive runs)")
def test_projectors_edited_while_golive_runs_leave_a_service_that_can_write() -> None:
    """v2's golive runs; the user edits spec.projectors (TagProjector added) without changing the
    version. golive commits PostProjector 2; the rollout fails VerificationFailed, clean-up scales
    v2 to zero and says v1 keeps serving, while the database refuses every v1 write."""
    world = serving(RELEASES["v1"])
    edit(world, "v2")
    golive = run_to_running(world, "golive")
    with_projectors(world, {"PostProjector": 2, "TagProjector": 1})
    world.reconcile(Faults())
    world.commit_golive(golive)
    world.finish_job(golive)
    for _ in range(8):
        world.reconcile(Faults())
        world.advance(40)
        assert not inactive_for_the_service(world), (
            f"the Service selects {world.service_version} ({reason(world)}: {world.status.message}) while "
            f"{inactive_for_the_service(world)} is not active"
        )


@pytest.mark.xfail(strict=True, reason="issue 17: 13 (a stage that died with the infrastructure fails the rollout)")
def test_a_replay_pod_killed_by_the_cluster_is_retried_without_a_person() -> None:
    """v2's replay pod is evicted (backoffLimit 0): Sequent never marked the replay failed, the Job
    failed with BackoffLimitExceeded. The rollout failed for good ('edit the spec to retry'); a
    blip at 3 a.m. should be aborted and retried by the operator itself."""
    world = serving(RELEASES["v1"])
    edit(world, "v2")
    replay = run_to_running(world, "replay")
    world.pod_dies(replay)
    world.advance(5)
    settle(world)
    assert world.service_version == "v2", f"{reason(world)}: {world.status.message}"


@pytest.mark.xfail(strict=True, reason="issue 17: 7 (a retry edit made while a failed rollout is cleaned up is lost)")
def test_a_retry_made_while_a_killed_migrate_pod_still_terminates_is_acted_on() -> None:
    """Found by ``make fuzz`` (seed 1581896251): v2's migrate pod is killed (backoffLimit 0), the
    Job fails while its pod still terminates, the rollout fails. The user retries at once; the
    pass that saw the edit was still cleaning up, recorded the generation as seen, and the set
    stayed Failed until edited again."""
    world = World(manifest("v1", RELEASES["v1"], replay=MIGRATE), schema=Schema({"v1": 1, "v2": 2}))
    world.serving_v1(RELEASES["v1"])
    edit(world, "v2")
    migrate = run_to_running(world, "migrate")
    world.pod_dies(migrate)
    world.reconcile(Faults())
    assert world.status.phase is Phase.FAILED, f"{reason(world)}: {world.status.message}"
    failed_attempt = world.status.attempt
    edit(world, retry=world.spec.retry + 1)
    world.reconcile(Faults())
    world.advance(5)  # the killed pod is gone
    settle(world)
    assert (world.status.phase, world.status.attempt) != (Phase.FAILED, failed_attempt), (
        f"the retry was never acted on: {reason(world)}: {world.status.message}"
    )
    assert world.service_version == "v2"
