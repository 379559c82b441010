"""Starting a rollout: attempt bookkeeping, the wait for another golive, the migrate stage and the pods."""

from __future__ import annotations

from datetime import timedelta

from projectorset.api import Phase, ProjectorSetStatus
from projectorset.api.conditions import Reason
from projectorset.domain.observation import ClusterView, JobState, RunStageJob
from projectorset.domain.rollout.decision import ROLLOUT_POLL_SECONDS, WATCHED_POLL_SECONDS, Decision, Pass
from projectorset.domain.rollout.gates import paused
from projectorset.domain.rollout.queries import golives_running, latest, latest_attempt, pods_ready
from projectorset.domain.rollout.teardown import fail
from projectorset.domain.sequent import DatabaseState, Stage

# How long new pods may take to get ready before the condition suggests why they do not.
UNREADY_HINT_SECONDS = 120.0


def torn_down_since(status: ProjectorSetStatus, generation: int, cluster: ClusterView, target: str) -> bool:
    """A stale status (a lost patch, a restart) of an in-flight rollout of ``target`` whose attempt
    has an abort Job, while the spec changed since: that rollout was torn down after the status was
    written (superseded, or failed and then edited), so its Jobs are never taken up again."""
    return (
        status.target_version == target
        and status.phase not in (Phase.FAILED, Phase.ABORTED)
        and status.observed_generation is not None
        and status.observed_generation != generation
        and bool(cluster.jobs_for(target, status.attempt, Stage.ABORT))
    )


def status_lost(status: ProjectorSetStatus) -> bool:
    """No status at all (never written, or lost): the Jobs are all that is left to go by."""
    return status.observed_generation is None


def attempt_for(cluster: ClusterView, target: str, lowest: int, *, adopt: bool) -> int:
    """The attempt a rollout of ``target`` starting now takes, at least ``lowest``.

    Never one whose Jobs already exist (v1 -> v2 -> v1 -> v2 must not find the first v2
    rollout's Jobs by name). With ``adopt`` (the status was lost), the latest attempt while one
    of its stage Jobs still runs: the rollout that status recorded carries on. An abort Job, or a
    Job being deleted, means that attempt is being torn down: never adopted."""
    newest = latest_attempt(cluster, target)
    carrying_on = any(
        job.state is JobState.RUNNING and not job.deleting and job.stage != Stage.ABORT
        for job in cluster.jobs_for(target, newest)
    )
    if adopt and newest >= lowest and carrying_on:
        return newest
    return max(lowest, newest + 1)


def current_attempt(run: Pass) -> int:
    """The attempt of spec.version's rollout as far as the status and the running Jobs tell."""
    if run.read_status.target_version == run.spec.version:
        return run.next_status.attempt
    return attempt_for(run.cluster, run.spec.version, 1, adopt=status_lost(run.read_status))


def migrate(run: Pass, db: DatabaseState, attempt: int) -> Decision | None:
    """Sequent's workflow runs the release's migrations before prepare (which copies the view
    tables with pg_dump --strict-names, so a table no migration created fails it). None: done."""
    spec, cluster = run.spec, run.cluster
    if not spec.replay.commands.migrate:
        return None
    job = latest(cluster.jobs_for(spec.version, attempt, Stage.MIGRATE))
    if job is None:
        later = [j for j in cluster.jobs_for(spec.version, attempt) if j.stage != Stage.ABORT]
        if later or db.replay_in_progress is not None:
            return None  # this attempt is past its migrations (their Job is gone)
        if spec.paused:
            return paused(run)
        run.act(RunStageJob(spec.version, attempt, Stage.MIGRATE))
        run.poll(WATCHED_POLL_SECONDS)
        return run.finish(Phase.DEPLOYING, Reason.MIGRATING, f"migrating the database for version {spec.version}")
    if job.state is JobState.RUNNING:
        run.poll(WATCHED_POLL_SECONDS)
        return run.finish(Phase.DEPLOYING, Reason.MIGRATING, f"migrate is running in Job {job.name}")
    if job.state is JobState.FAILED:
        return fail(run, db, Reason.STAGE_FAILED, f"migrate Job {job.name} failed: {job.message}")
    return None


