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

One pass is a ``decision.Pass``: it reads a status (``read_status``) and builds the one it
will write (``next_status``) with the actions and Events. The modules, in the order of a pass:
``switch`` (the database made a release active: the Service follows), ``superseded`` (what an
earlier rollout left behind), ``steady`` (spec.version serves), and for a rollout ``start``
(attempts, another golive, migrate, the pods), ``gates`` (blocking states, checks, promotion,
pause), ``replay`` (the stages) and ``teardown`` (failure, abort, clean-up); ``status_rows``
builds the status's rows and ``queries`` holds the facts they all ask.
"""

from __future__ import annotations

from datetime import datetime

from projectorset.api import Phase, ProjectorSetSpec, ProjectorSetStatus
from projectorset.api.conditions import ConditionType, Reason, progress_message
from projectorset.domain.observation import ClusterView, DatabaseView, ScaleDeployment
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
)
from projectorset.domain.rollout.gates import blocking_state, check_results, with_check_results
from projectorset.domain.rollout.queries import (
    golives_running,
    latest,
    owned_projectors,
    release_is_active,
    release_is_live,
    required_missing,
)
from projectorset.domain.rollout.replay import STAGE_REASONS, activate_without_replay, replay_stages
from projectorset.domain.rollout.start import (
    adopt_latest_attempt,
    migrate,
    retry_attempt,
    retry_requested,
    rollout_ended,
    start_attempt,
    torn_down_since,
    wait_for_other_golive,
    wait_for_pods,
)
from projectorset.domain.rollout.status_rows import projector_statuses, replay_status
from projectorset.domain.rollout.steady import steady_state
from projectorset.domain.rollout.superseded import superseded_work
from projectorset.domain.rollout.switch import deployed_active_release, follow_database, switch_once_live
from projectorset.domain.rollout.teardown import (
    abort_requested,
    cleanup_pending,
    finish_clean_up,
    stay_finished,
)
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


def decide(
    spec: ProjectorSetSpec,
    generation: int,
    status: ProjectorSetStatus,
    cluster: ClusterView,
    database: DatabaseView,
    now: datetime,
) -> Decision:
    read_status = status
    if torn_down_since(status, generation, cluster, spec.version):
        # Read as if that rollout never started: nothing of it is taken up again.
        read_status = status.model_copy(update={"target_version": None, "attempt": 0, "replay": None})
    run = Pass(spec, generation, read_status, cluster, database, now)
    run.remember(active_version=cluster.service_version)
    missing = _input_missing(run)
    if missing is not None:
        return missing
    db = database.state
    assert db is not None  # _input_missing decided otherwise

    plan = plan_upgrade(spec.projector_versions, db, run.owned, spec.required_versions)
    run.remember(
        projectors=projector_statuses(plan, spec.required_versions, db),
        replay=replay_status(read_status.replay, db, cluster, spec.version, read_status.attempt),
    )
    adopt_latest_attempt(run)
    # Whatever the spec says now: pods the database refuses writes from must not keep the Service.
    live = deployed_active_release(run, db)
    if live is not None:
        return follow_database(run, live)
    superseded = superseded_work(run, db)
    if superseded is not None:
        return superseded
    if cluster.service_version == spec.version:
        return steady_state(run, plan, db)
    _scale_serving(run)
    return _rollout(run, plan, db)


def _scale_serving(run: Pass) -> None:
    """spec.replicas holds for the serving version during a rollout too: kubectl scale or an autoscaler
    on the set scales the pods users reach, not only those of the version still to go live."""
    serving = run.next_status.active_version
    deployment = run.cluster.deployments.get(serving) if serving else None
    if serving and deployment is not None and deployment.replicas != run.spec.replicas:
        run.act(ScaleDeployment(serving, run.spec.replicas))


def _input_missing(run: Pass) -> Decision | None:
    """The Service, the database Secret or the database cannot be read: nothing to decide from
    (but a golive that holds projector_states locked is expected, and watched closely)."""
    cluster, database = run.cluster, run.database
    if not cluster.service_found:
        return _blocked(
            run,
            Reason.SERVICE_NOT_FOUND,
            f"Service {run.spec.service.name} not found; create it (its selector is switched to the active version)",
        )
    if cluster.secret_problem is not None:
        return _blocked(run, Reason.SECRET_NOT_FOUND, cluster.secret_problem)
    if database.state is None:
        golive = golives_running(cluster)
        if golive and database.error_reason == Reason.PROJECTOR_STATES_LOCKED:
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
    return None


def _blocked(run: Pass, reason: Reason, message: str) -> Decision:
    """An input is missing or unreachable: the phase stays as it was, and so does the reason a
    finished rollout ended with (an outage is not why it failed, and must not become so)."""
    last = run.read_status
    run.poll(BLOCKED_POLL_SECONDS)
    if last.phase in (Phase.FAILED, Phase.ABORTED):
        if message not in last.message:
            run.event(reason, message, warning=True)
        ended = progress_message(last)
        return run.finish(last.phase, ended_reason(last), ended, note=f"; {message}")
    return run.finish(last.phase, reason, message, warning=True)


def _rollout(run: Pass, plan: Plan, db: DatabaseState) -> Decision:
    """The Service does not reach spec.version yet: the first step of its rollout that decides.
    Each step returns None when it has nothing to decide in this pass, so ``or`` chains them."""
    ended = rollout_ended(run)
    if run.read_status.target_version != run.spec.version:
        start_attempt(run)
    elif ended and not cleanup_pending(run, db):
        if not retry_requested(run):
            return stay_finished(run, db)
        retry_attempt(run)
        ended = False
    attempt = run.next_status.attempt
    golive = latest(run.cluster.jobs_for(run.spec.version, attempt, Stage.GOLIVE))

    # The database is the gate: once the release is active there, traffic moves in this very pass.
    decided = (
        switch_once_live(run, plan, db, golive)
        or (finish_clean_up(run, db) if ended else None)
        or abort_requested(run, db, golive)
    )
    if decided is not None:
        return decided
    # The new version's pods start now, beside the old ones and outside the Service.
    run.ensure_deployment()
    return (
        wait_for_other_golive(run, attempt)
        or migrate(run, db, attempt)
        or wait_for_pods(run, db)
        or blocking_state(run, plan)
        or activate_without_replay(run, plan)
        or replay_stages(run, plan, db, attempt, golive)
    )
