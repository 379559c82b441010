"""Counterexamples the stateful model (tests/test_rollout_stateful.py) found, one test per bug,
each shrunk by Hypothesis and written out as the steps a user or the cluster took.

Every pass runs the real controller over ``rollout_world.World`` (Sequent's replayer as it
behaves), so each test reads as: this happened, then the operator should have done that.
"""

from __future__ import annotations

from datetime import timedelta

from rollout_world import Faults, World, manifest

from projectorset.api import Phase
from projectorset.domain.observation import JobState
from projectorset.domain.sequent import ProjectorState
from support.worlds import RELEASES, edit, reason, serving_v1, settle


def ready(world: World) -> str | None:
    return next((c.status for c in world.status.conditions if c.type == "Ready"), None)


def run_until_stage(world: World, stage: str) -> str:
    """Finish every stage Job until ``stage`` runs; that stage's Job name."""
    for _ in range(12):
        world.reconcile()
        running = [n for n, j in world.jobs.items() if j.state is JobState.RUNNING]
        if any(world.jobs[n].stage == stage for n in running):
            break
        for name in running:
            world.finish_job(name)
    return next(n for n, j in world.jobs.items() if j.stage == stage)


def test_replicas_zero_rolls_out_and_serves_with_no_pods() -> None:
    """`replicas: 0` is accepted by the CRD; it used to stay in Deploying for ever."""
    world = serving_v1()
    edit(world, replicas=0)
    edit(world, "v2")
    settle(world)
    assert world.status.phase is Phase.ACTIVE, world.status.message
    assert world.service_version == "v2"
    assert world.projectors["PostProjector"].active_version == 2
    assert world.deployments["v2"].replicas == 0


def test_second_rollout_of_a_version_never_takes_the_first_ones_jobs() -> None:
    """v1 -> v2 -> v1 -> v2: the second v2 rollout found the first one's Jobs (same names) and
    failed at once on a finished prepare Job."""
    world = serving_v1()
    edit(world, "v2")
    settle(world)
    assert world.service_version == "v2"
    edit(world, "v1")
    settle(world)
    assert world.service_version == "v1"
    first_jobs = set(world.jobs)
    edit(world, "v2")
    settle(world)
    assert world.status.phase is Phase.ACTIVE, f"{reason(world)}: {world.status.message}"
    assert world.service_version == "v2"
    assert world.projectors["PostProjector"].active_version == 2
    second_prepare = [n for n in set(world.jobs) - first_jobs if world.jobs[n].stage == "prepare"]
    assert second_prepare, "the second rollout ran its own prepare Job"


def test_database_outage_after_an_abort_does_not_become_the_reason_it_ended() -> None:
    """An outage while Aborted replaced the reason (Aborted -> DatabaseUnreachable) for good."""
    world = serving_v1()
    edit(world, abort=True)
    edit(world, "v2")
    world.reconcile()
    assert world.status.phase is Phase.ABORTED and reason(world) == "Aborted"
    world.database_error = ("DatabaseUnreachable", "cannot connect to the database")
    world.reconcile()
    assert reason(world) == "Aborted"
    assert "cannot connect to the database" in world.status.message
    database_ready = next(c for c in world.status.conditions if c.type == "DatabaseReady")
    assert (database_ready.status, database_ready.reason) == ("False", "DatabaseUnreachable")
    world.database_error = None
    settle(world)
    assert world.status.phase is Phase.ABORTED and reason(world) == "Aborted"
    assert "cannot connect" not in world.status.message


