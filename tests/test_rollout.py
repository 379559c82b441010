"""The phase machine, pass by pass (pure: no cluster, no database)."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import timedelta

import pytest
from rollout_world import World, manifest

from projectorset.api import Phase
from projectorset.api.conditions import Reason
from projectorset.domain.observation import (
    Activate,
    ClearReplaying,
    Deactivate,
    DeleteDeployment,
    DeleteJob,
    DeploymentView,
    EnsureDeployment,
    RegisterReplaying,
    RunStageJob,
    ScaleDeployment,
    SwitchService,
)
from projectorset.domain.sequent import ProjectorState, ReplayState


def reason(world: World) -> str:
    return next(c.reason for c in world.status.conditions if c.type == "Progressing")


def condition(world: World, type_: str) -> tuple[str, str]:
    found = next(c for c in world.status.conditions if c.type == type_)
    return found.status, found.reason


def upgraded_world(**spec_overrides: object) -> World:
    world = World(manifest("v1")).serving_v1()
    world.upgrade(manifest("v2", {"PostProjector": 2}, **spec_overrides))
    return world


# ---- the whole rollout --------------------------------------------------------------------------


@pytest.mark.parametrize("restart", [False, True], ids=["one-process", "restart-every-pass"])
def test_upgrade_walks_every_phase_and_switches_in_the_pass_the_database_shows_active(restart: bool) -> None:
    world = upgraded_world()
    trail: list[tuple[str, str]] = []
    switched_in_pass_of_activation = False
    for _ in range(20):
        before = world.projectors["PostProjector"].active_version
        decision = world.step(restart=restart)
        trail.append((decision.status.phase.value, reason(world)))
        if before == 2 and any(isinstance(a, SwitchService) for a in decision.actions):
            switched_in_pass_of_activation = world.service_version == "v2"
        world.finish_running_jobs()
        world.now += timedelta(seconds=5)
        if world.status.phase is Phase.ACTIVE and world.service_version == "v2":
            break
    phases = [phase for phase, _ in trail]
    reasons = [r for _, r in trail]
    assert phases[0] == "Deploying"
    assert [r for r in dict.fromkeys(reasons) if r not in ("Deploying",)] == [
        "Preparing",
        "Replaying",
        "Optimizing",
        "GoingLive",
        "RolloutComplete",
    ]
    assert switched_in_pass_of_activation
    assert [d.status.phase for d in world.history if d.activated] == [Phase.ACTIVE]
    assert world.golive_runs == 1
    assert world.projectors["PostProjector"] == ProjectorState("PostProjector", 2, None, None)
    assert world.status.active_version == "v2"
    assert world.status.previous_version == "v1"
    assert world.status.history == ["v1"]
    assert condition(world, "Ready") == ("True", "Active")
    events = [e.reason for d in world.history for e in d.events]
    for expected in ("RolloutStarted", "Preparing", "GoingLive", "Activated", "ServiceSwitched", "RolloutComplete"):
        assert expected in events


def test_old_version_scales_down_only_after_the_delay() -> None:
    world = upgraded_world(strategy={"scaleDownDelaySeconds": 60})
    world.run(passes=8)
    assert world.service_version == "v2"
    switched = world.now
    assert world.deployments["v1"].replicas == 2
    world.now = switched + timedelta(seconds=30)
    world.step()
    assert world.deployments["v1"].replicas == 2
    world.now = switched + timedelta(seconds=61)
    decision = world.step()
    assert ScaleDeployment("v1", 0) in decision.actions
    assert world.deployments["v1"].replicas == 0
    assert "ScaledDown" in [e.reason for e in decision.events]


def test_history_keeps_only_the_limit_of_old_deployments() -> None:
    world = World(manifest("v1"), auto_available=True).serving_v1()
    world.deployments["v0"] = DeploymentView("v0", 0)
    world.status = world.status.model_copy(update={"history": ["v0"]})
    world.upgrade(
        manifest("v2", {"PostProjector": 2}, strategy={"revisionHistoryLimit": 1, "scaleDownDelaySeconds": 0})
    )
    world.run(passes=10)
    assert world.service_version == "v2"
    assert set(world.deployments) == {"v1", "v2"}
    assert world.deployments["v1"].replicas == 0
    assert world.status.history == ["v1"]
    assert any(isinstance(a, DeleteDeployment) and a.version == "v0" for d in world.history for a in d.actions)


def test_first_install_adopts_the_release_without_replay() -> None:
    world = World(manifest("v1", {"PostProjector": 1, "TagProjector": 3}))
    first = world.step()
    assert first.status.phase is Phase.DEPLOYING
    assert EnsureDeployment("v1", 2) in first.actions
    second = world.step()
    assert Activate({"PostProjector": 1, "TagProjector": 3}, ()) in second.actions
    third = world.step()
    assert SwitchService("v1") in third.actions
    assert third.status.phase is Phase.ACTIVE
    assert not any(isinstance(a, RunStageJob) for d in world.history for a in d.actions)


def test_release_without_projector_changes_activates_directly_and_deactivates_removed() -> None:
    world = World(manifest("v2", {"PostProjector": 2, "OldProjector": 1}))
    world.service_version = "v2"
    world.deployments["v2"] = DeploymentView("v2", 2, 2, True)
    world.projectors = {
        "PostProjector": ProjectorState("PostProjector", 2),
        "OldProjector": ProjectorState("OldProjector", 1),
    }
    world.status = world.status.model_copy(
        update={"phase": Phase.ACTIVE, "active_version": "v2", "target_version": "v2"}
    )
    world.upgrade(manifest("v3", {"PostProjector": 2}))
    world.step()
    decision = world.step()
    assert decision.status.phase is Phase.ACTIVATING
    assert Activate({"PostProjector": 2}, ("OldProjector",)) in decision.actions
    final = world.step()
    assert SwitchService("v3") in final.actions
    assert world.projectors["OldProjector"].active_version is None
    assert not any(isinstance(a, RunStageJob) for d in world.history for a in d.actions)


def test_rollback_to_a_lower_version_replays_and_says_so() -> None:
    world = World(manifest("v2", {"PostProjector": 2})).serving_v1({"PostProjector": 2})
    world.service_version = "v2"
    world.deployments = {"v2": DeploymentView("v2", 2, 2, True)}
    world.status = world.status.model_copy(update={"active_version": "v2", "target_version": "v2"})
    world.upgrade(manifest("v1", {"PostProjector": 1}))
    world.step()
    decision = world.step()
    assert RegisterReplaying({"PostProjector": 1}) in decision.actions
    assert condition(world, "Planned") == ("True", "RollbackByReplay")
    world.run(passes=8)
    assert world.service_version == "v1"
    assert world.projectors["PostProjector"].active_version == 1


def test_removed_projector_is_deactivated_only_once_golive_committed() -> None:
    """Until golive commits the old code serves and its projector stays active; right after, in
    the pass that sees golive's commit, it is deactivated and traffic moves."""
    world = World(manifest("v1", {"PostProjector": 1, "OldProjector": 1})).serving_v1(
        {"PostProjector": 1, "OldProjector": 1}
    )
    world.upgrade(manifest("v2", {"PostProjector": 2}))
    advance_to(world, "golive")
    assert world.projectors["OldProjector"].active_version == 1
    assert not any(isinstance(a, Deactivate) for d in world.history for a in d.actions)
    world.finish_job(world.running_job("golive"))
    decision = world.step()
    kinds = [type(a) for a in decision.actions]
    assert kinds.index(Deactivate) < kinds.index(SwitchService)
    assert Deactivate(("OldProjector",)) in decision.actions
    assert world.service_version == "v2"
    assert world.projectors["OldProjector"].active_version is None
    assert "ProjectorsDeactivated" in [e.reason for e in decision.events]


