"""Failure, abort and clean-up: stop the stages, abort the replay with a back-off, scale down."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from projectorset.api import Phase
from projectorset.api.conditions import ConditionType, Reason, find_condition, progress_message
from projectorset.domain.backoff import Backoff
from projectorset.domain.observation import ClearReplaying, DeleteJob, JobState, JobView, RunStageJob, ScaleDeployment
from projectorset.domain.rollout.decision import ROLLOUT_POLL_SECONDS, Decision, Pass, ended_reason
from projectorset.domain.rollout.queries import golives_running, in_flight, latest, own_projectors, stages_still_running
from projectorset.domain.sequent import DatabaseState, ReplayState, ReplayStateName, Stage

# How long a stage Job that failed inside Sequent may take to exit by itself before it is deleted.
STAGE_EXIT_GRACE_SECONDS = 30.0
# A failed abort Job runs again after this many seconds, doubled after each failure up to the cap.
ABORT_RETRY_SECONDS = 10.0
ABORT_RETRY_MAX_SECONDS = 300.0
ABORT_RETRY_BACKOFF = Backoff(ABORT_RETRY_SECONDS, ABORT_RETRY_MAX_SECONDS)


def cleanup_pending(run: Pass, db: DatabaseState) -> bool:
    # The abort stage may clear the database by itself; the new version must still be scaled down.
    deployment = run.cluster.deployments.get(run.spec.version)
    still_scaled_up = deployment is not None and deployment.replicas > 0
    return (
        bool(stages_still_running(run.cluster))
        or db.replay_in_progress is not None
        or in_flight(db, own_projectors(run.spec, db))
        or still_scaled_up
    )


def stop(run: Pass, jobs: Iterable[JobView]) -> None:
    """Delete the Jobs of ``jobs`` that run and are not being deleted yet."""
    run.act(*(DeleteJob(job.name) for job in jobs if job.state is JobState.RUNNING and not job.deleting))


def next_abort_at(aborts: Sequence[JobView], now: datetime) -> datetime:
    """When an abort Job runs again after ``aborts`` (tried, the last one over): a back-off from
    the last one's end whose ceiling doubles with each try, up to ABORT_RETRY_MAX_SECONDS, with
    full jitter seeded by the last Job's name, so that every pass finds the same due time while
    sets whose aborts failed together (a database outage) do not all try again together."""
    last = latest(aborts)
    assert last is not None, "a back-off follows a try"
    delay = ABORT_RETRY_BACKOFF.delay_seeded(len(aborts) - 1, last.name)
    return (last.finished_at or now) + timedelta(seconds=delay)


def abort_requested(run: Pass, db: DatabaseState, golive: JobView | None) -> Decision | None:
    """spec.abort: the rollout is cleaned up, once its running golive (one transaction) is over."""
    if not run.spec.abort:
        return None
    if golive is not None and golive.state is JobState.RUNNING:
        run.poll(ROLLOUT_POLL_SECONDS)
        return run.finish(Phase.ACTIVATING, Reason.ABORT_WAITING_FOR_GOLIVE, "abort requested; golive is running")
    return clean_up(run, db, Phase.ABORTED, Reason.ABORTED, f"rollout of {run.spec.version} aborted by spec.abort")


def finish_clean_up(run: Pass, db: DatabaseState) -> Decision:
    """A failed or aborted rollout goes on cleaning up, keeping the reason it ended with (and
    telling the failure again once the stage Job it was seen under has failed)."""
    last = run.read_status
    reason = ended_reason(last)
    message = told_once_failed(progress_message(last), run.cluster.jobs_for(run.spec.version, run.next_status.attempt))
    if message != progress_message(last):
        run.event(reason, message, warning=True)
    return clean_up(run, db, last.phase, reason, message)


def job_failed(job: JobView) -> str:
    """How a failed stage Job is told in a failure message."""
    return f" ({job.stage} Job {job.name} failed: {job.message})"


def seen_running(job: JobView) -> str:
    """How a stage Job still running when the failure was seen is told."""
    return f" (seen while {job.stage} Job {job.name} was running)"


def told_once_failed(message: str, jobs: Sequence[JobView]) -> str:
    """A failure seen while its stage still ran (Sequent marks the replay failed, then the process
    exits) told again once the stage's Job has failed: with the error its output gives."""
    for job in jobs:
        if job.state is JobState.FAILED and seen_running(job) in message:
            return message.replace(seen_running(job), job_failed(job))
    return message


def fail(run: Pass, db: DatabaseState, reason: Reason, message: str) -> Decision:
    return clean_up(run, db, Phase.FAILED, reason, message)