def test_failed_service_patch_is_not_reported_as_active() -> None:
    """The Service patch failed (409, 5xx, a timeout) and the status still said Active, Ready=True,
    with a ServiceSwitched Event in every pass."""
    world = serving_v1()
    edit(world, "v2")
    for _ in range(12):
        for name, job in list(world.jobs.items()):
            if job.state is JobState.RUNNING:
                world.finish_job(name)
        if world.projectors["PostProjector"].active_version == 2:
            break
        world.reconcile()
    for when in ("before", "after"):
        record = world.reconcile(Faults(failing_action=0, failing_when=when))
        assert record.failed_action is not None and type(record.failed_action).__name__ == "SwitchService"
        assert world.status.phase is not Phase.ACTIVE or world.status.active_version == world.service_version
        assert ready(world) != "True"
        assert "ServiceSwitched" not in [e.reason for e in record.events]
        assert next(c.status for c in world.status.conditions if c.type == "ActionsApplied") == "False"
        world.service_version = "v1"  # the timed-out patch did land: put it back for the next round
    record = world.reconcile()
    assert world.service_version == "v2" and world.status.phase is Phase.ACTIVE and ready(world) == "True"
    assert [e.reason for e in record.events].count("ServiceSwitched") == 1


def test_going_back_to_the_serving_version_mid_rollout_aborts_the_replay_it_started() -> None:
    """v1 -> v2 (prepare running) -> v1: the status said Active at v1 while v2's prepare Job ran
    on and projector_states kept PostProjector replaying 2, for good."""
    world = serving_v1()
    edit(world, "v2")
    for _ in range(3):
        world.reconcile()
    assert any(job.stage == "prepare" for job in world.jobs.values())
    edit(world, "v1")
    settle(world)
    assert world.status.phase is Phase.ACTIVE and world.service_version == "v1"
    assert world.replay is not None and world.replay.state == "aborted"
    assert world.projectors["PostProjector"] == ProjectorState("PostProjector", 1, None, None)
    assert not [name for name, job in world.jobs.items() if job.state is JobState.RUNNING]
    edit(world, "v3")
    settle(world)
    assert world.status.phase is Phase.ACTIVE and world.service_version == "v3", world.status.message


def test_version_edited_while_golive_runs_moves_the_service_to_what_the_database_made_active() -> None:
    """golive of v2 committed after the spec went to v3: the Service stayed on v1, whose pods the
    database refuses, for the whole v3 rollout. Now it follows the database to v2 at once, then
    v3 rolls out from there."""
    world = serving_v1()
    edit(world, "v2")
    golive = run_until_stage(world, "golive")
    edit(world, "v3")
    world.reconcile()
    assert world.service_version == "v1"
    world.commit_golive(golive)  # the Job still runs, its transaction has committed
    world.reconcile()
    assert world.service_version == "v2", world.status.message
    assert reason(world) == "FollowingDatabase"
    settle(world)
    assert world.status.phase is Phase.ACTIVE and world.service_version == "v3"
    assert world.projectors["TagProjector"].active_version == 1


def test_rollout_started_again_while_its_superseded_replay_is_aborted_waits_for_the_abort() -> None:
    """v3 (paused after prepare) -> v1 -> v3: the second v3 rollout adopted attempt 1 because the
    abort Job of the superseded one was still running, and took that Job for its own."""
    world = serving_v1()
    edit(world, "v3")
    for _ in range(3):
        world.reconcile()
    edit(world, paused=True)
    world.reconcile()
    edit(world, "v1")
    world.reconcile()  # stops the prepare Job
    world.reconcile()  # aborts the replay it left
    aborts = [name for name, job in world.jobs.items() if job.stage == "abort"]
    assert aborts and world.jobs[aborts[0]].state is JobState.RUNNING
    edit(world, "v3", paused=False)
    settle(world)
    assert world.status.phase is Phase.ACTIVE and world.service_version == "v3", world.status.message
    assert world.golive_runs == 1


def test_a_stale_status_after_a_retry_never_takes_the_attempt_back() -> None:
    """Aborted at attempt 1, retried (attempt 2 running), then a restart read a stale status (the
    Aborted one): the operator went back to attempt 1, judged the rollout by its old Jobs and
    reported the new replay cleared."""
    world = serving_v1()
    edit(world, "v3")
    for _ in range(3):
        world.reconcile()
    edit(world, abort=True)
    settle(world)
    assert world.status.phase is Phase.ABORTED and world.status.attempt == 1
    stale = world.stored_status
    edit(world, abort=False)
    for _ in range(3):
        world.reconcile()
    assert world.status.attempt == 2 and any(j.attempt == 2 for j in world.jobs.values())
    world.restart_operator()
    world.stored_status = stale
    world.reconcile()
    assert world.status.attempt >= 2
    settle(world)
    assert world.status.phase is Phase.ACTIVE and world.service_version == "v3", world.status.message