def test_a_failed_golive_leaves_removed_projectors_active() -> None:
    world = World(manifest("v1", {"PostProjector": 1, "OldProjector": 1})).serving_v1(
        {"PostProjector": 1, "OldProjector": 1}
    )
    world.upgrade(manifest("v2", {"PostProjector": 2}))
    advance_to(world, "golive")
    world.finish_job(world.running_job("golive"), succeed=False)
    world.run(passes=4)
    assert world.status.phase is Phase.FAILED and world.service_version == "v1"
    assert world.projectors["OldProjector"] == ProjectorState("OldProjector", 1, None, None)
    assert world.projectors["PostProjector"] == ProjectorState("PostProjector", 1, None, None)
    assert not any(isinstance(a, Deactivate) for d in world.history for a in d.actions)


def test_catchup_repeats_until_lag_is_within_bound() -> None:
    world = upgraded_world(replay={"catchup": {"maxLag": 10, "maxRounds": 5}})
    world.lag = 500
    stages: list[str] = []
    for _ in range(20):
        decision = world.step()
        stages += [a.stage for a in decision.actions if isinstance(a, RunStageJob)]
        for name, job in list(world.jobs.items()):
            if job.state.value == "Running":
                world.finish_job(name)
                if job.stage == "catchup":
                    world.lag = 500 if job.round < 3 else 5
        if world.service_version == "v2":
            break
    assert stages == ["prepare", "replay", "optimize", "catchup", "catchup", "catchup", "golive"]


