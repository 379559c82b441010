"""The replay stages, each a Job verified in the database:

prepare -> replay -> optimize -> catchup (while lag > maxLag) -> golive
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from projectorset.api import Phase
from projectorset.api.conditions import Reason
from projectorset.domain.observation import Activate, JobState, JobView, RegisterReplaying, RunStageJob
from projectorset.domain.planning import Plan
from projectorset.domain.rollout.decision import ROLLOUT_POLL_SECONDS, Decision, Pass
from projectorset.domain.rollout.gates import failed_checks, paused, promotion_gate, run_checks
from projectorset.domain.rollout.queries import latest
from projectorset.domain.rollout.teardown import fail, job_failed, seen_running
from projectorset.domain.sequent import (
    STAGES,
    DatabaseState,
    ReplayState,
    ReplayStateName,
    Stage,
    stage_at_work,
    stage_following,
)

# The Progressing reason while each stage's Job runs.
STAGE_REASONS: Mapping[str, Reason] = {
    Stage.PREPARE: Reason.PREPARING,
    Stage.REPLAY: Reason.REPLAYING,
    Stage.OPTIMIZE: Reason.OPTIMIZING,
    Stage.CATCHUP: Reason.CATCHING_UP,
    Stage.GOLIVE: Reason.GOING_LIVE,
}


def activate_without_replay(run: Pass, plan: Plan) -> Decision | None:
    """Nothing to replay: the current configuration is activated directly (after the promotion gate)."""
    if plan.needs_replay:
        return None
    gate = None if plan.first_install else promotion_gate(run)
    if gate is not None:
        return gate
    run.act(Activate(run.spec.projector_versions, tuple(plan.to_deactivate)))
    run.poll(ROLLOUT_POLL_SECONDS)
    what = "first install" if plan.first_install else "no projector needs a replay"
    return run.finish(Phase.ACTIVATING, Reason.ACTIVATING, f"{what}: activating version {run.spec.version}")


def replay_stages(run: Pass, plan: Plan, db: DatabaseState, attempt: int, golive: JobView | None) -> Decision:
    spec, cluster = run.spec, run.cluster
    target = spec.version
    to_replay = plan.to_replay
    projectors = tuple(sorted(to_replay))
    replay = db.replay_in_progress
    run.poll(ROLLOUT_POLL_SECONDS)

    if golive is not None:
        if golive.state is JobState.RUNNING:
            return run.finish(Phase.ACTIVATING, Reason.GOING_LIVE, f"golive is running in Job {golive.name}")
        if golive.state is JobState.FAILED:
            return fail(run, db, Reason.STAGE_FAILED, f"golive Job {golive.name} failed: {golive.message}")
        return fail(
            run,
            db,
            Reason.VERIFICATION_FAILED,
            f"golive Job {golive.name} succeeded but the database does not show version {target} active",
        )

    if replay is None:
        prepare = latest(cluster.jobs_for(target, attempt, Stage.PREPARE))
        if prepare is not None:
            return _expect_running(run, db, prepare)
        if run.spec.paused:
            return paused(run)
        registered = all(db.projectors.get(n) and db.projectors[n].replaying_version == v for n, v in to_replay.items())
        if not registered:
            run.act(RegisterReplaying(to_replay))
        run.act(RunStageJob(target, attempt, Stage.PREPARE, projectors=projectors))
        names = ", ".join(f"{name} v{version}" for name, version in sorted(to_replay.items()))
        return run.finish(Phase.REPLAYING, Reason.PREPARING, f"replaying {names}: prepare")

    if replay.state == ReplayStateName.FAILED:
        # Sequent marked the replay failed: it stays in progress (and holds the replay slot) until aborted.
        return fail(run, db, Reason.REPLAY_FAILED, _replay_failed_message(replay, cluster.jobs_for(target, attempt)))

    working = stage_at_work(replay.state)
    if working is not None:
        job = latest(cluster.jobs_for(target, attempt, working))
        if job is None:
            return fail(
                run,
                db,
                Reason.STAGE_INTERRUPTED,
                f"replay is {replay.state} but no {working} Job of this rollout exists",
            )
        return _expect_running(run, db, job)

    if replay.state != ReplayStateName.OPTIMIZED:
        next_stage = stage_following(replay.state)
        assert next_stage is not None, f"no stage follows {replay.state!r}"  # the plan refuses unknown states
        job = latest(cluster.jobs_for(target, attempt, next_stage))
        if job is not None:
            return _expect_running(run, db, job)
        if run.spec.paused:
            return paused(run)
        run.act(RunStageJob(target, attempt, next_stage, projectors=projectors))
        return run.finish(Phase.REPLAYING, STAGE_REASONS[next_stage], f"replay {replay.id}: {next_stage}")

    # optimized: catch up until the lag is small, then go live.
    lag = db.replay_lag or 0
    lag_text = f"{'at least ' if db.replay_lag_at_least else ''}{lag} events"
    last = latest(cluster.jobs_for(target, attempt, Stage.CATCHUP))
    if last is not None and last.state is not JobState.SUCCEEDED:
        return _expect_running(run, db, last)
    failed = failed_checks(run, db, attempt)
    if failed is not None:
        return failed
    if lag > spec.replay.catchup.max_lag:
        rounds = run.next_status.replay.catchup_round if run.next_status.replay is not None else 0
        if rounds >= spec.replay.catchup.max_rounds:
            return fail(
                run,
                db,
                Reason.CATCHUP_DID_NOT_CONVERGE,
                f"lag is still {lag_text} after {rounds} catch-up rounds (bound {spec.replay.catchup.max_lag})",
            )
        if run.spec.paused:
            return paused(run)
        run.act(RunStageJob(target, attempt, Stage.CATCHUP, round=rounds + 1, projectors=projectors))
        return run.finish(Phase.REPLAYING, Reason.CATCHING_UP, f"catch-up round {rounds + 1}: lag {lag_text}")

    checking = run_checks(run, attempt, lag)
    if checking is not None:
        return checking
    gate = promotion_gate(run)
    if gate is not None:
        return gate
    # Removed projectors stay active until golive commits (see switch.switch_once_live): a golive may still fail.
    run.act(RunStageJob(target, attempt, Stage.GOLIVE, projectors=projectors))
    return run.finish(Phase.ACTIVATING, Reason.GOING_LIVE, f"lag {lag} events: golive")


def _replay_failed_message(replay: ReplayState, jobs: Sequence[JobView]) -> str:
    message = f"replay {replay.id} is 'failed' in replay_states: a stage raised"
    failed = [job for job in jobs if job.state is JobState.FAILED and job.stage != Stage.ABORT]
    running = [job for job in jobs if job.state is JobState.RUNNING and job.stage != Stage.ABORT]
    if failed:
        return message + job_failed(failed[-1])
    if running:
        # Said when the failure was seen; once the Job has failed, told_once_failed says that instead.
        return message + seen_running(running[-1])
    return message


def _stage_reason(stage: str) -> Reason:
    return STAGE_REASONS.get(stage, Reason.REPLAYING)


def _expect_running(run: Pass, db: DatabaseState, job: JobView) -> Decision:
    """A stage Job exists: wait while it runs; a finished one must have moved the database on."""
    if job.state is JobState.RUNNING:
        phase = Phase.ACTIVATING if job.stage == Stage.GOLIVE else Phase.REPLAYING
        return run.finish(phase, _stage_reason(job.stage), f"{job.stage} is running in Job {job.name}")
    if job.state is JobState.FAILED:
        return fail(run, db, Reason.STAGE_FAILED, f"{job.stage} Job {job.name} failed: {job.message}")
    expected = STAGES[Stage(job.stage)].after
    replay = db.replay_in_progress
    found = f"replay_states is {replay.state!r}" if replay is not None else "replay_states shows no replay in progress"
    return fail(
        run,
        db,
        Reason.VERIFICATION_FAILED,
        f"{job.stage} Job {job.name} succeeded but {found}; after {job.stage} it should be {expected.value!r}",
    )
