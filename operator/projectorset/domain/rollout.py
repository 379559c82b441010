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

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from projectorset.api import (
    REQUIRED_PLAN,
    CheckResult,
    Condition,
    Phase,
    ProjectorSetSpec,
    ProjectorSetStatus,
    ProjectorStatus,
    Promotion,
    ReplayStatus,
    rfc3339,
    utc_seconds,
)
from projectorset.api.conditions import (
    ConditionType,
    Reason,
    find_condition,
    progress_message,
    progress_reason,
    reason_named,
    set_condition,
)
from projectorset.domain.observation import (
    Action,
    Activate,
    ClearReplaying,
    ClusterView,
    DatabaseView,
    Deactivate,
    DeleteDeployment,
    DeleteJob,
    DeploymentView,
    EnsureDeployment,
    Event,
    JobState,
    JobView,
    RegisterReplaying,
    RunChecks,
    RunStageJob,
    ScaleDeployment,
    SwitchService,
)
from projectorset.domain.planning import Change, Plan, plan_upgrade
from projectorset.domain.resources import stale_template
from projectorset.domain.sequent import (
    STAGES,
    DatabaseState,
    ProjectorState,
    ReplayState,
    ReplayStateName,
    Stage,
    stage_at_work,
    stage_following,
)

# How often the database is read while a rollout runs, and while it waits for a human or an outage.
ROLLOUT_POLL_SECONDS = 2.0
BLOCKED_POLL_SECONDS = 10.0
# While only Kubernetes objects are awaited (pods becoming ready, a migrate Job), their watch
# events wake the set; this poll is the safety net. A 2 s poll would make a thousand sets starting
# at once read the cluster hundreds of times a second for nothing.
WATCHED_POLL_SECONDS = 30.0
# How long new pods may take to get ready before the condition suggests why they do not.
UNREADY_HINT_SECONDS = 120.0
# No pass asks to sleep longer than this (a scaleDownDelaySeconds of years must not overflow a timer).
LONGEST_POLL_SECONDS = 300.0

# The Progressing reason while each stage's Job runs.
STAGE_REASONS: Mapping[str, Reason] = {
    Stage.PREPARE: Reason.PREPARING,
    Stage.REPLAY: Reason.REPLAYING,
    Stage.OPTIMIZE: Reason.OPTIMIZING,
    Stage.CATCHUP: Reason.CATCHING_UP,
    Stage.GOLIVE: Reason.GOING_LIVE,
}

# How long a stage Job that failed inside Sequent may take to exit by itself before it is deleted.
STAGE_EXIT_GRACE_SECONDS = 30.0
# A failed abort Job runs again after this many seconds, doubled after each failure up to the cap.
ABORT_RETRY_SECONDS = 10.0
ABORT_RETRY_MAX_SECONDS = 300.0

IN_FLIGHT_PHASES = frozenset({Phase.DEPLOYING, Phase.REPLAYING, Phase.ACTIVATING, Phase.SWITCHING, Phase.PAUSED})
# The status fields a pass rewrites every time; the others it carries forward unless it changes them.
_PER_PASS_FIELDS = frozenset({"phase", "message", "observed_generation", "conditions"})


@dataclass(frozen=True)
class Decision:
    actions: tuple[Action, ...]
    status: ProjectorSetStatus
    events: tuple[Event, ...]
    # Seconds until the next pass even if nothing changes; None: wait for a watch event.
    requeue_after: float | None
    # golive or an activation is under way: watch projector_states closely, so that traffic
    # moves within milliseconds of the commit rather than at the next pass.
    await_activation: bool = False
    # This pass first saw the release active in the database (the start of the switch latency).
    activated: bool = False
    # This pass turned the rollout Failed, for this reason.
    failure: Reason | None = None
    # This pass may have made projectors live that other sets on the event store wait for
    # (requiredProjectors): the controller wakes them rather than leaving them to their next poll.
    store_changed: bool = False


@dataclass
class _Pass:
    """The mutable scratch state of one ``decide`` call."""

    spec: ProjectorSetSpec
    generation: int
    previous: ProjectorSetStatus
    cluster: ClusterView
    database: DatabaseView
    now: datetime
    # The status carried forward; ``finish`` sets its per-pass fields.
    memory: ProjectorSetStatus = field(init=False)
    conditions: list[Condition] = field(init=False)
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    activated: bool = False

    def __post_init__(self) -> None:
        self.memory = self.previous
        self.conditions = list(self.previous.conditions)

    # -- helpers used by the steps --

    def remember(self, **changes: Any) -> None:
        """Change status fields carried forward to the next pass."""
        unknown = changes.keys() - ProjectorSetStatus.model_fields.keys() | (changes.keys() & _PER_PASS_FIELDS)
        assert not unknown, f"not a carried status field: {sorted(unknown)}"
        self.memory = self.memory.model_copy(update=changes)

    def timestamp(self) -> datetime:
        """The pass's time as the status keeps it."""
        return utc_seconds(self.now)

    def condition(self, type_: ConditionType, status: bool | None, reason: Reason, message: str = "") -> None:
        self.conditions = set_condition(self.conditions, type_, status, reason, message, self.generation, self.now)

    def ensure_deployment(self) -> None:
        """Ask for spec.version's Deployment only when it is missing, has other replicas or runs
        another template: the cluster view already shows it, so a pass need not read it again."""
        deployment = self.cluster.deployments.get(self.spec.version)
        if deployment is None or deployment.replicas != self.spec.replicas or stale_template(deployment, self.spec):
            self.act(EnsureDeployment(self.spec.version, self.spec.replicas))

    def act(self, *actions: Action) -> None:
        self.actions.extend(actions)

    def event(self, reason: Reason, message: str, warning: bool = False) -> None:
        self.events.append(Event("Warning" if warning else "Normal", reason, message))

    def poll(self, seconds: float) -> None:
        seconds = min(seconds, LONGEST_POLL_SECONDS)
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)

    def finish(self, phase: Phase, reason: Reason, message: str, *, note: str = "", warning: bool = False) -> Decision:
        """Build the decision; an Event accompanies every change of phase or reason.

        ``message`` is the cause (kept in the Progressing condition); ``note`` adds what
        happens about it, for status.message only."""
        changed = phase != self.previous.phase or reason != progress_reason(self.previous)
        if changed:
            self.event(reason, message + note, warning=warning)
        progressing = phase in IN_FLIGHT_PHASES and phase is not Phase.PAUSED
        self.condition(ConditionType.PROGRESSING, progressing, reason, message)
        ready = phase is Phase.ACTIVE and self.memory.active_version == self.spec.version
        self.condition(
            ConditionType.READY,
            ready,
            Reason.ACTIVE if ready else reason,
            f"version {self.spec.version} serves" if ready else message,
        )
        status = self.memory.model_copy(
            update={
                "phase": phase,
                "message": message + note,
                "observed_generation": self.generation,
                "conditions": self.conditions,
            }
        )
        return Decision(
            tuple(self.actions),
            status,
            tuple(self.events),
            self.requeue_after,
            # Waiting for another set's projectors can take that set's whole replay: polled, not watched.
            await_activation=phase is Phase.ACTIVATING and reason is not Reason.WAITING_FOR_PROJECTORS,
            activated=self.activated,
            failure=reason if phase is Phase.FAILED and changed else None,
            store_changed=self.activated
            or any(isinstance(action, (Activate, Deactivate)) for action in self.actions)
            or (reason is Reason.WAITING_FOR_PROJECTORS and changed),
        )


