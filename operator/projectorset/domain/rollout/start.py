"""Starting a rollout: attempt bookkeeping and the migrate stage."""

from __future__ import annotations

from projectorset.api import Phase, ProjectorSetStatus
from projectorset.api.conditions import Reason
from projectorset.domain.observation import ClusterView, JobState, RunStageJob
from projectorset.domain.rollout.decision import WATCHED_POLL_SECONDS, Decision, Pass
from projectorset.domain.rollout.gates import paused
from projectorset.domain.rollout.queries import latest, latest_attempt
from projectorset.domain.rollout.teardown import fail
from projectorset.domain.sequent import DatabaseState, Stage


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
    if run.previous.target_version == run.spec.version:
        return run.memory.attempt
    return attempt_for(run.cluster, run.spec.version, 1, adopt=status_lost(run.previous))


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
