"""The rollout as a pure phase machine.

``decide`` takes the spec, the last status, what the cluster and the database show now,
and the time, and returns the actions to take next and the new status. It keeps no
memory of its own: everything it needs to carry on after a restart is in the cluster
(Service selector, Deployments, Jobs), in the database (projector_states,
replay_states), or in the status it wrote. The database, never the status, decides
when traffic moves: the Service is switched in the very pass that first sees every
projector of the release active.

Replay stages, each a Job run with the new release's code and verified in the database:

    prepare -> replay -> optimize -> catchup (while lag > maxLag) -> golive

The next stage follows from ``replay_states.state``; a Job that finished without moving
the database to the state its stage promises fails the rollout ("VerificationFailed").
"""

from __future__ import annotations

from datetime import datetime, timedelta

from projectorset.api import Phase, ProjectorSetSpec, ProjectorSetStatus
from projectorset.api.conditions import ConditionType, Reason, progress_message
from projectorset.domain.observation import Activate, ClusterView, DatabaseView, Deactivate, JobState
from projectorset.domain.planning import Plan, plan_upgrade
from projectorset.domain.rollout.decision import (
    BLOCKED_POLL_SECONDS,
    IN_FLIGHT_PHASES,
    LONGEST_POLL_SECONDS,
    ROLLOUT_POLL_SECONDS,
    WATCHED_POLL_SECONDS,
    Decision,
    Pass,
    ended_reason,
    parse_time,
)
from projectorset.domain.rollout.gates import check_results, promotion_gate, with_check_results
from projectorset.domain.rollout.queries import (
    golives_running,
    latest,
    latest_attempt,
    owned_projectors,
    pods_ready,
    release_is_active,
    release_is_live,
    required_missing,
)
from projectorset.domain.rollout.replay import STAGE_REASONS, replay_stages, told_once_failed
from projectorset.domain.rollout.start import attempt_for, migrate, status_lost, torn_down_since
from projectorset.domain.rollout.status_rows import projector_statuses, replay_status
from projectorset.domain.rollout.steady import steady_state
from projectorset.domain.rollout.superseded import superseded_work
from projectorset.domain.rollout.switch import deployed_active_release, follow_database, switch_when_required_active
from projectorset.domain.rollout.teardown import clean_up, cleanup_pending, fail, stay_finished
from projectorset.domain.sequent import DatabaseState, Stage

__all__ = [
    "BLOCKED_POLL_SECONDS",
    "IN_FLIGHT_PHASES",
    "LONGEST_POLL_SECONDS",
    "ROLLOUT_POLL_SECONDS",
    "STAGE_REASONS",
    "WATCHED_POLL_SECONDS",
    "Decision",
    "check_results",
    "decide",
    "owned_projectors",
    "release_is_active",
    "release_is_live",
    "required_missing",
    "with_check_results",
]

# How long new pods may take to get ready before the condition suggests why they do not.
UNREADY_HINT_SECONDS = 120.0


def decide(
    spec: ProjectorSetSpec,
    generation: int,
    status: ProjectorSetStatus,
    cluster: ClusterView,
    database: DatabaseView,
    now: datetime,
) -> Decision:
    if torn_down_since(status, generation, cluster, spec.version):
        status = status.model_copy(update={"target_version": None, "attempt": 0, "replay": None})
    run = Pass(spec, generation, status, cluster, database, now)
    serving = cluster.service_version
    run.remember(active_version=serving)
    target = spec.version

    if not cluster.service_found:
        return _blocked(
            run,
            Reason.SERVICE_NOT_FOUND,
            f"Service {spec.service.name} not found; create it (its selector is switched to the active version)",
        )
    if cluster.secret_problem is not None:
        return _blocked(run, Reason.SECRET_NOT_FOUND, cluster.secret_problem)
    if database.state is None:
        golive = golives_running(cluster)
        if golive and database.error_reason == Reason.PROJECTOR_STATES_LOCKED:
            # golive holds projector_states until it commits: expected, and watched closely.
            run.poll(ROLLOUT_POLL_SECONDS)
            return run.finish(
                Phase.ACTIVATING,
                Reason.GOING_LIVE,
                f"golive is running in Job {golive[0].name} (projector_states locked)",
            )
        reason = database.error_reason or Reason.DATABASE_UNREACHABLE
        message = database.error_message or "the database could not be read"
        run.condition(ConditionType.DATABASE_READY, False, reason, message)
        return _blocked(run, reason, message)
    run.condition(
        ConditionType.DATABASE_READY, True, Reason.CONNECTED, "projector_states and replay_states are readable"
    )

    db = database.state
    plan = plan_upgrade(spec.projector_versions, db, run.owned, spec.required_versions)
    run.remember(
        projectors=projector_statuses(plan, spec.required_versions, db),
        replay=replay_status(status.replay, db, cluster, target, status.attempt),
    )

    if status.target_version == target:
        newest = latest_attempt(cluster, target)
        if newest > status.attempt:
            # A stale status (a lost patch, a restart): the Jobs say which attempt this rollout is at.
            run.remember(attempt=newest)
    # Whatever the spec says now: pods the database refuses writes from must not keep the Service.
    live = deployed_active_release(run, db)
    if live is not None:
        return follow_database(run, live)
    superseded = superseded_work(run, db)
    if superseded is not None:
        return superseded
    if serving == target:
        return steady_state(run, plan, db)
    return _rollout(run, plan, db)