def _ended_reason(status: ProjectorSetStatus) -> Reason:
    """The reason a finished rollout ended with, as its status recorded it."""
    return reason_named(progress_reason(status)) or Reason.FAILED


# ---- the machine --------------------------------------------------------------------------------


def decide(
    spec: ProjectorSetSpec,
    generation: int,
    status: ProjectorSetStatus,
    cluster: ClusterView,
    database: DatabaseView,
    now: datetime,
) -> Decision:
    if _torn_down_since(status, generation, cluster, spec.version):
        status = status.model_copy(update={"target_version": None, "attempt": 0, "replay": None})
    run = _Pass(spec, generation, status, cluster, database, now)
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
        golive = [job for job in cluster.jobs if job.stage == Stage.GOLIVE and job.state is JobState.RUNNING]
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
    owned = owned_projectors(cluster)
    plan = plan_upgrade(spec.projector_versions, db, owned, spec.required_versions)
    run.remember(
        projectors=_projector_statuses(plan, spec.required_versions, db),
        replay=_replay_status(status.replay, db, cluster, target, status.attempt),
    )

    if status.target_version == target:
        latest = max((job.attempt for job in cluster.jobs if job.version == target), default=0)
        if latest > status.attempt:
            # A stale status (a lost patch, a restart): the Jobs say which attempt this rollout is at.
            run.remember(attempt=latest)
    # Whatever the spec says now: pods the database refuses writes from must not keep the Service.
    live = _deployed_active_release(run, db)
    if live is not None:
        return _follow_database(run, live)
    superseded = _superseded_work(run, db)
    if superseded is not None:
        return superseded
    if serving == target:
        return _steady(run, plan, db)
    _scale_serving(run)
    return _rollout(run, plan, db)


def _scale_serving(run: _Pass) -> None:
    """spec.replicas holds for the serving version during a rollout too: kubectl scale or an autoscaler
    on the set scales the pods users reach, not only those of the version still to go live."""
    serving = run.memory.active_version
    deployment = run.cluster.deployments.get(serving) if serving else None
    if serving and deployment is not None and deployment.replicas != run.spec.replicas:
        run.act(ScaleDeployment(serving, run.spec.replicas))


def _torn_down_since(status: ProjectorSetStatus, generation: int, cluster: ClusterView, target: str) -> bool:
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


def _blocked(run: _Pass, reason: Reason, message: str) -> Decision:
    """An input is missing or unreachable: the phase stays as it was, and so does the reason a
    finished rollout ended with (an outage is not why it failed, and must not become so)."""
    previous = run.previous
    run.poll(BLOCKED_POLL_SECONDS)
    if previous.phase in (Phase.FAILED, Phase.ABORTED):
        if message not in previous.message:
            run.event(reason, message, warning=True)
        ended = progress_message(previous)
        return run.finish(previous.phase, _ended_reason(previous), ended, note=f"; {message}")
    return run.finish(previous.phase, reason, message, warning=True)


def _projector_statuses(plan: Plan, required: Mapping[str, int], db: DatabaseState) -> list[ProjectorStatus]:
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


