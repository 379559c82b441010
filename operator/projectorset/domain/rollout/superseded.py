"""Work a rollout left behind when spec.version moved away from it."""

from __future__ import annotations

from projectorset.api import Phase, rfc3339
from projectorset.api.conditions import ConditionType, Reason
from projectorset.domain.observation import JobState, JobView, RunStageJob
from projectorset.domain.rollout.decision import ROLLOUT_POLL_SECONDS, Decision, Pass
from projectorset.domain.rollout.queries import latest, latest_attempt, still_running
from projectorset.domain.rollout.start import current_attempt
from projectorset.domain.rollout.teardown import next_abort_at, stop
from projectorset.domain.sequent import DatabaseState, ReplayState, Stage


def superseded_work(run: Pass, db: DatabaseState) -> Decision | None:
    """What a rollout left behind when spec.version moved away from it (back to the serving
    version, or on to another), or when its Jobs vanished: its running stage Jobs are stopped
    and its replay is aborted before the next rollout starts. A running golive cannot be
    stopped: it is waited for (if it lands, the Service follows the database)."""
    spec, cluster = run.spec, run.cluster
    attempt = current_attempt(run)

    def current(job: JobView) -> bool:
        return job.version == spec.version and job.attempt == attempt

    running = [job for job in cluster.jobs if not current(job) and still_running(job)]
    stages = [job for job in running if job.stage != Stage.ABORT]
    aborting = [job for job in running if job.stage == Stage.ABORT]
    replay = db.replay_in_progress
    # A replay in progress belongs to the current rollout when the status follows a rollout of
    # spec.version (its own clean-up handles it) or once any Job of its attempt exists. Once
    # spec.version serves, no rollout is in progress: a replay left in progress is left over.
    rolling_out = run.read_status.target_version == spec.version and run.next_status.active_version != spec.version
    started_here = rolling_out or any(current(job) for job in cluster.jobs)
    owner = None if replay is None or started_here or running else _replay_owner(run, replay, db)
    if not running and owner is None:
        return None
    phase = Phase.ACTIVE if run.next_status.active_version == spec.version else Phase.PENDING
    # The superseded rollout is over: the next one starts afresh (a new attempt) once this is done.
    run.remember(target_version=None, attempt=0, replay=None)
    run.poll(ROLLOUT_POLL_SECONDS)
    golive = next((job for job in stages if job.stage == Stage.GOLIVE), None)
    if golive is not None:
        run.ensure_deployment()  # spec.version's pods start meanwhile, outside the Service
        return run.finish(
            Phase.ACTIVATING,
            Reason.SUPERSEDED,
            f"golive of version {golive.version} is running in Job {golive.name} and cannot be stopped; "
            f"version {spec.version} rolls out once it has landed or failed",
        )
    stop(run, stages)
    if aborting:
        return run.finish(
            phase, Reason.SUPERSEDED, f"replay {replay.id if replay else ''} is being aborted in Job {aborting[0].name}"
        )
    if replay is None or owner is None:
        return run.finish(phase, Reason.SUPERSEDED, f"stopping Job {stages[0].name} of an earlier rollout")
    version, owner_attempt = owner
    aborts = cluster.jobs_for(version, owner_attempt, Stage.ABORT)
    last = latest(aborts)
    rounds = max((job.round for job in aborts), default=0)
    if last is not None and last.state is JobState.FAILED:
        # Tried and failed: say so, and try again with a growing pause, as for any abort.
        run.condition(
            ConditionType.REPLAY_ABORTED, False, Reason.ABORT_FAILED, f"abort Job {last.name}: {last.message}"
        )
        due = next_abort_at(aborts, run.now)
        if run.now < due:
            run.poll((due - run.now).total_seconds())
            return run.finish(
                phase,
                Reason.SUPERSEDED,
                f"replay {replay.id} of version {version}'s rollout is left over: next abort at {rfc3339(due)}",
            )
    projectors = tuple(sorted(replay.projectors))
    run.act(RunStageJob(version, owner_attempt, Stage.ABORT, round=rounds + 1, projectors=projectors))
    return run.finish(
        phase,
        Reason.SUPERSEDED,
        f"replay {replay.id} ({replay.state}) of version {version}'s rollout is left over: aborting it",
    )


def _replay_owner(run: Pass, replay: ReplayState, db: DatabaseState) -> tuple[str, int] | None:
    """The (version, attempt) of the rollout of this ProjectorSet that started ``replay``, which
    no Job works on any more: the deployed release whose projector versions are the ones
    replaying (its code knows them, so its abort can load them), or else the newest prepare Job.
    None for a replay this ProjectorSet did not start (reported by the plan, never aborted)."""
    cluster = run.cluster
    replaying = {name: db.projectors[name].replaying_version for name in replay.projectors if name in db.projectors}
    for version, deployment in sorted(cluster.deployments.items()):
        release = deployment.projectors or {}
        if replay.projectors and all(
            name in release and replaying.get(name) == release[name] for name in replay.projectors
        ):
            return version, latest_attempt(cluster, version)
    owned = run.owned
    ours = owned is not None and set(replay.projectors) <= {*run.spec.projector_versions, *owned}
    prepares = [job for job in cluster.jobs if job.stage == Stage.PREPARE]
    if prepares and ours:
        newest = max(prepares, key=lambda job: (job.attempt, job.finished_at or run.now))
        return newest.version, newest.attempt
    return None