def test_a_registration_left_by_a_prepare_that_never_ran_is_cleared() -> None:
    """v1 -> v2: the pass registered PostProjector replaying 2, then creating the prepare Job
    failed; the spec went back to v1, which said Active with PostProjector replaying for good."""
    world = serving_v1()
    edit(world, "v2")
    world.reconcile()  # Deploying
    record = world.reconcile(Faults(failing_action=1))  # RegisterReplaying done, the Job not created
    assert type(record.failed_action).__name__ == "RunStageJob"
    assert world.projectors["PostProjector"].replaying_version == 2
    edit(world, "v1")
    settle(world)
    assert world.status.phase is Phase.ACTIVE and world.service_version == "v1"
    assert world.projectors["PostProjector"] == ProjectorState("PostProjector", 1, None, None)


def test_a_superseded_replay_is_aborted_with_the_code_that_knows_its_projectors() -> None:
    """v2 failed and was aborted, then v1, v3 (prepare running), v1: the left-over v3 replay was
    aborted with v2's code (the newest prepare Job by name), which has no TagProjector: every
    abort failed and TagProjector stayed replaying."""
    world = serving_v1()
    edit(world, "v2")
    for _ in range(4):
        world.reconcile()
    prepare = next(n for n, j in world.jobs.items() if j.stage == "prepare")
    world.finish_job(prepare, succeed=False)
    settle(world)
    assert world.status.phase is Phase.FAILED
    edit(world, "v1")
    settle(world)
    edit(world, "v3")
    for _ in range(3):
        world.reconcile()
    assert any(j.version == "v3" and j.stage == "prepare" for j in world.jobs.values())
    edit(world, "v1")
    settle(world)
    assert world.status.phase is Phase.ACTIVE and world.service_version == "v1"
    assert world.replay is not None and world.replay.state == "aborted"
    assert not [n for n, s in world.projectors.items() if s.replaying_version or s.activating_version]


def test_a_lost_status_mid_rollout_carries_on_with_the_running_jobs() -> None:
    """The status was lost (an operator restarted after the status was wiped) while the replay
    Job ran: the rollout restarted at attempt 1, failed at once and deleted the healthy Job."""
    world = serving_v1()
    edit(world, "v2")
    replay_job = run_until_stage(world, "replay")
    world.restart_operator()
    world.stored_status = None
    world.reconcile()
    assert world.jobs[replay_job].state is JobState.RUNNING and not world.jobs[replay_job].deleting
    settle(world)
    assert world.status.phase is Phase.ACTIVE and world.service_version == "v2"
    assert world.golive_runs == 1


def test_edited_during_golive_to_a_build_of_the_same_release_follows_the_ready_pods_first() -> None:
    """Found on the cluster: golive of v2 committed after the spec went to v2b (the same projector
    versions); the Service waited on v1, whose writes the database refused, until v2b's pods were
    ready. It now moves to v2's ready pods at once, then to v2b."""
    world = serving_v1()
    edit(world, "v2")
    golive = run_until_stage(world, "golive")
    edit(world, "v2b")
    world.auto_available = False  # v2b's pods take their time
    world.reconcile()
    assert "v2b" in world.deployments and not world.deployments["v2b"].available
    world.commit_golive(golive)
    world.reconcile()
    assert world.service_version == "v2", world.status.message
    world.auto_available = True
    settle(world)
    assert world.status.phase is Phase.ACTIVE and world.service_version == "v2b"


# ---- listed in issue 9 (found by hand, not by the model) --------------------------------------------