def _replay_status(
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


def _pods_ready(deployment: DeploymentView | None, spec: ProjectorSetSpec) -> bool:
    """spec.version's pods are all available and run the spec's template (a retry that fixed the
    template waits for the new pods); with ``replicas: 0`` there are none to wait for."""
    if deployment is None or stale_template(deployment, spec):
        return False
    return deployment.available or (spec.replicas == 0 and deployment.replicas == 0)


# ---- steady state: the Service already reaches spec.version --------------------------------------


def _steady(run: _Pass, plan: Plan, db: DatabaseState) -> Decision:
    spec, cluster = run.spec, run.cluster
    target = spec.version
    run.ensure_deployment()
    _retire_old_versions(run)
    _clear_stale_registrations(run, db)
    run.remember(target_version=target)
    drift = [p for p in plan.projectors if p.change is not Change.UNCHANGED]
    missing = required_missing(spec, db)
    if (drift or missing) and not plan.first_install:
        details = "; ".join(
            [f"{p.name}: active {p.state.active_version}, release {p.spec_version}" for p in drift]
            + [f"{name} (required): {_shows(state)}, release {version}" for name, version, state in missing]
        )
        run.condition(ConditionType.PROJECTORS_IN_SYNC, False, Reason.PROJECTORS_OUT_OF_SYNC, details)
        run.poll(BLOCKED_POLL_SECONDS)
        return run.finish(
            Phase.ACTIVE,
            Reason.PROJECTORS_OUT_OF_SYNC,
            f"version {target} serves but the database differs ({details}); "
            "projector changes roll out with a new spec.version",
            warning=True,
        )
    run.condition(
        ConditionType.PROJECTORS_IN_SYNC, True, Reason.IN_SYNC, "every projector is active at its release version"
    )
    deployment = cluster.deployments.get(target)
    message = f"version {target} serves"
    if deployment is not None and not deployment.available:
        message += f" ({deployment.ready_replicas}/{deployment.replicas} pods ready)"
    return run.finish(Phase.ACTIVE, Reason.ROLLOUT_COMPLETE, message)


def _clear_stale_registrations(run: _Pass, db: DatabaseState) -> None:
    """Replaying or activating versions with no replay in progress and no stage Job at work are
    what an abandoned rollout registered before its prepare Job ever ran (its creation failed,
    or the spec moved back first): cleared, for this ProjectorSet's projectors only."""
    if db.replay_in_progress is not None or any(
        job.state is JobState.RUNNING or job.active > 0 or job.deleting for job in run.cluster.jobs
    ):
        return
    ours = set(run.spec.projector_versions)
    for deployment in run.cluster.deployments.values():
        ours |= set(deployment.projectors or {})
    stale = sorted(
        name
        for name, state in db.projectors.items()
        if name in ours and (state.replaying_version is not None or state.activating_version is not None)
    )
    if stale:
        run.act(ClearReplaying(tuple(stale)))


def _retire_old_versions(run: _Pass) -> None:
    """Scale the previous version down after the delay and keep a bounded history."""
    spec, cluster = run.spec, run.cluster
    serving = run.memory.active_version
    previous = run.memory.previous_version
    switched_at = run.memory.switched_at
    delay = float(spec.strategy.scale_down_delay_seconds)
    history: list[str] = [v for v in run.memory.history if v not in (serving, spec.version)]
    for version in sorted(cluster.deployments):
        if version not in (serving, spec.version) and version not in history:
            history.append(version)
    keep = set(history[: spec.strategy.revision_history_limit])
    for version, deployment in sorted(cluster.deployments.items()):
        if version in (serving, spec.version):
            continue
        waited = (run.now - switched_at).total_seconds() if switched_at is not None else None
        if version == previous and waited is not None and waited < delay:
            # The old pods stay up for the delay, whatever the history limit says (seconds, not a
            # datetime sum: the CRD allows delays past the year 9999).
            run.poll(max(0.5, delay - waited))
            continue
        if version not in keep:
            run.act(DeleteDeployment(version))
            run.act(*(DeleteJob(job.name) for job in cluster.jobs if job.version == version))
            run.event(Reason.REVISION_PRUNED, f"version {version} deleted (revisionHistoryLimit)")
            continue
        if deployment.replicas > 0:
            run.act(ScaleDeployment(version, 0))
            run.event(Reason.SCALED_DOWN, f"version {version} scaled down to 0 replicas")
    run.remember(history=history[: spec.strategy.revision_history_limit])


# ---- a rollout: the Service does not reach spec.version yet --------------------------------------


def _rollout(run: _Pass, plan: Plan, db: DatabaseState) -> Decision:
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
            attempt=_attempt_for(cluster, target, 1, adopt=_status_lost(previous)),
            rollout_started_at=run.timestamp(),
            activated_at=None,
            replay=None,
        )
        run.event(Reason.ROLLOUT_STARTED, f"rolling out version {target} (serving: {serving or 'nothing yet'})")
    elif finished and not _cleanup_pending(run, db):
        retry = previous.observed_generation is not None and run.generation != previous.observed_generation
        if not retry or spec.abort:
            return _stay_finished(run, db)
        finished = False
        attempt = _attempt_for(cluster, target, run.memory.attempt + 1, adopt=False)
        run.remember(attempt=attempt, rollout_started_at=run.timestamp(), replay=None)
        run.event(Reason.ROLLOUT_RETRIED, f"retrying version {target} (attempt {attempt}) after a spec change")
    attempt = run.memory.attempt

    # The database is the gate: once the release is active there, traffic moves in this very pass.
    if release_is_active(spec, db, owned_projectors(cluster)):
        return _switch_when_required_active(run, db)
    golive = _latest(cluster.jobs_for(target, attempt, Stage.GOLIVE))
    if golive is not None and plan.to_deactivate and release_is_live(spec, db, owned_projectors(cluster)):
        # golive committed. Only now are the projectors the release removed deactivated (a golive
        # that fails leaves them as they were); the new code refuses every write while a projector
        # it does not know is active, so this comes right before the switch, in the same pass.
        removed = tuple(plan.to_deactivate)
        run.act(Deactivate(removed))
        run.event(Reason.PROJECTORS_DEACTIVATED, f"deactivated {', '.join(removed)} (not in version {target})")
        return _switch_when_required_active(run, db)

    if finished:
        message = _told_once_failed(progress_message(previous), cluster.jobs_for(target, attempt))
        if message != progress_message(previous):
            run.event(_ended_reason(previous), message, warning=True)
        return _clean_up(run, db, previous.phase, _ended_reason(previous), message)

    if spec.abort:
        if golive is not None and golive.state is JobState.RUNNING:
            run.poll(ROLLOUT_POLL_SECONDS)
            return run.finish(Phase.ACTIVATING, Reason.ABORT_WAITING_FOR_GOLIVE, "abort requested; golive is running")
        return _clean_up(run, db, Phase.ABORTED, Reason.ABORTED, f"rollout of {target} aborted by spec.abort")

    # golive is one transaction that cannot be stopped: another rollout's golive (the spec moved on
    # while it ran) either lands, and the Service follows the database, or leaves nothing behind.
    # Meanwhile the new version's pods start, outside the Service.
    run.ensure_deployment()
    other = [
        job
        for job in cluster.jobs
        if job.stage == Stage.GOLIVE
        and job.state is JobState.RUNNING
        and (job.version, job.attempt) != (target, attempt)
    ]
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
    migrating = _migrate(run, db, attempt)
    if migrating is not None:
        return migrating
    deployment = cluster.deployments.get(target)
    if deployment is not None and deployment.failure:
        return _fail(run, db, Reason.DEPLOYMENT_FAILED, f"Deployment of {target}: {deployment.failure}")
    if not _pods_ready(deployment, spec):
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
        gate = None if plan.first_install else _promotion_gate(run)
        if gate is not None:
            return gate
        run.act(Activate(spec.projector_versions, tuple(plan.to_deactivate)))
        run.poll(ROLLOUT_POLL_SECONDS)
        what = "first install" if plan.first_install else "no projector needs a replay"
        return run.finish(Phase.ACTIVATING, Reason.ACTIVATING, f"{what}: activating version {target}")

    # 4. Replay, stage by stage, as the database says.
    return _replay(run, plan, db, attempt, golive)