def test_catchup_that_never_converges_fails_and_aborts() -> None:
    world = upgraded_world(replay={"catchup": {"maxLag": 10, "maxRounds": 2}})
    world.lag = 500
    for _ in range(12):
        world.step()
        for name, job in list(world.jobs.items()):
            if job.state.value == "Running":
                world.finish_job(name)
                world.lag = 500
        if world.status.phase is Phase.FAILED:
            break
    assert reason(world) == "CatchupDidNotConverge"
    world.run(passes=4)
    assert world.status.phase is Phase.FAILED
    assert world.service_version == "v1"
    assert world.replaying() == []
    assert world.replay is not None and world.replay.state == "aborted"


# ---- failure, abort, pause, promotion ------------------------------------------------------------


def advance_to(world: World, stage: str) -> None:
    for _ in range(15):
        world.step()
        running = [j for j in world.jobs.values() if j.state.value == "Running"]
        if any(j.stage == stage for j in running):
            return
        world.finish_running_jobs()
    pytest.fail(f"never reached {stage}")


def test_failed_stage_job_aborts_the_replay_and_leaves_the_old_version_serving() -> None:
    world = upgraded_world()
    advance_to(world, "replay")
    # Killed by its deadline: the Job failed, Sequent had no chance to mark the replay failed.
    world.finish_job(world.running_job("replay"), hang=True)
    decision = world.step()
    assert decision.status.phase is Phase.FAILED
    assert reason(world) == "StageFailed"
    assert any(isinstance(a, RunStageJob) and a.stage == "abort" for a in decision.actions)
    assert "Warning" in [e.type for e in decision.events]
    world.run(passes=4)
    assert world.status.phase is Phase.FAILED
    assert world.service_version == "v1"
    assert world.projectors["PostProjector"] == ProjectorState("PostProjector", 1, None, None)
    assert world.deployments["v2"].replicas == 0
    assert "version v1 keeps serving" in world.status.message
    assert condition(world, "ReplayAborted") == ("True", "Aborted")


def test_stage_job_that_succeeds_without_moving_the_database_fails_verification() -> None:
    world = upgraded_world()
    advance_to(world, "optimize")
    world.finish_job(world.running_job("optimize"), move_database=False)
    world.step()
    assert world.status.phase is Phase.FAILED
    assert reason(world) == "VerificationFailed"
    assert "replay_states is 'replayed'; after optimize it should be 'optimized'" in world.status.message


def test_prepare_job_that_leaves_the_replay_created_fails_verification_naming_both_states() -> None:
    world = upgraded_world()
    advance_to(world, "prepare")
    world.finish_job(world.running_job("prepare"), move_database=False)
    world.step()
    assert reason(world) == "VerificationFailed"
    assert (
        "prepare Job blog-v2-a1-prepare succeeded but replay_states is 'created'; "
        "after prepare it should be 'prepared'" in world.status.message
    )