def _blocked(run: Pass, reason: Reason, message: str) -> Decision:
    """An input is missing or unreachable: the phase stays as it was, and so does the reason a
    finished rollout ended with (an outage is not why it failed, and must not become so)."""
    previous = run.previous
    run.poll(BLOCKED_POLL_SECONDS)
    if previous.phase in (Phase.FAILED, Phase.ABORTED):
        if message not in previous.message:
            run.event(reason, message, warning=True)
        ended = progress_message(previous)
        return run.finish(previous.phase, ended_reason(previous), ended, note=f"; {message}")
    return run.finish(previous.phase, reason, message, warning=True)


def _rollout(run: Pass, plan: Plan, db: DatabaseState) -> Decision:
    spec, previous, cluster = run.spec, run.previous, run.cluster
    target = spec.version
    serving = run.memory.active_version

    # A new target, or a retry after a failure once the spec was edited, starts a new attempt.
    # A finished status whose attempt is behind the Jobs is stale: a retry already started.
    finished = (
        previous.phase in (Phase.FAILED, Phase.ABORTED)
        and previous.target_version == target
        and run.memory.attempt == previous.attempt
    )
    if previous.target_version != target:
        run.remember(
            target_version=target,
            attempt=attempt_for(cluster, target, 1, adopt=status_lost(previous)),
            rollout_started_at=run.timestamp(),
            activated_at=None,
            replay=None,
        )
        run.event(Reason.ROLLOUT_STARTED, f"rolling out version {target} (serving: {serving or 'nothing yet'})")
    elif finished and not cleanup_pending(run, db):
        retry = previous.observed_generation is not None and run.generation != previous.observed_generation
        if not retry or spec.abort:
            return stay_finished(run, db)
        finished = False
        attempt = attempt_for(cluster, target, run.memory.attempt + 1, adopt=False)
        run.remember(attempt=attempt, rollout_started_at=run.timestamp(), replay=None)
        run.event(Reason.ROLLOUT_RETRIED, f"retrying version {target} (attempt {attempt}) after a spec change")
    attempt = run.memory.attempt

    # The database is the gate: once the release is active there, traffic moves in this very pass.
    if release_is_active(spec, db, run.owned):
        return switch_when_required_active(run, db)
    golive = latest(cluster.jobs_for(target, attempt, Stage.GOLIVE))
    if golive is not None and plan.to_deactivate and release_is_live(spec, db, run.owned):
        # golive committed. Only now are the projectors the release removed deactivated (a golive
        # that fails leaves them as they were); the new code refuses every write while a projector
        # it does not know is active, so this comes right before the switch, in the same pass.
        removed = tuple(plan.to_deactivate)
        run.act(Deactivate(removed))
        run.event(Reason.PROJECTORS_DEACTIVATED, f"deactivated {', '.join(removed)} (not in version {target})")
        return switch_when_required_active(run, db)

    if finished:
        message = told_once_failed(progress_message(previous), cluster.jobs_for(target, attempt))
        if message != progress_message(previous):
            run.event(ended_reason(previous), message, warning=True)
        return clean_up(run, db, previous.phase, ended_reason(previous), message)

    if spec.abort:
        if golive is not None and golive.state is JobState.RUNNING:
            run.poll(ROLLOUT_POLL_SECONDS)
            return run.finish(Phase.ACTIVATING, Reason.ABORT_WAITING_FOR_GOLIVE, "abort requested; golive is running")
        return clean_up(run, db, Phase.ABORTED, Reason.ABORTED, f"rollout of {target} aborted by spec.abort")

    # golive is one transaction that cannot be stopped: another rollout's golive (the spec moved on
    # while it ran) either lands, and the Service follows the database, or leaves nothing behind.
    # Meanwhile the new version's pods start, outside the Service.
    run.ensure_deployment()
    other = [job for job in golives_running(cluster) if (job.version, job.attempt) != (target, attempt)]
    if other:
        run.poll(ROLLOUT_POLL_SECONDS)
        return run.finish(
            Phase.ACTIVATING,
            Reason.GOING_LIVE,
            f"golive of version {other[0].version} is running in Job {other[0].name}; version {target} rolls out "
            "once it has landed or failed",
        )

    # 1. The release's migrations run first; the new version runs beside the old one, outside the Service.
    run.ensure_deployment()
    migrating = migrate(run, db, attempt)
    if migrating is not None:
        return migrating
    deployment = cluster.deployments.get(target)
    if deployment is not None and deployment.failure:
        return fail(run, db, Reason.DEPLOYMENT_FAILED, f"Deployment of {target}: {deployment.failure}")
    if not pods_ready(deployment, spec):
        ready = f"{deployment.ready_replicas}/{deployment.replicas}" if deployment else "0"
        run.poll(WATCHED_POLL_SECONDS)
        return run.finish(
            Phase.DEPLOYING,
            Reason.DEPLOYING,
            f"waiting for version {target} to be available ({ready} ready){_unready_hint(run)}",
        )

    # 2. States the operator must not paper over.
    if plan.first_install and serving is not None:
        run.poll(BLOCKED_POLL_SECONDS)
        return run.finish(
            Phase.PENDING,
            Reason.PROJECTOR_STATES_EMPTY,
            f"version {serving} serves but projector_states is empty, so nothing says which projector "
            f"versions are live: activate version {serving}'s configuration with its own code, e.g. "
            f"kubectl exec deploy/<its Deployment> -- bin/rails runner 'Sequent.activate_current_configuration!' "
            "(sequent:migrate:offline activates only when a view-schema migration is pending)",
            warning=True,
        )
    if plan.blocked:
        run.poll(BLOCKED_POLL_SECONDS)
        return run.finish(Phase.PENDING, plan.issues[0].reason, "; ".join(i.message for i in plan.issues), warning=True)
    for notice in plan.notices:
        run.condition(ConditionType.PLANNED, True, Reason.ROLLBACK_BY_REPLAY, notice)

    # 3. Nothing to replay: activate the current configuration directly.
    if not plan.needs_replay:
        gate = None if plan.first_install else promotion_gate(run)
        if gate is not None:
            return gate
        run.act(Activate(spec.projector_versions, tuple(plan.to_deactivate)))
        run.poll(ROLLOUT_POLL_SECONDS)
        what = "first install" if plan.first_install else "no projector needs a replay"
        return run.finish(Phase.ACTIVATING, Reason.ACTIVATING, f"{what}: activating version {target}")

    # 4. Replay, stage by stage, as the database says.
    return replay_stages(run, plan, db, attempt, golive)


def _unready_hint(run: Pass) -> str:
    """Past a short while, the likely cause of pods that run but never get ready: a readiness
    probe that needs the release's projectors active, which only golive makes them, and golive
    waits for these pods (seen with a real application: ProgressDeadlineExceeded after 10 min)."""
    started = parse_time(run.memory.rollout_started_at)
    if started is None or run.now - started < timedelta(seconds=UNREADY_HINT_SECONDS):
        return ""
    return (
        "; if its pods run but stay unready, their readiness probe may need the release's projectors "
        "active, which happens only after these pods are ready (the README's 'What the application must "
        "provide')"
    )