def _unready_hint(run: _Pass) -> str:
    """Past a short while, the likely cause of pods that run but never get ready: a readiness
    probe that needs the release's projectors active, which only golive makes them, and golive
    waits for these pods (seen with a real application: ProgressDeadlineExceeded after 10 min)."""
    started = run.memory.rollout_started_at
    if started is None or run.now - started < timedelta(seconds=UNREADY_HINT_SECONDS):
        return ""
    return (
        "; if its pods run but stay unready, their readiness probe may need the release's projectors "
        "active, which happens only after these pods are ready (the README's 'What the application must "
        "provide')"
    )


def _migrate(run: _Pass, db: DatabaseState, attempt: int) -> Decision | None:
    """Sequent's workflow runs the release's migrations before prepare (which copies the view
    tables with pg_dump --strict-names, so a table no migration created fails it). None: done."""
    spec, cluster = run.spec, run.cluster
    if not spec.replay.commands.migrate:
        return None
    job = _latest(cluster.jobs_for(spec.version, attempt, Stage.MIGRATE))
    if job is None:
        later = [j for j in cluster.jobs_for(spec.version, attempt) if j.stage != Stage.ABORT]
        if later or db.replay_in_progress is not None:
            return None  # this attempt is past its migrations (their Job is gone)
        if spec.paused:
            return _paused(run)
        run.act(RunStageJob(spec.version, attempt, Stage.MIGRATE))
        run.poll(WATCHED_POLL_SECONDS)
        return run.finish(Phase.DEPLOYING, Reason.MIGRATING, f"migrating the database for version {spec.version}")
    if job.state is JobState.RUNNING:
        run.poll(WATCHED_POLL_SECONDS)
        return run.finish(Phase.DEPLOYING, Reason.MIGRATING, f"migrate is running in Job {job.name}")
    if job.state is JobState.FAILED:
        return _fail(run, db, Reason.STAGE_FAILED, f"migrate Job {job.name} failed: {job.message}")
    return None


def _status_lost(status: ProjectorSetStatus) -> bool:
    """No status at all (never written, or lost): the Jobs are all that is left to go by."""
    return status.observed_generation is None


def _attempt_for(cluster: ClusterView, target: str, lowest: int, *, adopt: bool) -> int:
    """The attempt a rollout of ``target`` starting now takes, at least ``lowest``.

    Never one whose Jobs already exist (v1 -> v2 -> v1 -> v2 must not find the first v2
    rollout's Jobs by name). With ``adopt`` (the status was lost), the latest attempt while one
    of its stage Jobs still runs: the rollout that status recorded carries on. An abort Job, or a
    Job being deleted, means that attempt is being torn down: never adopted."""
    latest = max((job.attempt for job in cluster.jobs if job.version == target), default=0)
    carrying_on = any(
        job.state is JobState.RUNNING and not job.deleting and job.stage != Stage.ABORT
        for job in cluster.jobs_for(target, latest)
    )
    if adopt and latest >= lowest and carrying_on:
        return latest
    return max(lowest, latest + 1)


def _replay(run: _Pass, plan: Plan, db: DatabaseState, attempt: int, golive: JobView | None) -> Decision:
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
            return _fail(run, db, Reason.STAGE_FAILED, f"golive Job {golive.name} failed: {golive.message}")
        return _fail(
            run,
            db,
            Reason.VERIFICATION_FAILED,
            f"golive Job {golive.name} succeeded but the database does not show version {target} active",
        )

    if replay is None:
        prepare = _latest(cluster.jobs_for(target, attempt, Stage.PREPARE))
        if prepare is not None:
            return _expect_running(run, db, prepare)
        if run.spec.paused:
            return _paused(run)
        registered = all(db.projectors.get(n) and db.projectors[n].replaying_version == v for n, v in to_replay.items())
        if not registered:
            run.act(RegisterReplaying(to_replay))
        run.act(RunStageJob(target, attempt, Stage.PREPARE, projectors=projectors))
        names = ", ".join(f"{name} v{version}" for name, version in sorted(to_replay.items()))
        return run.finish(Phase.REPLAYING, Reason.PREPARING, f"replaying {names}: prepare")

    if replay.state == ReplayStateName.FAILED:
        # Sequent marked the replay failed: it stays in progress (and holds the replay slot) until aborted.
        return _fail(run, db, Reason.REPLAY_FAILED, _replay_failed_message(replay, cluster.jobs_for(target, attempt)))

    working = stage_at_work(replay.state)
    if working is not None:
        job = _latest(cluster.jobs_for(target, attempt, working))
        if job is None:
            return _fail(
                run,
                db,
                Reason.STAGE_INTERRUPTED,
                f"replay is {replay.state} but no {working} Job of this rollout exists",
            )
        return _expect_running(run, db, job)

    if replay.state != ReplayStateName.OPTIMIZED:
        next_stage = stage_following(replay.state)
        assert next_stage is not None, f"no stage follows {replay.state!r}"  # the plan refuses unknown states
        job = _latest(cluster.jobs_for(target, attempt, next_stage))
        if job is not None:
            return _expect_running(run, db, job)
        if run.spec.paused:
            return _paused(run)
        run.act(RunStageJob(target, attempt, next_stage, projectors=projectors))
        return run.finish(Phase.REPLAYING, STAGE_REASONS[next_stage], f"replay {replay.id}: {next_stage}")

    # optimized: catch up until the lag is small, then go live.
    lag = db.replay_lag or 0
    lag_text = f"{'at least ' if db.replay_lag_at_least else ''}{lag} events"
    last = _latest(cluster.jobs_for(target, attempt, Stage.CATCHUP))
    if last is not None and last.state is not JobState.SUCCEEDED:
        return _expect_running(run, db, last)
    failed = _failed_checks(run, db, attempt)
    if failed is not None:
        return failed
    if lag > spec.replay.catchup.max_lag:
        rounds = run.memory.replay.catchup_round if run.memory.replay is not None else 0
        if rounds >= spec.replay.catchup.max_rounds:
            return _fail(
                run,
                db,
                Reason.CATCHUP_DID_NOT_CONVERGE,
                f"lag is still {lag_text} after {rounds} catch-up rounds (bound {spec.replay.catchup.max_lag})",
            )
        if run.spec.paused:
            return _paused(run)
        run.act(RunStageJob(target, attempt, Stage.CATCHUP, round=rounds + 1, projectors=projectors))
        return run.finish(Phase.REPLAYING, Reason.CATCHING_UP, f"catch-up round {rounds + 1}: lag {lag_text}")

    checking = _run_checks(run, attempt, lag)
    if checking is not None:
        return checking
    gate = _promotion_gate(run)
    if gate is not None:
        return gate
    # Removed projectors stay active until golive commits (see _rollout): a golive may still fail.
    run.act(RunStageJob(target, attempt, Stage.GOLIVE, projectors=projectors))
    return run.finish(Phase.ACTIVATING, Reason.GOING_LIVE, f"lag {lag} events: golive")