@pytest.mark.parametrize("stage", ["prepare", "replay", "catchup"])
@pytest.mark.parametrize("job_ends", [True, False], ids=["job-failed", "job-still-retrying"])
def test_replay_marked_failed_fails_the_rollout_aborts_it_and_a_retry_goes_live(stage: str, job_ends: bool) -> None:
    world = upgraded_world(replay={"catchup": {"maxLag": 10}})
    world.lag = 500
    advance_to(world, stage)
    job = world.running_job(stage)
    world.stage_raises(job, job_ends=job_ends)
    replay_id = world.replay.id if world.replay else None
    decision = world.step()

    assert decision.status.phase is Phase.FAILED
    assert reason(world) == "ReplayFailed"
    assert f"replay {replay_id} is 'failed' in replay_states: a stage raised" in world.status.message
    assert f"{stage} Job {job} " in world.status.message
    assert decision.failure is Reason.REPLAY_FAILED
    aborts = [a for a in decision.actions if isinstance(a, RunStageJob) and a.stage == "abort"]
    if job_ends:
        assert aborts
    else:
        # Sequent's abort does not stop a stage that still runs: the operator gives it 30 s to exit
        # by itself (keeping its Job and output), then deletes it, and aborts once its pods are gone.
        assert not aborts and DeleteJob(job) not in decision.actions
        assert condition(world, "ReplayAborted") == ("False", "Aborting")
        assert f"waiting for {job} to exit before the abort" in world.status.message
        world.now += timedelta(seconds=20)
        assert world.step().actions == ()
        world.now += timedelta(seconds=11)
        assert world.step().actions == (DeleteJob(job),)
    world.run(passes=4)
    assert world.status.phase is Phase.FAILED and reason(world) == "ReplayFailed"
    # The final condition outlives the stage: it never says a Job that has exited is running.
    assert "is still running" not in world.status.message
    assert world.replay is not None and world.replay.state == "aborted"
    assert world.projectors["PostProjector"] == ProjectorState("PostProjector", 1, None, None)
    assert condition(world, "ReplayAborted") == ("True", "Aborted")
    assert world.service_version == "v1"
    assert [d.failure for d in world.history if d.failure] == [Reason.REPLAY_FAILED]

    world.lag = 0
    world.upgrade(world.spec.model_copy(update={"replicas": 3}))
    world.run(passes=12)
    assert world.service_version == "v2"
    assert world.golive_runs == 1


def test_replay_failure_seen_while_its_job_ran_is_told_again_with_the_jobs_error() -> None:
    """Sequent marks the replay failed, then the stage's process exits: the operator sees the
    failure first, and the error only once the Job has failed. The condition and an Event say it."""
    world = upgraded_world()
    advance_to(world, "replay")
    job = world.running_job("replay")
    world.stage_raises(job, job_ends=False)
    world.step()
    assert f"(seen while replay Job {job} was running)" in world.status.message
    world.finish_job(job, succeed=False)
    world.run(passes=4)
    assert reason(world) == "ReplayFailed" and condition(world, "ReplayAborted") == ("True", "Aborted")
    told = f"a stage raised (replay Job {job} failed: BackoffLimitExceeded)"
    assert told in world.status.message and "seen while" not in world.status.message
    warnings = [e for d in world.history for e in d.events if e.reason is Reason.REPLAY_FAILED]
    assert [told in e.message for e in warnings] == [False, True]


def test_failed_replay_of_another_target_blocks_until_it_is_aborted() -> None:
    world = upgraded_world()
    world.replay = ReplayState(3, "failed", ("TagProjector",), 10)
    world.step()
    decision = world.step()
    assert decision.status.phase is Phase.PENDING
    assert reason(world) == "ReplayInProgressForOtherTarget"
    assert "replay 3 failed building TagProjector and stays in progress until it is aborted" in world.status.message
    assert not any(isinstance(a, (RunStageJob, RegisterReplaying)) for a in decision.actions)


def test_abort_request_cancels_the_replay() -> None:
    world = upgraded_world()
    advance_to(world, "replay")
    world.upgrade(world.spec.model_copy(update={"abort": True}))
    world.run(passes=4)
    assert world.status.phase is Phase.ABORTED
    assert world.service_version == "v1"
    assert world.replaying() == []
    assert world.replay is not None and world.replay.state == "aborted"
    assert world.golive_runs == 0


