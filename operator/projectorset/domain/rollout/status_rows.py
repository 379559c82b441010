"""The rows of the status a pass reports: each projector, and the replay."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from projectorset.api import REQUIRED_PLAN, ProjectorStatus, ReplayStatus
from projectorset.domain.observation import ClusterView, JobState, JobView
from projectorset.domain.planning import Plan
from projectorset.domain.sequent import DatabaseState, ProjectorState, ReplayState, Stage


def projector_statuses(plan: Plan, required: Mapping[str, int], db: DatabaseState) -> list[ProjectorStatus]:
    """This set's projectors as planned, then the required ones (another set's) as the database
    shows them: what a switch waiting for them (``WaitingForProjectors``) waits on."""
    rows = [(p.name, p.spec_version, p.state, p.change.value) for p in plan.projectors]
    rows += [
        (name, version, db.projectors.get(name) or ProjectorState(name), REQUIRED_PLAN)
        for name, version in sorted(required.items())
    ]
    return [
        ProjectorStatus(
            name=name,
            spec_version=spec_version,
            active_version=state.active_version,
            activating_version=state.activating_version,
            replaying_version=state.replaying_version,
            plan=plan_value,
        )
        for name, spec_version, state, plan_value in rows
    ]


def replay_status(
    previous: ReplayStatus | None, db: DatabaseState, cluster: ClusterView, target: str, attempt: int
) -> ReplayStatus | None:
    replay = db.replay
    if replay is None:
        return previous
    jobs = cluster.jobs_for(target, attempt)
    running = [job for job in jobs if job.state is JobState.RUNNING]
    return ReplayStatus(
        stage=running[-1].stage if running else (previous.stage if previous else None),
        state=replay.state,
        replay_id=replay.id,
        catchup_round=_catchup_rounds(previous, replay, jobs),
        lag=db.replay_lag,
        lag_at_least=db.replay_lag_at_least,
        job=running[-1].name if running else None,
    )


def _catchup_rounds(previous: ReplayStatus | None, replay: ReplayState, jobs: Sequence[JobView]) -> int:
    """Catch-up rounds run for this replay: the highest round of its Jobs or of the status, so a
    deleted Job (a TTL, ``kubectl delete``) neither repeats its round nor resets the count."""
    recorded = previous.catchup_round if previous is not None and previous.replay_id == replay.id else 0
    return max([job.round for job in jobs if job.stage == Stage.CATCHUP] + [recorded])