def _replay_failed_message(replay: ReplayState, jobs: Sequence[JobView]) -> str:
    message = f"replay {replay.id} is 'failed' in replay_states: a stage raised"
    failed = [job for job in jobs if job.state is JobState.FAILED and job.stage != Stage.ABORT]
    running = [job for job in jobs if job.state is JobState.RUNNING and job.stage != Stage.ABORT]
    if failed:
        return message + _job_failed(failed[-1])
    if running:
        # Said when the failure was seen; once the Job has failed, _told_once_failed says that instead.
        return message + _seen_running(running[-1])
    return message


def _job_failed(job: JobView) -> str:
    return f" ({job.stage} Job {job.name} failed: {job.message})"


def _seen_running(job: JobView) -> str:
    return f" (seen while {job.stage} Job {job.name} was running)"


def _told_once_failed(message: str, jobs: Sequence[JobView]) -> str:
    """A failure seen while its stage still ran (Sequent marks the replay failed, then the process
    exits) told again once the stage's Job has failed: with the error its output gives."""
    for job in jobs:
        if job.state is JobState.FAILED and _seen_running(job) in message:
            return message.replace(_seen_running(job), _job_failed(job))
    return message


def _stage_reason(stage: str) -> Reason:
    return STAGE_REASONS.get(stage, Reason.REPLAYING)


def _expect_running(run: _Pass, db: DatabaseState, job: JobView) -> Decision:
    """A stage Job exists: wait while it runs; a finished one must have moved the database on."""
    if job.state is JobState.RUNNING:
        phase = Phase.ACTIVATING if job.stage == Stage.GOLIVE else Phase.REPLAYING
        return run.finish(phase, _stage_reason(job.stage), f"{job.stage} is running in Job {job.name}")
    if job.state is JobState.FAILED:
        return _fail(run, db, Reason.STAGE_FAILED, f"{job.stage} Job {job.name} failed: {job.message}")
    expected = STAGES[Stage(job.stage)].after
    replay = db.replay_in_progress
    found = f"replay_states is {replay.state!r}" if replay is not None else "replay_states shows no replay in progress"
    return _fail(
        run,
        db,
        Reason.VERIFICATION_FAILED,
        f"{job.stage} Job {job.name} succeeded but {found}; after {job.stage} it should be {expected.value!r}",
    )


# ---- checks before golive (spec.replay.checks) -----------------------------------------------------


def check_results(status: ProjectorSetStatus, spec: ProjectorSetSpec, attempt: int) -> dict[str, CheckResult]:
    """The results that count for this attempt: by check name, for this version and attempt, and
    for the query the spec holds now (an edited query runs again)."""
    digests = {check.name: check.digest for check in spec.replay.checks}
    return {
        result.name: result
        for result in status.checks
        if result.version == spec.version and result.attempt == attempt and digests.get(result.name) == result.digest
    }


def with_check_results(status: ProjectorSetStatus, results: Sequence[CheckResult]) -> ProjectorSetStatus:
    """The status with ``results`` recorded (what the controller writes after ``RunChecks``);
    results of another version or attempt are dropped."""
    if not results:
        return status
    run_of = (results[0].version, results[0].attempt)
    names = {result.name for result in results}
    kept = [r for r in status.checks if (r.version, r.attempt) == run_of and r.name not in names]
    return status.model_copy(update={"checks": [*kept, *results]})


def _failed_checks(run: _Pass, db: DatabaseState, attempt: int) -> Decision | None:
    """A check of this attempt that did not pass fails the rollout; the replay is aborted."""
    results = check_results(run.memory, run.spec, attempt)
    failed = [results[c.name] for c in run.spec.replay.checks if c.name in results and not results[c.name].passed]
    if not failed:
        return None
    if len(failed) == 1:
        message = f"check {failed[0].name} failed: {failed[0].result}"
    else:
        message = f"{len(failed)} checks failed: " + "; ".join(f"{r.name}: {r.result}" for r in failed)
    return _fail(run, db, Reason.CHECK_FAILED, message)


def _run_checks(run: _Pass, attempt: int, lag: int) -> Decision | None:
    """Once per attempt, after the replay caught up and before golive or the promotion wait: ask the
    controller to run the checks that have no result yet. None: every check passed (or none)."""
    checks = run.spec.replay.checks
    if not checks:
        return None
    results = check_results(run.memory, run.spec, attempt)
    missing = tuple(check for check in checks if check.name not in results)
    if missing:
        if run.spec.paused:
            return _paused(run)
        run.act(RunChecks(run.spec.version, attempt, missing))
        names = ", ".join(check.name for check in missing)
        return run.finish(Phase.REPLAYING, Reason.RUNNING_CHECKS, f"lag {lag} events: running checks {names}")
    if progress_reason(run.previous) == Reason.RUNNING_CHECKS:
        run.event(Reason.CHECKS_PASSED, "checks passed before golive: " + ", ".join(check.name for check in checks))
    return None