def clean_up(run: Pass, db: DatabaseState, phase: Phase, reason: Reason, message: str) -> Decision:
    """Stop the stages, abort the replay until replay_states says so, clear this ProjectorSet's
    replaying/activating versions, scale the new version down; the old version keeps serving."""
    spec, cluster = run.spec, run.cluster
    target = spec.version
    warning = phase is Phase.FAILED
    run.poll(ROLLOUT_POLL_SECONDS)
    if golives_running(cluster):
        # golive is one transaction: it either lands (and traffic moves) or leaves nothing behind.
        return run.finish(Phase.ACTIVATING, Reason.GOING_LIVE, f"{message}; waiting for golive to finish first")

    # Sequent's abort does not stop a stage that still runs, and such a stage would mark the replay
    # failed again when it fails later: abort only once every stage's pods are gone.
    running = stages_still_running(cluster)
    if running:
        names = ", ".join(job.name for job in running)
        # A stage that failed inside Sequent (it marked the replay failed) exits by itself right
        # after: it keeps its Job, pod and output for a while. One asked to stop, or stuck, is deleted.
        failed_since = _failed_since(run) or run.now
        grace_over = run.now >= failed_since + timedelta(seconds=STAGE_EXIT_GRACE_SECONDS)
        if phase is not Phase.FAILED or grace_over:
            stop(run, running)
            what = f"stopping {names}"
        else:
            what = f"waiting for {names} to exit"
        run.condition(ConditionType.REPLAY_ABORTED, False, Reason.ABORTING, f"{what} before the abort")
        return run.finish(phase, reason, message, note=f"; {what} before the abort", warning=warning)

    replay = db.replay_in_progress
    if replay is not None:
        return _abort_replay(run, replay, phase, reason, message)

    # Sequent's abort clears the replay's projectors; what the operator registered itself (before a
    # prepare that never made a replay) it clears here, for its own projectors only.
    own = own_projectors(spec, db)
    registered = in_flight(db, own)
    if registered:
        run.act(ClearReplaying(own))
    deployment = cluster.deployments.get(target)
    if deployment is not None and deployment.replicas > 0:
        run.act(ScaleDeployment(target, 0))
    serving = run.next_status.active_version
    note = f"; version {serving} keeps serving" if serving else ""
    if not registered:
        run.condition(ConditionType.REPLAY_ABORTED, True, Reason.ABORTED, _aborted_message(db))
    return run.finish(phase, reason, message, note=note, warning=warning)


def _failed_since(run: Pass) -> datetime | None:
    """When this rollout turned Failed, as its status says; None in the pass that fails it."""
    if run.read_status.phase is not Phase.FAILED:
        return None
    progressing = find_condition(run.read_status.conditions, ConditionType.PROGRESSING)
    if progressing is None or progressing.status != "False":
        return None
    return progressing.last_transition_time


def _abort_replay(run: Pass, replay: ReplayState, phase: Phase, reason: Reason, message: str) -> Decision:
    """Run abort Jobs, one at a time, until replay_states no longer shows the replay in progress;
    after a failure the next one waits a back-off that doubles, shown in ReplayAborted."""
    spec = run.spec
    attempt = run.next_status.attempt
    warning = phase is Phase.FAILED
    projectors = tuple(sorted(replay.projectors))
    note = f"; aborting replay {replay.id}"
    aborts = run.cluster.jobs_for(spec.version, attempt, Stage.ABORT)
    last = latest(aborts)
    if last is None:
        run.act(RunStageJob(spec.version, attempt, Stage.ABORT, projectors=projectors))
        run.condition(
            ConditionType.REPLAY_ABORTED, False, Reason.ABORTING, f"replay {replay.id} is {replay.state!r}: aborting it"
        )
        return run.finish(phase, reason, message, note=note, warning=warning)
    if last.state is JobState.RUNNING:
        run.condition(
            ConditionType.REPLAY_ABORTED,
            False,
            Reason.ABORTING,
            f"abort Job {last.name} runs (replay {replay.id} is {replay.state!r})",
        )
        return run.finish(phase, reason, message, note=note, warning=warning)
    # The last abort is over and the replay is still in progress: it failed (or a stage marked the
    # replay failed again after it). Try again, later each time.
    tries = len(aborts)
    why = (
        f"abort Job {last.name} failed: {last.message}"
        if last.state is JobState.FAILED
        else f"abort Job {last.name} succeeded but replay {replay.id} is still {replay.state!r}"
    )
    due = next_abort_at(aborts, run.now)
    if run.now >= due:
        run.act(RunStageJob(spec.version, attempt, Stage.ABORT, round=last.round + 1, projectors=projectors))
        run.event(Reason.ABORT_FAILED, f"{why}; running abort again (try {tries + 1})", warning=True)
        detail = f"{why}; running abort again (try {tries + 1})"
    else:
        wait = (due - run.now).total_seconds()
        run.poll(max(0.5, wait))
        detail = f"{why}; abort runs again in {wait:.0f} s (try {tries + 1}, {tries} failed)"
    run.condition(ConditionType.REPLAY_ABORTED, False, Reason.ABORT_FAILED, detail)
    return run.finish(phase, reason, message, note=note, warning=warning)


def _aborted_message(db: DatabaseState) -> str:
    replay = db.replay
    if replay is not None and replay.state == ReplayStateName.ABORTED:
        return f"replay {replay.id} is aborted in replay_states; replaying and activating versions are cleared"
    return "no replay in progress; replaying and activating versions are cleared"


def stay_finished(run: Pass, db: DatabaseState) -> Decision:
    """A failed or aborted rollout, cleaned up, waits for a spec change (a retry) with spec.abort false."""
    last = run.read_status
    run.condition(ConditionType.REPLAY_ABORTED, True, Reason.ABORTED, _aborted_message(db))
    serving = run.next_status.active_version
    note = f"; version {serving} keeps serving" if serving else ""
    note += "; set spec.abort to false to retry" if run.spec.abort else "; edit the spec to retry"
    return run.finish(last.phase, ended_reason(last), progress_message(last), note=note)