def test_abort_waits_for_a_running_golive_which_then_wins() -> None:
    world = upgraded_world()
    advance_to(world, "golive")
    world.upgrade(world.spec.model_copy(update={"abort": True}))
    decision = world.step()
    assert decision.status.phase is Phase.ACTIVATING
    assert reason(world) == "AbortWaitingForGolive"
    assert not any(isinstance(a, ClearReplaying) for a in decision.actions)
    world.finish_running_jobs()
    final = world.step()
    # Once golive committed, old pods can no longer write: traffic must move, abort or not.
    assert SwitchService("v2") in final.actions


def test_retry_after_failure_needs_a_spec_edit_and_starts_a_new_attempt() -> None:
    world = upgraded_world()
    advance_to(world, "replay")
    world.finish_job(world.running_job("replay"), succeed=False)
    world.run(passes=3)
    assert world.status.phase is Phase.FAILED and world.status.attempt == 1
    world.step()
    assert world.status.phase is Phase.FAILED
    world.upgrade(world.spec.model_copy(update={"replicas": 3}))
    world.step()
    assert world.status.attempt == 2
    world.run(passes=10)
    assert world.service_version == "v2"
    assert world.golive_runs == 1


def test_pause_holds_the_next_stage_and_resume_continues() -> None:
    world = upgraded_world()
    advance_to(world, "replay")
    world.upgrade(world.spec.model_copy(update={"paused": True}))
    world.finish_running_jobs()
    decision = world.step()
    assert decision.status.phase is Phase.PAUSED
    assert reason(world) == "PausedByUser"
    assert not any(isinstance(a, RunStageJob) for a in decision.actions)
    assert condition(world, "Progressing")[0] == "False"
    world.upgrade(world.spec.model_copy(update={"paused": False}))
    world.run(passes=8)
    assert world.service_version == "v2"


def test_pause_never_holds_back_the_switch_once_active() -> None:
    world = upgraded_world()
    advance_to(world, "golive")
    world.upgrade(world.spec.model_copy(update={"paused": True}))
    world.finish_running_jobs()
    decision = world.step()
    assert SwitchService("v2") in decision.actions


def test_manual_promotion_waits_for_the_promote_request() -> None:
    world = upgraded_world(strategy={"promotion": "Manual"})
    world.run(passes=8)
    assert world.status.phase is Phase.PAUSED
    assert reason(world) == "AwaitingPromotion"
    assert world.service_version == "v1"
    assert world.golive_runs == 0
    world.upgrade(world.spec.model_copy(update={"promote": "v2"}))
    world.run(passes=4)
    assert world.service_version == "v2"
    assert world.golive_runs == 1


# ---- restart at each phase ----------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["prepare", "replay", "optimize", "golive"])
def test_restart_while_a_stage_runs_waits_for_that_job_and_never_repeats_golive(stage: str) -> None:
    world = upgraded_world()
    advance_to(world, stage)
    jobs_before = set(world.jobs)
    decision = world.step(restart=True)
    assert not any(isinstance(a, RunStageJob) and a.stage == stage for a in decision.actions)
    assert set(world.jobs) == jobs_before
    world.run(passes=8, restart=True)
    assert world.service_version == "v2"
    assert world.golive_runs == 1


def test_restart_after_golive_committed_switches_at_once() -> None:
    world = upgraded_world()
    advance_to(world, "golive")
    world.finish_running_jobs()  # golive committed; the operator died before seeing it
    decision = world.step(restart=True)
    assert SwitchService("v2") in decision.actions
    assert world.golive_runs == 1


def test_missing_stage_job_while_database_says_it_runs_fails_clearly() -> None:
    world = upgraded_world()
    advance_to(world, "replay")
    world.jobs.pop(world.running_job("replay"))
    world.step()
    assert world.status.phase is Phase.FAILED
    assert reason(world) == "StageInterrupted"


# ---- blocked and broken inputs --------------------------------------------------------------------


def test_replay_in_progress_for_another_target_blocks_with_a_condition() -> None:
    world = upgraded_world()
    world.projectors["PostProjector"] = ProjectorState("PostProjector", 1, None, 7)
    world.replay = ReplayState(3, "replaying", ("PostProjector",), 10)
    world.step()
    decision = world.step()
    assert decision.status.phase is Phase.PENDING
    assert reason(world) == "ReplayInProgressForOtherTarget"
    assert "version 7 is replaying, the release has 2" in world.status.message
    assert not any(isinstance(a, (RunStageJob, RegisterReplaying)) for a in decision.actions)