def _promotion_gate(run: _Pass) -> Decision | None:
    spec = run.spec
    if spec.paused:
        return _paused(run)
    if spec.strategy.promotion is Promotion.MANUAL and spec.promote != spec.version:
        run.poll(BLOCKED_POLL_SECONDS)
        return run.finish(
            Phase.PAUSED,
            Reason.AWAITING_PROMOTION,
            f"version {spec.version} is ready to go live; set spec.promote to {spec.version!r} to promote it",
        )
    return None


def _paused(run: _Pass) -> Decision:
    run.poll(BLOCKED_POLL_SECONDS)
    return run.finish(Phase.PAUSED, Reason.PAUSED_BY_USER, f"rollout of {run.spec.version} paused by spec.paused")


def release_is_live(spec: ProjectorSetSpec, db: DatabaseState, owned: Collection[str] | None = None) -> bool:
    """Every projector of the release is active at its version and nothing is left in flight:
    golive (or the activation) committed. Projectors the release removed may still be active.
    ``owned`` (``owned_projectors``): only those and the release's count; other applications'
    projectors on a shared event store may be replaying meanwhile."""
    if db.empty or _in_flight(db, _counted_projectors(spec, db, owned)):
        return False
    return all(
        (state := db.projectors.get(name)) is not None and state.active_version == version
        for name, version in spec.projector_versions.items()
    )


def release_is_active(spec: ProjectorSetSpec, db: DatabaseState, owned: Collection[str] | None = None) -> bool:
    """The release is live and no projector outside it is still active: its code can write.
    With ``owned``, only this set's projectors count (see ``release_is_live``)."""
    return release_is_live(spec, db, owned) and all(
        name in spec.projector_versions
        or name in spec.required_versions
        or s.active_version is None
        or (owned is not None and name not in owned)
        for name, s in db.projectors.items()
    )


def _counted_projectors(spec: ProjectorSetSpec, db: DatabaseState, owned: Collection[str] | None) -> set[str]:
    """The projectors whose state is this set's business: the release's and those of the releases
    it deployed before (``owned``); with ``owned`` unknown, every projector in the table but the
    other sets' ones this release requires."""
    if owned is None:
        return set(db.projectors) - set(spec.required_versions)
    return {*spec.projector_versions, *owned}


def _in_flight(db: DatabaseState, names: Iterable[str] | None = None) -> bool:
    """Some projector (of ``names``, if given) is replaying or activating."""
    chosen = None if names is None else set(names)
    return any(
        (s.replaying_version is not None or s.activating_version is not None) and (chosen is None or name in chosen)
        for name, s in db.projectors.items()
    )


def _own_projectors(spec: ProjectorSetSpec, db: DatabaseState) -> tuple[str, ...]:
    """The projectors this ProjectorSet may have left replaying or activating: the release's and
    those of the latest replay (a spec edit may have dropped one)."""
    names = set(spec.projector_versions) | set(db.replay.projectors if db.replay is not None else ())
    return tuple(sorted(names - set(spec.required_versions)))


def owned_projectors(cluster: ClusterView) -> set[str] | None:
    """The projectors of every release this set deployed (its Deployments' release annotations):
    what it may deactivate when the spec drops them. None when a Deployment does not say (made by an
    operator version before the annotation): then every active projector not in the spec counts."""
    owned: set[str] = set()
    for deployment in cluster.deployments.values():
        if deployment.projectors is None:
            return None
        owned.update(deployment.projectors)
    return owned


def _current_attempt(run: _Pass) -> int:
    """The attempt of spec.version's rollout as far as the status and the running Jobs tell."""
    if run.previous.target_version == run.spec.version:
        return run.memory.attempt
    return _attempt_for(run.cluster, run.spec.version, 1, adopt=_status_lost(run.previous))


def _superseded_work(run: _Pass, db: DatabaseState) -> Decision | None:
    """What a rollout left behind when spec.version moved away from it (back to the serving
    version, or on to another), or when its Jobs vanished: its running stage Jobs are stopped
    and its replay is aborted before the next rollout starts. A running golive cannot be
    stopped: it is waited for (if it lands, the Service follows the database)."""
    spec, cluster = run.spec, run.cluster
    attempt = _current_attempt(run)

    def current(job: JobView) -> bool:
        return job.version == spec.version and job.attempt == attempt

    # A Job is over only when its pods are gone (a deleted one terminates in the foreground).
    running = [
        job
        for job in cluster.jobs
        if not current(job) and (job.state is JobState.RUNNING or job.active > 0 or job.deleting)
    ]
    stages = [job for job in running if job.stage != Stage.ABORT]
    aborting = [job for job in running if job.stage == Stage.ABORT]
    replay = db.replay_in_progress
    # A replay in progress belongs to the current rollout when the status follows a rollout of
    # spec.version (its own clean-up handles it) or once any Job of its attempt exists. Once
    # spec.version serves, no rollout is in progress: a replay left in progress is left over.
    rolling_out = run.previous.target_version == spec.version and run.memory.active_version != spec.version
    started_here = rolling_out or any(current(job) for job in cluster.jobs)
    owner = None if replay is None or started_here or running else _replay_owner(run, replay, db)
    if not running and owner is None:
        return None
    phase = Phase.ACTIVE if run.memory.active_version == spec.version else Phase.PENDING
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
    run.act(*(DeleteJob(job.name) for job in stages if job.state is JobState.RUNNING and not job.deleting))
    if aborting:
        return run.finish(
            phase, Reason.SUPERSEDED, f"replay {replay.id if replay else ''} is being aborted in Job {aborting[0].name}"
        )
    if replay is None or owner is None:
        return run.finish(phase, Reason.SUPERSEDED, f"stopping Job {stages[0].name} of an earlier rollout")
    version, owner_attempt = owner
    aborts = cluster.jobs_for(version, owner_attempt, Stage.ABORT)
    last = _latest(aborts)
    rounds = max((job.round for job in aborts), default=0)
    if last is not None and last.state is JobState.FAILED:
        # Tried and failed: say so, and try again with a growing pause, as for any abort.
        run.condition(
            ConditionType.REPLAY_ABORTED, False, Reason.ABORT_FAILED, f"abort Job {last.name}: {last.message}"
        )
        delay = min(ABORT_RETRY_MAX_SECONDS, ABORT_RETRY_SECONDS * 2 ** (len(aborts) - 1))
        due = (last.finished_at or run.now) + timedelta(seconds=delay)
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