def adopt_latest_attempt(run: Pass) -> None:
    """A stale status (a lost patch, a restart) of this rollout: the Jobs say which attempt it is at."""
    if run.read_status.target_version != run.spec.version:
        return
    newest = latest_attempt(run.cluster, run.spec.version)
    if newest > run.read_status.attempt:
        run.remember(attempt=newest)


def rollout_ended(run: Pass) -> bool:
    """The status says this rollout of spec.version failed or was aborted. A finished status whose
    attempt is behind the Jobs is stale: a retry already started."""
    last = run.read_status
    return (
        last.phase in (Phase.FAILED, Phase.ABORTED)
        and last.target_version == run.spec.version
        and run.next_status.attempt == last.attempt
    )


def retry_requested(run: Pass) -> bool:
    """An ended rollout starts again once the spec was edited, unless spec.abort holds it."""
    last = run.read_status
    edited = last.observed_generation is not None and run.generation != last.observed_generation
    return edited and not run.spec.abort


def start_attempt(run: Pass) -> None:
    """A new target: its rollout starts with its first attempt (or carries on one its Jobs show)."""
    target = run.spec.version
    run.remember(
        target_version=target,
        attempt=attempt_for(run.cluster, target, 1, adopt=status_lost(run.read_status)),
        rollout_started_at=run.timestamp(),
        activated_at=None,
        replay=None,
    )
    serving = run.next_status.active_version
    run.event(Reason.ROLLOUT_STARTED, f"rolling out version {target} (serving: {serving or 'nothing yet'})")


def retry_attempt(run: Pass) -> None:
    """A retry after a failure, once the spec was edited: a new attempt."""
    target = run.spec.version
    attempt = attempt_for(run.cluster, target, run.next_status.attempt + 1, adopt=False)
    run.remember(attempt=attempt, rollout_started_at=run.timestamp(), replay=None)
    run.event(Reason.ROLLOUT_RETRIED, f"retrying version {target} (attempt {attempt}) after a spec change")


def wait_for_other_golive(run: Pass, attempt: int) -> Decision | None:
    """golive is one transaction that cannot be stopped: another rollout's golive (the spec moved on
    while it ran) either lands, and the Service follows the database, or leaves nothing behind."""
    target = run.spec.version
    other = [job for job in golives_running(run.cluster) if (job.version, job.attempt) != (target, attempt)]
    if not other:
        return None
    run.poll(ROLLOUT_POLL_SECONDS)
    return run.finish(
        Phase.ACTIVATING,
        Reason.GOING_LIVE,
        f"golive of version {other[0].version} is running in Job {other[0].name}; version {target} rolls out "
        "once it has landed or failed",
    )


def wait_for_pods(run: Pass, db: DatabaseState) -> Decision | None:
    """The new version's Deployment must be available before anything is replayed or activated."""
    target = run.spec.version
    deployment = run.cluster.deployments.get(target)
    if deployment is not None and deployment.failure:
        return fail(run, db, Reason.DEPLOYMENT_FAILED, f"Deployment of {target}: {deployment.failure}")
    if pods_ready(deployment, run.spec):
        return None
    ready = f"{deployment.ready_replicas}/{deployment.replicas}" if deployment else "0"
    run.poll(WATCHED_POLL_SECONDS)
    return run.finish(
        Phase.DEPLOYING,
        Reason.DEPLOYING,
        f"waiting for version {target} to be available ({ready} ready){_unready_hint(run)}",
    )


def _unready_hint(run: Pass) -> str:
    """Past a short while, the likely cause of pods that run but never get ready: a readiness
    probe that needs the release's projectors active, which only golive makes them, and golive
    waits for these pods (seen with a real application: ProgressDeadlineExceeded after 10 min)."""
    started = run.next_status.rollout_started_at
    if started is None or run.now - started < timedelta(seconds=UNREADY_HINT_SECONDS):
        return ""
    return (
        "; if its pods run but stay unready, their readiness probe may need the release's projectors "
        "active, which happens only after these pods are ready (the README's 'What the application must "
        "provide')"
    )