def test_empty_projector_states_while_a_version_serves_is_not_guessed_at() -> None:
    world = upgraded_world()
    world.projectors = {}
    world.step()
    world.step()
    assert reason(world) == "ProjectorStatesEmpty"
    assert world.service_version == "v1"
    # A command that activates whatever the table holds (sequent:migrate:offline does nothing
    # without a pending view-schema migration): Sequent's own activation, with v1's code.
    assert "activate version v1's configuration" in world.status.message
    assert "Sequent.activate_current_configuration!" in world.status.message


@pytest.mark.parametrize(
    ("breakage", "expected_reason"),
    [
        ("service", "ServiceNotFound"),
        ("secret", "SecretNotFound"),
        ("auth", "DatabaseAuthenticationFailed"),
        ("unreachable", "DatabaseUnreachable"),
    ],
)
def test_broken_inputs_give_a_condition_keep_the_phase_and_retry(breakage: str, expected_reason: str) -> None:
    world = upgraded_world()
    advance_to(world, "replay")
    phase_before = world.status.phase
    if breakage == "service":
        world.service_found = False
    elif breakage == "secret":
        world.secret_problem = "Secret blog-db has no key uri"
    elif breakage == "auth":
        world.database_error = ("DatabaseAuthenticationFailed", "the database refused the credentials")
    else:
        world.database_error = ("DatabaseUnreachable", "cannot connect to the database")
    decision = world.step()
    assert decision.status.phase is phase_before
    assert reason(world) == expected_reason
    assert decision.requeue_after is not None
    assert decision.actions == ()
    assert [e.type for e in decision.events] == ["Warning"]
    if breakage in ("auth", "unreachable"):
        assert condition(world, "DatabaseReady") == ("False", expected_reason)
    world.service_found, world.secret_problem, world.database_error = True, None, None
    world.run(passes=8)
    assert world.service_version == "v2"


def test_new_deployment_that_never_becomes_available_fails_the_rollout() -> None:
    world = upgraded_world()
    world.auto_available = False
    world.step()
    world.deployments["v2"] = replace(world.deployments["v2"], failure="ProgressDeadlineExceeded")
    world.step()
    assert world.status.phase is Phase.FAILED
    assert reason(world) == "DeploymentFailed"
    assert world.service_version == "v1"


def test_conditions_carry_generation_and_transition_time() -> None:
    world = upgraded_world()
    world.step()
    for found in world.status.conditions:
        assert found.observed_generation == world.generation
        assert found.last_transition_time is not None
    assert world.status.observed_generation == world.generation
    dumped = world.status.model_dump(by_alias=True, mode="json")
    assert dumped["targetVersion"] == "v2"
    assert {"type", "status", "reason", "message", "lastTransitionTime", "observedGeneration"} <= set(
        dumped["conditions"][0]
    )


def test_projector_states_locked_by_a_running_golive_is_expected_not_an_outage() -> None:
    """golive holds projector_states until it commits: a pass whose read times out on that lock
    keeps Activating and watching, without a warning; a lock with no golive running is reported."""
    world = upgraded_world()
    advance_to(world, "golive")
    world.database_error = ("ProjectorStatesLocked", "projector_states was locked by another transaction")
    decision = world.step()
    assert decision.status.phase is Phase.ACTIVATING and reason(world) == "GoingLive"
    assert decision.await_activation
    assert decision.actions == ()
    assert not [e for e in decision.events if e.type == "Warning"]
    world.database_error = None
    world.finish_running_jobs()
    world.step()
    assert world.service_version == "v2"

    other = upgraded_world()
    advance_to(other, "replay")
    other.database_error = ("ProjectorStatesLocked", "projector_states was locked by another transaction")
    decision = other.step()
    assert reason(other) == "ProjectorStatesLocked"
    assert [e.type for e in decision.events] == ["Warning"]


# ---- Sequent's failures: abort after the stage's pods, abort retried, a truthful ReplayAborted ----