def _replay_owner(run: _Pass, replay: ReplayState, db: DatabaseState) -> tuple[str, int] | None:
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
            attempts = [job.attempt for job in cluster.jobs if job.version == version]
            return version, max(attempts, default=0)
    owned = owned_projectors(cluster)
    ours = owned is not None and set(replay.projectors) <= {*run.spec.projector_versions, *owned}
    prepares = [job for job in cluster.jobs if job.stage == Stage.PREPARE]
    if prepares and ours:
        newest = max(prepares, key=lambda job: (job.attempt, job.finished_at or run.now))
        return newest.version, newest.attempt
    return None


def _active_projectors(run: _Pass, db: DatabaseState) -> dict[str, int] | None:
    """This set's projector versions the database shows active, when none of them is replaying or
    activating (other applications' projectors on a shared event store do not count)."""
    mine = _counted_projectors(run.spec, db, owned_projectors(run.cluster))
    if db.empty or _in_flight(db, mine):
        return None
    active = {
        name: s.active_version for name, s in db.projectors.items() if s.active_version is not None and name in mine
    }
    return active or None


def _deployed_active_release(run: _Pass, db: DatabaseState) -> str | None:
    """A deployed version, not spec.version's, whose release the database shows active while the
    Service selects pods of another release: an earlier target's golive committed after the spec
    moved on (or back). Its Deployment's release annotation says which projectors it runs."""
    active = _active_projectors(run, db)
    spec_ready = _pods_ready(run.cluster.deployments.get(run.spec.version), run.spec)
    if active is None or (active == run.spec.projector_versions and spec_ready):
        return None  # nothing settled, or spec.version's own release, ready: the rollout switches to it

    def runs_active(version: str | None) -> bool:
        deployment = run.cluster.deployments.get(version) if version else None
        return (
            deployment is not None
            and deployment.projectors is not None
            and dict(deployment.projectors) == active
            and not required_missing(run.spec, db, deployment.required)
        )

    if runs_active(run.cluster.service_version):
        return None
    candidates = sorted(
        v
        for v in run.cluster.deployments
        if v != run.spec.version and runs_active(v) and (active != run.spec.projector_versions or _ready(run, v))
    )
    if run.previous.target_version in candidates:
        return run.previous.target_version
    return candidates[-1] if candidates else None


def _ready(run: _Pass, version: str) -> bool:
    deployment = run.cluster.deployments.get(version)
    return deployment is not None and deployment.available


def _follow_database(run: _Pass, version: str) -> Decision:
    """Move the Service to ``version``, the release the database made active, then carry on."""
    spec, cluster = run.spec, run.cluster
    deployment = cluster.deployments[version]
    why = (
        f"the database shows version {version}'s release active (its golive committed after spec.version "
        f"changed to {spec.version})"
    )
    run.poll(ROLLOUT_POLL_SECONDS)
    if not deployment.available:
        if deployment.replicas == 0:
            run.act(ScaleDeployment(version, max(1, spec.replicas)))
        return _waiting_for_pods(run, f"{why}; waiting for its pods before the Service moves to them")
    _move_service(run, version, f": {why}")
    return run.finish(
        Phase.SWITCHING,
        Reason.FOLLOWING_DATABASE,
        f"{why}: the Service selects version {version}; version {spec.version} rolls out next",
    )


def _waiting_for_pods(run: _Pass, message: str) -> Decision:
    # A Warning while a serving version waits on these pods (the database moved past it); a first
    # install has nothing serving, and its pods starting is no cause for alarm.
    warning = run.memory.active_version is not None
    return run.finish(Phase.SWITCHING, Reason.WAITING_FOR_AVAILABLE_PODS, message, warning=warning)


def _move_service(run: _Pass, version: str, why: str = "") -> None:
    """Patch the Service to select ``version``'s pods and remember the switch."""
    serving = run.memory.active_version
    run.act(SwitchService(version))
    history = [v for v in [serving, *run.memory.history] if v and v != version]
    run.remember(active_version=version, previous_version=serving, switched_at=run.timestamp(), history=history)
    run.event(Reason.SERVICE_SWITCHED, f"Service {run.spec.service.name} now selects version {version}{why}")


def required_missing(
    spec: ProjectorSetSpec, db: DatabaseState, required: Mapping[str, int] | None = None
) -> list[tuple[str, int, ProjectorState]]:
    """The ``requiredProjectors`` (of ``spec``, or ``required``: a deployed release's) the database
    does not show active at their version, with what it shows: that release's code cannot write
    until each is (Sequent's publisher refuses it)."""
    missing = []
    wanted = spec.required_versions if required is None else required
    for name, version in sorted(wanted.items()):
        state = db.projectors.get(name, ProjectorState(name))
        if state.active_version != version or state.activating_version is not None:
            missing.append((name, version, state))
    return missing


def _shows(state: ProjectorState) -> str:
    """What projector_states shows of one projector, in words."""
    parts = [
        f"{what} {version}"
        for what, version in (
            ("active", state.active_version),
            ("activating", state.activating_version),
            ("replaying", state.replaying_version),
        )
        if version is not None
    ]
    return "the database shows " + (", ".join(parts) if parts else "it inactive")


def _switch_when_required_active(run: _Pass, db: DatabaseState) -> Decision:
    """This set's projectors are live: switch, once the database also shows every projector of
    ``requiredProjectors`` (another set's) active at its version. Until then the old version
    serves, and the new one waits: its code would be refused every write."""
    missing = required_missing(run.spec, db)
    if not missing:
        return _switch(run)
    owners = run.cluster.projector_owners
    waits = "; ".join(
        f"{name} version {version} ({_shows(state)}; "
        + (
            f"ProjectorSet {owners[name]} owns it)"
            if name in owners
            else "no ProjectorSet on this event store lists it)"
        )
        for name, version, state in missing
    )
    run.ensure_deployment()
    run.poll(ROLLOUT_POLL_SECONDS)
    serving = run.memory.active_version
    return run.finish(
        Phase.ACTIVATING,
        Reason.WAITING_FOR_PROJECTORS,
        f"version {run.spec.version} waits for required projectors: {waits}",
        note=f"; version {serving} keeps serving" if serving else "",
    )