def test_a_deleted_catch_up_job_neither_repeats_its_round_nor_resets_max_rounds() -> None:
    """A TTL policy or kubectl delete removed a finished catch-up Job: the operator asked for the
    same round for ever and maxRounds never ended it."""
    world = World(manifest("v1", RELEASES["v1"], replay={"catchup": {"maxLag": 10, "maxRounds": 3}})).serving_v1(
        RELEASES["v1"]
    )
    edit(world, "v2")
    world.lag = world.lag_after_catchup = 500  # events arrive faster than a round catches up
    rounds: list[int] = []
    for _ in range(30):
        world.reconcile()
        for name, job in list(world.jobs.items()):
            if job.stage == "catchup" and job.state is JobState.RUNNING:
                rounds.append(job.round)
            if job.state is JobState.RUNNING:
                world.finish_job(name)
            if job.stage == "catchup" and job.state is not JobState.RUNNING:
                world.jobs.pop(name)  # the TTL controller deletes it once it finished
        world.now += timedelta(seconds=40)
        if world.status.phase is Phase.FAILED:
            break
    assert rounds == [1, 2, 3]
    assert world.status.phase is Phase.FAILED and reason(world) == "CatchupDidNotConverge"


def test_a_scale_down_delay_of_centuries_does_not_overflow() -> None:
    """scaleDownDelaySeconds large enough overflowed a datetime on every pass."""
    world = World(manifest("v1", RELEASES["v1"], strategy={"scaleDownDelaySeconds": 10**15})).serving_v1(RELEASES["v1"])
    edit(world, "v2")
    settle(world)
    assert world.status.phase is Phase.ACTIVE and world.service_version == "v2"
    assert world.deployments["v1"].replicas == 2  # kept for the (very long) delay
    assert world.history[-1].requeue_after is not None and world.history[-1].requeue_after <= 300


def test_a_stale_status_after_v2_v1_v2_never_takes_the_first_v2_rollouts_jobs() -> None:
    """v1 -> v2 (prepare done) -> v1 -> v2: the first v2 replay was being aborted when a restart read
    a status several patches old (Replaying v2, attempt 1): the second rollout took attempt 1's
    Jobs for its own and failed on the replay Job the spec change had stopped."""
    world = serving_v1()
    edit(world, "v2")
    for _ in range(2):
        world.reconcile()
    stale = world.stored_status
    assert world.status.phase is Phase.REPLAYING and world.status.attempt == 1
    world.finish_job("blog-v2-a1-prepare")
    world.reconcile()
    first_jobs = set(world.jobs)
    edit(world, "v1")
    world.reconcile()
    edit(world, "v2")
    world.reconcile()
    assert any(job.stage == "abort" for job in world.jobs.values()), "the first v2 replay is being aborted"
    world.restart_operator()
    world.stored_status = stale
    world.reconcile()
    assert world.status.phase is not Phase.FAILED, f"{reason(world)}: {world.status.message}"
    assert world.status.target_version != "v2" or world.status.attempt > 1
    settle(world)
    assert world.status.phase is Phase.ACTIVE and world.service_version == "v2", world.status.message
    second_prepare = [n for n in set(world.jobs) - first_jobs if world.jobs[n].stage == "prepare"]
    assert second_prepare, "the second rollout ran its own prepare Job"


def test_edits_held_by_a_database_outage_leave_the_running_rollout_to_carry_on() -> None:
    """Found by ``make fuzz`` (its model counts v2 -> v1 -> v2 as a new rollout whatever the
    operator saw): v2's prepare runs, the database goes down, the version goes to v1 and back to
    v2 while every pass holds on the outage. No pass acted on v1, so nothing of the v2 rollout was
    torn down: when the database is back, the same prepare carries on (no second replay of v2 is
    started beside it) and v2 goes live."""
    world = serving_v1()
    edit(world, "v2")
    prepare = run_until_stage(world, "prepare")
    world.database_error = ("DatabaseUnreachable", "cannot connect to the database")
    world.reconcile()
    edit(world, "v1")
    world.reconcile()
    edit(world, "v2")
    world.reconcile()
    assert reason(world) == "DatabaseUnreachable" and world.jobs[prepare].state is JobState.RUNNING
    world.database_error = None
    world.reconcile()
    assert world.status.attempt == 1 and world.jobs[prepare].state is JobState.RUNNING
    settle(world)
    assert world.service_version == "v2" and world.status.phase.value == "Active"
    assert [n for n, j in world.jobs.items() if j.stage == "prepare"] == [prepare]