def test_abort_starts_only_once_the_failed_stage_pods_are_gone() -> None:
    world = upgraded_world()
    advance_to(world, "replay")
    job = world.running_job("replay")
    world.stage_raises(job)
    # The Job failed but its pod is still terminating (it may still write to the replay schema).
    world.jobs[job] = replace(world.jobs[job], active=1)
    for _ in range(3):
        decision = world.step()
        assert not any(isinstance(a, RunStageJob) for a in decision.actions)
        assert condition(world, "ReplayAborted") == ("False", "Aborting")
        assert f"waiting for {job} to exit before the abort" in world.status.message
    world.jobs[job] = replace(world.jobs[job], active=0)
    decision = world.step()
    assert any(isinstance(a, RunStageJob) and a.stage == "abort" for a in decision.actions)


def waits_in(message: str, tries: str) -> int:
    """The seconds 'abort runs again in N s (try ...)' says."""
    found = re.search(r"abort runs again in (\d+) s " + re.escape(tries), message)
    assert found, message
    return int(found.group(1))


def test_failing_abort_is_retried_with_a_growing_back_off_until_the_replay_is_aborted() -> None:
    world = upgraded_world()
    advance_to(world, "replay")
    world.stage_raises(world.running_job("replay"))
    world.step()
    first = world.running_job("abort")
    world.finish_job(first, succeed=False)
    decision = world.step()
    # Not aborted yet: said so, with when the next try comes, and nothing reported cleared.
    assert condition(world, "ReplayAborted") == ("False", "AbortFailed")
    assert not any(isinstance(a, RunStageJob) for a in decision.actions)
    found = next(c for c in world.status.conditions if c.type == "ReplayAborted")
    assert f"abort Job {first} failed: BackoffLimitExceeded" in found.message
    # Full jitter: the wait is drawn under a ceiling of 10 s, then 20 s, the same on every pass.
    assert waits_in(found.message, "(try 2, 1 failed)") <= 10
    assert decision.requeue_after is not None and decision.requeue_after <= 10
    # decide is pure: the next pass finds the same due time.
    world.step()
    again = next(c for c in world.status.conditions if c.type == "ReplayAborted")
    assert waits_in(again.message, "(try 2, 1 failed)") == waits_in(found.message, "(try 2, 1 failed)")
    world.now += timedelta(seconds=10)
    decision = world.step()
    assert any(isinstance(a, RunStageJob) and a.stage == "abort" and a.round == 1 for a in decision.actions)
    assert ("Warning", "AbortFailed") in [(e.type, e.reason) for e in decision.events]
    second = world.running_job("abort")
    assert second != first
    world.finish_job(second, succeed=False)
    world.step()
    found = next(c for c in world.status.conditions if c.type == "ReplayAborted")
    assert waits_in(found.message, "(try 3, 2 failed)") <= 20
    # A spec edit meanwhile does not skip the abort: the replay holds Sequent's unique index.
    world.upgrade(world.spec.model_copy(update={"replicas": 3}))
    world.now += timedelta(seconds=20)
    world.step()
    assert world.status.phase is Phase.FAILED and world.status.attempt == 1
    world.finish_job(world.running_job("abort"))
    world.step()
    assert world.replay is not None and world.replay.state == "aborted"
    assert condition(world, "ReplayAborted") == ("True", "Aborted")
    found = next(c for c in world.status.conditions if c.type == "ReplayAborted")
    assert f"replay {world.replay.id} is aborted in replay_states" in found.message
    # Then an edit of the spec retries the rollout, and it goes live.
    world.upgrade(world.spec.model_copy(update={"replicas": 2}))
    world.run(passes=12)
    assert world.status.attempt == 2
    assert world.service_version == "v2"


def test_abort_that_succeeds_while_the_replay_stays_failed_is_not_reported_as_aborted() -> None:
    """A stage still running when abort lands marks the replay failed again (Sequent): the
    operator believes replay_states, not the abort Job's exit status."""
    world = upgraded_world()
    advance_to(world, "replay")
    world.stage_raises(world.running_job("replay"))
    world.step()
    world.finish_job(world.running_job("abort"), move_database=False)
    world.step()
    status, why = condition(world, "ReplayAborted")
    assert (status, why) == ("False", "AbortFailed")
    found = next(c for c in world.status.conditions if c.type == "ReplayAborted")
    assert "succeeded but replay 1 is still 'failed'" in found.message