def _switch(run: _Pass) -> Decision:
    spec, cluster = run.spec, run.cluster
    target = spec.version
    serving = run.memory.active_version
    if run.memory.activated_at is None:
        run.remember(activated_at=run.timestamp())
        run.activated = True
        run.event(Reason.ACTIVATED, f"the database shows every projector of {target} active")
    deployment = cluster.deployments.get(target)
    if not _pods_ready(deployment, spec):
        # Switching to pods that are not ready would drop every request; keep the old pods.
        run.ensure_deployment()
        run.poll(ROLLOUT_POLL_SECONDS)
        return _waiting_for_pods(run, f"version {target} is active in the database but its Deployment is not available")
    _move_service(run, target)
    if serving is not None:
        run.poll(max(0.5, float(spec.strategy.scale_down_delay_seconds)))
    return run.finish(Phase.ACTIVE, Reason.ROLLOUT_COMPLETE, f"version {target} serves")


# ---- failure, abort and clean-up ----------------------------------------------------------------


def _stages_still_running(cluster: ClusterView) -> list[JobView]:
    """Stage Jobs (abort aside) whose pods may still write: running, terminating, or being deleted."""
    return [
        job
        for job in cluster.jobs
        if job.stage != Stage.ABORT and (job.state is JobState.RUNNING or job.active > 0 or job.deleting)
    ]


def _cleanup_pending(run: _Pass, db: DatabaseState) -> bool:
    # The abort stage may clear the database by itself; the new version must still be scaled down.
    deployment = run.cluster.deployments.get(run.spec.version)
    still_scaled_up = deployment is not None and deployment.replicas > 0
    return (
        bool(_stages_still_running(run.cluster))
        or db.replay_in_progress is not None
        or _in_flight(db, _own_projectors(run.spec, db))
        or still_scaled_up
    )


def _fail(run: _Pass, db: DatabaseState, reason: Reason, message: str) -> Decision:
    return _clean_up(run, db, Phase.FAILED, reason, message)


def _clean_up(run: _Pass, db: DatabaseState, phase: Phase, reason: Reason, message: str) -> Decision:
    """Stop the stages, abort the replay until replay_states says so, clear this ProjectorSet's
    replaying/activating versions, scale the new version down; the old version keeps serving."""
    spec, cluster = run.spec, run.cluster
    target = spec.version
    warning = phase is Phase.FAILED
    run.poll(ROLLOUT_POLL_SECONDS)
    if any(job.stage == Stage.GOLIVE and job.state is JobState.RUNNING for job in cluster.jobs):
        # golive is one transaction: it either lands (and traffic moves) or leaves nothing behind.
        return run.finish(Phase.ACTIVATING, Reason.GOING_LIVE, f"{message}; waiting for golive to finish first")

    # Sequent's abort does not stop a stage that still runs, and such a stage would mark the replay
    # failed again when it fails later: abort only once every stage's pods are gone.
    running = _stages_still_running(cluster)
    if running:
        names = ", ".join(job.name for job in running)
        # A stage that failed inside Sequent (it marked the replay failed) exits by itself right
        # after: it keeps its Job, pod and output for a while. One asked to stop, or stuck, is deleted.
        failed_since = _failed_since(run) or run.now
        grace_over = run.now >= failed_since + timedelta(seconds=STAGE_EXIT_GRACE_SECONDS)
        if phase is not Phase.FAILED or grace_over:
            run.act(*(DeleteJob(job.name) for job in running if job.state is JobState.RUNNING and not job.deleting))
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
    own = _own_projectors(spec, db)
    in_flight = _in_flight(db, own)
    if in_flight:
        run.act(ClearReplaying(own))
    deployment = cluster.deployments.get(target)
    if deployment is not None and deployment.replicas > 0:
        run.act(ScaleDeployment(target, 0))
    serving = run.memory.active_version
    note = f"; version {serving} keeps serving" if serving else ""
    if not in_flight:
        run.condition(ConditionType.REPLAY_ABORTED, True, Reason.ABORTED, _aborted_message(db))
    return run.finish(phase, reason, message, note=note, warning=warning)


def _failed_since(run: _Pass) -> datetime | None:
    """When this rollout turned Failed, as its status says; None in the pass that fails it."""
    if run.previous.phase is not Phase.FAILED:
        return None
    progressing = find_condition(run.previous.conditions, ConditionType.PROGRESSING)
    if progressing is None or progressing.status != "False":
        return None
    return progressing.last_transition_time


def _abort_replay(run: _Pass, replay: ReplayState, phase: Phase, reason: Reason, message: str) -> Decision:
    """Run abort Jobs, one at a time, until replay_states no longer shows the replay in progress;
    after a failure the next one waits a back-off that doubles, shown in ReplayAborted."""
    spec = run.spec
    attempt = run.memory.attempt
    warning = phase is Phase.FAILED
    projectors = tuple(sorted(replay.projectors))
    note = f"; aborting replay {replay.id}"
    aborts = run.cluster.jobs_for(spec.version, attempt, Stage.ABORT)
    last = _latest(aborts)
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
    delay = min(ABORT_RETRY_MAX_SECONDS, ABORT_RETRY_SECONDS * 2 ** (tries - 1))
    due = (last.finished_at or run.now) + timedelta(seconds=delay)
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


def _stay_finished(run: _Pass, db: DatabaseState) -> Decision:
    """A failed or aborted rollout, cleaned up, waits for a spec change (a retry) with spec.abort false."""
    previous = run.previous
    run.condition(ConditionType.REPLAY_ABORTED, True, Reason.ABORTED, _aborted_message(db))
    serving = run.memory.active_version
    note = f"; version {serving} keeps serving" if serving else ""
    note += "; set spec.abort to false to retry" if run.spec.abort else "; edit the spec to retry"
    return run.finish(previous.phase, _ended_reason(previous), progress_message(previous), note=note)


def _latest(jobs: Sequence[JobView]) -> JobView | None:
    return max(jobs, key=lambda job: job.round, default=None)