def test_clean_up_clears_only_this_projectorsets_projectors() -> None:
    world = upgraded_world()
    advance_to(world, "prepare")
    # prepare failed before Sequent made its replay row: the replaying version the operator
    # registered is left, which the clean-up clears itself.
    world.replay = None
    world.finish_job(world.running_job("prepare"), succeed=False)
    decision = world.step(execute=False)
    assert decision.status.phase is Phase.FAILED
    assert ClearReplaying(("PostProjector",)) in decision.actions
    # Meanwhile another application sharing the schema started a replay of its own.
    world.projectors["Billing::InvoiceProjector"] = ProjectorState("Billing::InvoiceProjector", 2, None, 3)
    world.run(passes=3)
    assert world.projectors["PostProjector"] == ProjectorState("PostProjector", 1, None, None)
    assert world.projectors["Billing::InvoiceProjector"] == ProjectorState("Billing::InvoiceProjector", 2, None, 3)
    assert condition(world, "ReplayAborted") == ("True", "Aborted")


# ---- the migrate stage ----------------------------------------------------------------------------


def test_migrate_runs_first_and_prepare_only_after_it_succeeded() -> None:
    world = upgraded_world(replay={"commands": {"migrate": ["bundle", "exec", "rake", "sequent:db:migrate"]}})
    decision = world.step()
    assert RunStageJob("v2", 1, "migrate") in decision.actions
    assert reason(world) == "Migrating" and world.status.phase is Phase.DEPLOYING
    for _ in range(3):
        decision = world.step()
        assert not any(isinstance(a, RegisterReplaying | RunStageJob) for a in decision.actions)
    world.finish_job(world.running_job("migrate"))
    world.run(passes=10)
    started = [job.stage for job in world.jobs.values()]
    assert started[:2] == ["migrate", "prepare"]
    assert world.service_version == "v2"
    assert started.count("migrate") == 1


def test_migrate_runs_before_an_activation_without_replay_too() -> None:
    world = World(manifest("v1", {"PostProjector": 1, "OldProjector": 1})).serving_v1(
        {"PostProjector": 1, "OldProjector": 1}
    )
    world.upgrade(manifest("v3", {"PostProjector": 1}, replay={"commands": {"migrate": ["migrate"]}}))
    decision = world.step()
    assert RunStageJob("v3", 1, "migrate") in decision.actions
    world.step()
    assert not any(isinstance(a, Activate) for d in world.history for a in d.actions)
    world.run(passes=5)
    assert world.service_version == "v3"
    assert world.projectors["OldProjector"].active_version is None
    activations = [a for d in world.history for a in d.actions if isinstance(a, Activate)]
    assert activations == [Activate({"PostProjector": 1}, ("OldProjector",))]


def test_failed_migration_fails_the_rollout_before_anything_is_replayed() -> None:
    world = upgraded_world(replay={"commands": {"migrate": ["migrate"]}})
    world.step()
    world.finish_job(world.running_job("migrate"), succeed=False)
    decision = world.step()
    assert decision.status.phase is Phase.FAILED and reason(world) == "StageFailed"
    assert "migrate Job blog-v2-a1-migrate failed: BackoffLimitExceeded" in world.status.message
    world.run(passes=3)
    assert world.replay is None and world.replaying() == []
    assert condition(world, "ReplayAborted") == ("True", "Aborted")
    assert world.service_version == "v1" and world.deployments["v2"].replicas == 0


def test_projector_version_of_the_code_other_than_the_spec_stops_before_the_replay() -> None:
    """prepare registers the code's projector versions; when the spec says another, the rollout
    stops right after prepare and names both versions, before anything is replayed."""
    world = upgraded_world()
    advance_to(world, "prepare")
    world.finish_job(world.running_job("prepare"))
    # Sequent's prepare registered the version the code has (3), not the spec's (2).
    world.projectors["PostProjector"] = ProjectorState("PostProjector", 1, None, 3)
    decision = world.step()
    assert decision.status.phase is Phase.PENDING
    assert reason(world) == "ReplayInProgressForOtherTarget"
    assert "PostProjector: version 3 is replaying, the release has 2" in world.status.message
    assert not any(isinstance(a, RunStageJob) for a in decision.actions)
