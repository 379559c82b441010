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

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from projectorset.api import (
    Condition,
    Phase,
    ProjectorSetSpec,
    ProjectorSetStatus,
    ProjectorStatus,
    Promotion,
    ReplayStatus,
)
from projectorset.database import DatabaseState
from projectorset.observation import (
    Action,
    Activate,
    ClearReplaying,
    ClusterView,
    DatabaseView,
    Deactivate,
    DeleteDeployment,
    DeleteJob,
    EnsureDeployment,
    Event,
    JobState,
    JobView,
    RegisterReplaying,
    RunStageJob,
    ScaleDeployment,
    SwitchService,
)
from projectorset.planning import Change, Plan, plan_upgrade

# How often the database is read while a rollout runs, and while it waits for a human or an outage.
ROLLOUT_POLL_SECONDS = 2.0
BLOCKED_POLL_SECONDS = 10.0

# The replay_states.state each stage's Job must leave behind.
STAGE_RESULT = {
    "prepare": "prepared",
    "replay": "replayed",
    "optimize": "optimized",
    "catchup": "optimized",
    "golive": "live",
}
# In these states a stage Job is at work: wait for it.
STAGE_AT_WORK = {"created": "prepare", "replaying": "replay", "catching_up": "catchup"}

IN_FLIGHT_PHASES = frozenset({Phase.DEPLOYING, Phase.REPLAYING, Phase.ACTIVATING, Phase.SWITCHING, Phase.PAUSED})


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


@dataclass
class _Memory:
    """The status fields a pass carries forward (everything but phase, message and conditions)."""

    active_version: str | None
    target_version: str | None
    previous_version: str | None
    history: list[str]
    rollout_started_at: str | None
    activated_at: str | None
    switched_at: str | None
    attempt: int
    replay: ReplayStatus | None
    projectors: list[ProjectorStatus]


@dataclass
class _Pass:
    """The mutable scratch state of one ``decide`` call."""

    spec: ProjectorSetSpec
    generation: int
    previous: ProjectorSetStatus
    cluster: ClusterView
    database: DatabaseView
    now: datetime
    memory: _Memory = field(init=False)
    conditions: dict[str, Condition] = field(default_factory=dict)
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None

    def __post_init__(self) -> None:
        self.memory = _Memory(
            active_version=self.previous.active_version,
            target_version=self.previous.target_version,
            previous_version=self.previous.previous_version,
            history=list(self.previous.history),
            rollout_started_at=self.previous.rollout_started_at,
            activated_at=self.previous.activated_at,
            switched_at=self.previous.switched_at,
            attempt=self.previous.attempt,
            replay=self.previous.replay,
            projectors=list(self.previous.projectors),
        )
        self.conditions = {c.type: c for c in self.previous.conditions}

    # -- helpers used by the steps --

    def timestamp(self) -> str:
        return _iso(self.now)

    def condition(self, type_: str, status: bool | None, reason: str, message: str = "") -> None:
        self.conditions[type_] = next_condition(
            self.conditions.get(type_), type_, status, reason, message, self.generation, self.now
        )

    def ensure_deployment(self) -> None:
        """Ask for spec.version's Deployment only when it is missing or has other replicas:
        the cluster view already shows it, so a pass need not read it again."""
        deployment = self.cluster.deployments.get(self.spec.version)
        if deployment is None or deployment.replicas != self.spec.replicas:
            self.act(EnsureDeployment(self.spec.version, self.spec.replicas))

    def act(self, *actions: Action) -> None:
        self.actions.extend(actions)

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        self.events.append(Event("Warning" if warning else "Normal", reason, message))

    def poll(self, seconds: float) -> None:
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)

    def finish(self, phase: Phase, reason: str, message: str, *, note: str = "", warning: bool = False) -> Decision:
        """Build the decision; an Event accompanies every change of phase or reason.

        ``message`` is the cause (kept in the Progressing condition); ``note`` adds what
        happens about it, for status.message only."""
        previous_reason = _progress_reason(self.previous)
        if phase != self.previous.phase or reason != previous_reason:
            self.event(reason, message + note, warning=warning)
        progressing = phase in IN_FLIGHT_PHASES and phase is not Phase.PAUSED
        if phase is Phase.ACTIVE:
            self.condition("Progressing", False, reason, message)
        else:
            self.condition("Progressing", progressing, reason, message)
        ready = phase is Phase.ACTIVE and self.memory.active_version == self.spec.version
        self.condition(
            "Ready",
            ready,
            "Active" if ready else reason,
            f"version {self.spec.version} serves" if ready else message,
        )
        status = ProjectorSetStatus(
            phase=phase,
            message=message + note,
            observed_generation=self.generation,
            conditions=sorted(self.conditions.values(), key=lambda c: c.type),
            **vars(self.memory),
        )
        return Decision(tuple(self.actions), status, tuple(self.events), self.requeue_after, phase is Phase.ACTIVATING)


def _progress_reason(status: ProjectorSetStatus) -> str | None:
    for condition in status.conditions:
        if condition.type == "Progressing":
            return condition.reason
    return None


def _progress_message(status: ProjectorSetStatus) -> str:
    for condition in status.conditions:
        if condition.type == "Progressing":
            return condition.message
    return status.message


def next_condition(
    old: Condition | None,
    type_: str,
    status: bool | None,
    reason: str,
    message: str,
    generation: int,
    now: datetime,
) -> Condition:
    """The condition as it is now; lastTransitionTime moves only when its status changes."""
    value: Literal["True", "False", "Unknown"] = "Unknown" if status is None else ("True" if status else "False")
    changed = old is None or old.status != value
    return Condition(
        type=type_,
        status=value,
        reason=reason,
        message=message,
        last_transition_time=_iso(now) if changed or old is None else old.last_transition_time,
        observed_generation=generation,
    )


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(moment: str | None) -> datetime | None:
    if not moment:
        return None
    return datetime.strptime(moment, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


# ---- the machine --------------------------------------------------------------------------------


def decide(
    spec: ProjectorSetSpec,
    generation: int,
    status: ProjectorSetStatus,
    cluster: ClusterView,
    database: DatabaseView,
    now: datetime,
) -> Decision:
    run = _Pass(spec, generation, status, cluster, database, now)
    serving = cluster.service_version
    run.memory.active_version = serving
    target = spec.version

    if not cluster.service_found:
        run.poll(BLOCKED_POLL_SECONDS)
        return run.finish(
            _waiting_phase(status),
            "ServiceNotFound",
            f"Service {spec.service.name} not found; create it (its selector is switched to the active version)",
            warning=True,
        )
    if cluster.secret_problem is not None:
        run.poll(BLOCKED_POLL_SECONDS)
        return run.finish(_waiting_phase(status), "SecretNotFound", cluster.secret_problem, warning=True)
    if database.state is None:
        golive = [job for job in cluster.jobs if job.stage == "golive" and job.state is JobState.RUNNING]
        if golive and database.error_reason == "ProjectorStatesLocked":
            # golive holds projector_states until it commits: expected, and watched closely.
            run.poll(ROLLOUT_POLL_SECONDS)
            return run.finish(
                Phase.ACTIVATING, "GoingLive", f"golive is running in Job {golive[0].name} (projector_states locked)"
            )
        reason = database.error_reason or "DatabaseUnreachable"
        message = database.error_message or "the database could not be read"
        run.condition("DatabaseReady", False, reason, message)
        run.poll(BLOCKED_POLL_SECONDS)
        return run.finish(_waiting_phase(status), reason, message, warning=True)
    run.condition("DatabaseReady", True, "Connected", "projector_states and replay_states are readable")

    db = database.state
    plan = plan_upgrade(spec.projector_versions, db)
    run.memory.projectors = _projector_statuses(plan)
    run.memory.replay = _replay_status(status.replay, db, cluster, target, status.attempt)

    if serving == target:
        return _steady(run, plan)
    return _rollout(run, plan, db)


def _waiting_phase(status: ProjectorSetStatus) -> Phase:
    # An outage does not end a rollout or an active release: the phase stays as it was.
    return status.phase


def _projector_statuses(plan: Plan) -> list[ProjectorStatus]:
    return [
        ProjectorStatus(
            name=p.name,
            spec_version=p.spec_version,
            active_version=p.state.active_version,
            activating_version=p.state.activating_version,
            replaying_version=p.state.replaying_version,
            plan=p.change.value,
        )
        for p in plan.projectors
    ]


def _replay_status(
    previous: ReplayStatus | None, db: DatabaseState, cluster: ClusterView, target: str, attempt: int
) -> ReplayStatus | None:
    replay = db.replay
    if replay is None:
        return previous
    jobs = cluster.jobs_for(target, attempt)
    running = [job for job in jobs if job.state is JobState.RUNNING]
    catchups = [job.round for job in jobs if job.stage == "catchup"]
    return ReplayStatus(
        stage=running[-1].stage if running else (previous.stage if previous else None),
        state=replay.state,
        replay_id=replay.id,
        catchup_round=max(catchups, default=0),
        lag=db.replay_lag,
        job=running[-1].name if running else None,
    )


# ---- steady state: the Service already reaches spec.version --------------------------------------


def _steady(run: _Pass, plan: Plan) -> Decision:
    spec, cluster = run.spec, run.cluster
    target = spec.version
    run.ensure_deployment()
    _retire_old_versions(run)
    run.memory.target_version = target
    drift = [p for p in plan.projectors if p.change is not Change.UNCHANGED]
    if drift and not plan.first_install:
        details = "; ".join(f"{p.name}: active {p.state.active_version}, release {p.spec_version}" for p in drift)
        run.condition("ProjectorsInSync", False, "ProjectorsOutOfSync", details)
        run.poll(BLOCKED_POLL_SECONDS)
        return run.finish(
            Phase.ACTIVE,
            "ProjectorsOutOfSync",
            f"version {target} serves but the database differs ({details}); "
            "projector changes roll out with a new spec.version",
            warning=True,
        )
    run.condition("ProjectorsInSync", True, "InSync", "every projector is active at its release version")
    deployment = cluster.deployments.get(target)
    message = f"version {target} serves"
    if deployment is not None and not deployment.available:
        message += f" ({deployment.ready_replicas}/{deployment.replicas} pods ready)"
    return run.finish(Phase.ACTIVE, "RolloutComplete", message)


def _retire_old_versions(run: _Pass) -> None:
    """Scale the previous version down after the delay and keep a bounded history."""
    spec, cluster = run.spec, run.cluster
    serving = run.memory.active_version
    previous = run.memory.previous_version
    switched_at = _parse(run.memory.switched_at)
    delay = timedelta(seconds=spec.strategy.scale_down_delay_seconds)
    history: list[str] = [v for v in run.memory.history if v not in (serving, spec.version)]
    for version in sorted(cluster.deployments):
        if version not in (serving, spec.version) and version not in history:
            history.append(version)
    keep = set(history[: spec.strategy.revision_history_limit])
    for version, deployment in sorted(cluster.deployments.items()):
        if version in (serving, spec.version):
            continue
        if version == previous and switched_at is not None and run.now < switched_at + delay:
            # The old pods stay up for the delay, whatever the history limit says.
            run.poll(max(0.5, (switched_at + delay - run.now).total_seconds()))
            continue
        if version not in keep:
            run.act(DeleteDeployment(version))
            run.act(*(DeleteJob(job.name) for job in cluster.jobs if job.version == version))
            run.event("RevisionPruned", f"version {version} deleted (revisionHistoryLimit)")
            continue
        if deployment.replicas > 0:
            run.act(ScaleDeployment(version, 0))
            run.event("ScaledDown", f"version {version} scaled down to 0 replicas")
    run.memory.history = history[: spec.strategy.revision_history_limit]


# ---- a rollout: the Service does not reach spec.version yet --------------------------------------


def _rollout(run: _Pass, plan: Plan, db: DatabaseState) -> Decision:
    spec, previous, cluster = run.spec, run.previous, run.cluster
    target = spec.version
    serving = run.memory.active_version

    # A new target, or a retry after a failure once the spec was edited, starts a new attempt.
    finished = previous.phase in (Phase.FAILED, Phase.ABORTED) and previous.target_version == target
    if previous.target_version != target:
        run.memory.target_version = target
        run.memory.attempt = 1
        run.memory.rollout_started_at = run.timestamp()
        run.memory.activated_at = None
        run.memory.replay = None
        run.event("RolloutStarted", f"rolling out version {target} (serving: {serving or 'nothing yet'})")
    elif finished and not _cleanup_pending(run, db):
        retry = previous.observed_generation is not None and run.generation != previous.observed_generation
        if not retry or spec.abort:
            return _stay_finished(run, plan)
        finished = False
        run.memory.attempt = previous.attempt + 1
        run.memory.rollout_started_at = run.timestamp()
        run.memory.replay = None
        run.event("RolloutRetried", f"retrying version {target} (attempt {previous.attempt + 1}) after a spec change")
    attempt = run.memory.attempt

    # The database is the gate: once the release is active there, traffic moves in this very pass.
    if release_is_active(spec, db):
        return _switch(run, db)

    if finished:
        reason = _progress_reason(previous) or "Failed"
        return _clean_up(run, plan, db, previous.phase, reason, _progress_message(previous))

    golive = _latest(cluster.jobs_for(target, attempt, "golive"))
    if spec.abort:
        if golive is not None and golive.state is JobState.RUNNING:
            run.poll(ROLLOUT_POLL_SECONDS)
            return run.finish(Phase.ACTIVATING, "AbortWaitingForGolive", "abort requested; golive is running")
        return _clean_up(run, plan, db, Phase.ABORTED, "Aborted", f"rollout of {target} aborted by spec.abort")

    # 1. The new version runs beside the old one, outside the Service.
    run.ensure_deployment()
    deployment = cluster.deployments.get(target)
    if deployment is not None and deployment.failure:
        return _fail(run, plan, db, "DeploymentFailed", f"Deployment of {target}: {deployment.failure}")
    if deployment is None or not deployment.available:
        ready = f"{deployment.ready_replicas}/{deployment.replicas}" if deployment else "0"
        run.poll(ROLLOUT_POLL_SECONDS)
        return run.finish(Phase.DEPLOYING, "Deploying", f"waiting for version {target} to be available ({ready} ready)")

    # 2. States the operator must not paper over.
    if plan.first_install and serving is not None:
        run.poll(BLOCKED_POLL_SECONDS)
        return run.finish(
            Phase.PENDING,
            "ProjectorStatesEmpty",
            f"version {serving} serves but projector_states is empty: activate it first "
            "(sequent:migrate:offline) so the operator can tell what changed",
            warning=True,
        )
    if plan.blocked:
        run.poll(BLOCKED_POLL_SECONDS)
        return run.finish(Phase.PENDING, plan.issues[0].reason, "; ".join(i.message for i in plan.issues), warning=True)
    for notice in plan.notices:
        run.condition("Planned", True, "RollbackByReplay", notice)

    # 3. Nothing to replay: activate the current configuration directly.
    if not plan.needs_replay:
        gate = None if plan.first_install else _promotion_gate(run)
        if gate is not None:
            return gate
        run.act(Activate(spec.projector_versions, tuple(plan.to_deactivate)))
        run.poll(ROLLOUT_POLL_SECONDS)
        what = "first install" if plan.first_install else "no projector needs a replay"
        return run.finish(Phase.ACTIVATING, "Activating", f"{what}: activating version {target}")

    # 4. Replay, stage by stage, as the database says.
    return _replay(run, plan, db, attempt, golive)


def _replay(run: _Pass, plan: Plan, db: DatabaseState, attempt: int, golive: JobView | None) -> Decision:
    spec, cluster = run.spec, run.cluster
    target = spec.version
    to_replay = plan.to_replay
    replay = db.replay if db.replay is not None and db.replay.in_progress else None
    run.poll(ROLLOUT_POLL_SECONDS)

    if golive is not None:
        if golive.state is JobState.RUNNING:
            return run.finish(Phase.ACTIVATING, "GoingLive", f"golive is running in Job {golive.name}")
        if golive.state is JobState.FAILED:
            return _fail(run, plan, db, "StageFailed", f"golive Job {golive.name} failed: {golive.message}")
        return _fail(
            run,
            plan,
            db,
            "VerificationFailed",
            f"golive Job {golive.name} succeeded but the database does not show version {target} active",
        )

    if replay is None:
        prepare = _latest(cluster.jobs_for(target, attempt, "prepare"))
        if prepare is not None:
            return _expect_running(run, plan, db, prepare, "prepared")
        if run.spec.paused:
            return _paused(run)
        registered = all(db.projectors.get(n) and db.projectors[n].replaying_version == v for n, v in to_replay.items())
        if not registered:
            run.act(RegisterReplaying(to_replay))
        run.act(RunStageJob(target, attempt, "prepare", projectors=tuple(sorted(to_replay))))
        names = ", ".join(f"{name} v{version}" for name, version in sorted(to_replay.items()))
        return run.finish(Phase.REPLAYING, "Preparing", f"replaying {names}: prepare")

    if replay.state in STAGE_AT_WORK:
        stage = STAGE_AT_WORK[replay.state]
        job = _latest(cluster.jobs_for(target, attempt, stage))
        if job is None:
            return _fail(
                run, plan, db, "StageInterrupted", f"replay is {replay.state} but no {stage} Job of this rollout exists"
            )
        return _expect_running(run, plan, db, job, replay.state)

    next_stage = {"prepared": "replay", "replayed": "optimize"}.get(replay.state)
    if next_stage is not None:
        job = _latest(cluster.jobs_for(target, attempt, next_stage))
        if job is not None:
            return _expect_running(run, plan, db, job, replay.state)
        if run.spec.paused:
            return _paused(run)
        run.act(RunStageJob(target, attempt, next_stage, projectors=tuple(sorted(to_replay))))
        return run.finish(Phase.REPLAYING, _stage_reason(next_stage), f"replay {replay.id}: {next_stage}")

    # optimized: catch up until the lag is small, then go live.
    lag = db.replay_lag or 0
    catchups = cluster.jobs_for(target, attempt, "catchup")
    last = _latest(catchups)
    if last is not None and last.state is not JobState.SUCCEEDED:
        return _expect_running(run, plan, db, last, replay.state)
    if lag > spec.replay.catchup.max_lag:
        if len(catchups) >= spec.replay.catchup.max_rounds:
            return _fail(
                run,
                plan,
                db,
                "CatchupDidNotConverge",
                f"lag is still {lag} events after {len(catchups)} catch-up rounds "
                f"(bound {spec.replay.catchup.max_lag})",
            )
        if run.spec.paused:
            return _paused(run)
        run.act(RunStageJob(target, attempt, "catchup", round=len(catchups) + 1, projectors=tuple(sorted(to_replay))))
        return run.finish(Phase.REPLAYING, "CatchingUp", f"catch-up round {len(catchups) + 1}: lag {lag} events")

    gate = _promotion_gate(run)
    if gate is not None:
        return gate
    if plan.to_deactivate:
        # Old code skips a projector with no active version, new code would refuse to write
        # while a projector it does not know is active: deactivate before golive.
        run.act(Deactivate(tuple(plan.to_deactivate)))
    run.act(RunStageJob(target, attempt, "golive", projectors=tuple(sorted(to_replay))))
    return run.finish(Phase.ACTIVATING, "GoingLive", f"lag {lag} events: golive")


def _stage_reason(stage: str) -> str:
    return {"prepare": "Preparing", "replay": "Replaying", "optimize": "Optimizing", "catchup": "CatchingUp"}.get(
        stage, "Replaying"
    )


def _expect_running(run: _Pass, plan: Plan, db: DatabaseState, job: JobView, state: str) -> Decision:
    """A stage Job exists: wait while it runs; a finished one must have moved the database on."""
    if job.state is JobState.RUNNING:
        phase = Phase.ACTIVATING if job.stage == "golive" else Phase.REPLAYING
        return run.finish(phase, _stage_reason(job.stage), f"{job.stage} is running in Job {job.name}")
    if job.state is JobState.FAILED:
        return _fail(run, plan, db, "StageFailed", f"{job.stage} Job {job.name} failed: {job.message}")
    expected = STAGE_RESULT[job.stage]
    return _fail(
        run,
        plan,
        db,
        "VerificationFailed",
        f"{job.stage} Job {job.name} succeeded but replay_states is {state!r}, not {expected!r}",
    )


def _promotion_gate(run: _Pass) -> Decision | None:
    spec = run.spec
    if spec.paused:
        return _paused(run)
    if spec.strategy.promotion is Promotion.MANUAL and spec.promote != spec.version:
        run.poll(BLOCKED_POLL_SECONDS)
        return run.finish(
            Phase.PAUSED,
            "AwaitingPromotion",
            f"version {spec.version} is ready to go live; set spec.promote to {spec.version!r} to promote it",
        )
    return None


def _paused(run: _Pass) -> Decision:
    run.poll(BLOCKED_POLL_SECONDS)
    return run.finish(Phase.PAUSED, "PausedByUser", f"rollout of {run.spec.version} paused by spec.paused")


def release_is_active(spec: ProjectorSetSpec, db: DatabaseState) -> bool:
    """Every projector of the release is active at its version, nothing is left in flight, and
    no projector outside the release is still active."""
    if db.empty:
        return False
    for name, version in spec.projector_versions.items():
        state = db.projectors.get(name)
        if state is None or state.active_version != version:
            return False
    if _in_flight(db):
        return False
    return all(name in spec.projector_versions or s.active_version is None for name, s in db.projectors.items())


def _in_flight(db: DatabaseState) -> bool:
    """Some projector is replaying or activating."""
    return any(s.replaying_version is not None or s.activating_version is not None for s in db.projectors.values())


def _switch(run: _Pass, db: DatabaseState) -> Decision:
    spec, cluster = run.spec, run.cluster
    target = spec.version
    serving = run.memory.active_version
    if run.memory.activated_at is None:
        run.memory.activated_at = run.timestamp()
        run.event("Activated", f"the database shows every projector of {target} active")
    deployment = cluster.deployments.get(target)
    if deployment is None or not deployment.available:
        # Switching to pods that are not ready would drop every request; keep the old pods.
        run.ensure_deployment()
        run.poll(ROLLOUT_POLL_SECONDS)
        return run.finish(
            Phase.SWITCHING,
            "WaitingForAvailablePods",
            f"version {target} is active in the database but its Deployment is not available",
            warning=True,
        )
    run.act(SwitchService(target))
    history = [v for v in [serving, *run.memory.history] if v and v != target]
    run.memory.active_version = target
    run.memory.previous_version = serving
    run.memory.switched_at = run.timestamp()
    run.memory.history = history
    run.event("ServiceSwitched", f"Service {spec.service.name} now selects version {target}")
    if serving is not None:
        run.poll(max(0.5, float(spec.strategy.scale_down_delay_seconds)))
    return run.finish(Phase.ACTIVE, "RolloutComplete", f"version {target} serves")


# ---- failure, abort and clean-up ----------------------------------------------------------------


def _cleanup_pending(run: _Pass, db: DatabaseState) -> bool:
    in_flight = _in_flight(db)
    replay_open = db.replay is not None and db.replay.in_progress
    jobs_running = any(
        job.state is JobState.RUNNING for job in run.cluster.jobs_for(run.spec.version, run.previous.attempt)
    )
    # The abort stage may clear the database by itself; the new version must still be scaled down.
    deployment = run.cluster.deployments.get(run.spec.version)
    still_scaled_up = deployment is not None and deployment.replicas > 0
    return in_flight or replay_open or jobs_running or still_scaled_up


def _fail(run: _Pass, plan: Plan, db: DatabaseState, reason: str, message: str) -> Decision:
    return _clean_up(run, plan, db, Phase.FAILED, reason, message)


def _clean_up(run: _Pass, plan: Plan, db: DatabaseState, phase: Phase, reason: str, message: str) -> Decision:
    """Abort the replay and clear replaying/activating; the old version keeps serving."""
    spec, cluster = run.spec, run.cluster
    target = spec.version
    attempt = int(run.memory.attempt)
    jobs = cluster.jobs_for(target, attempt)
    if any(job.stage == "golive" and job.state is JobState.RUNNING for job in cluster.jobs):
        # golive is one transaction: it either lands (and traffic moves) or leaves nothing behind.
        run.poll(ROLLOUT_POLL_SECONDS)
        return run.finish(Phase.ACTIVATING, "GoingLive", f"{message}; waiting for golive to finish first")
    for job in cluster.jobs:
        if job.state is JobState.RUNNING and job.stage != "abort":
            run.act(DeleteJob(job.name))
    replay_open = db.replay is not None and db.replay.in_progress
    in_flight = _in_flight(db)
    abort_job = _latest([j for j in jobs if j.stage == "abort"])
    if replay_open:
        if abort_job is None:
            projectors = tuple(sorted(db.replay.projectors)) if db.replay is not None else ()
            run.act(RunStageJob(target, attempt, "abort", projectors=projectors))
            run.poll(ROLLOUT_POLL_SECONDS)
            return run.finish(phase, reason, message, note="; aborting the replay", warning=phase is Phase.FAILED)
        if abort_job.state is JobState.RUNNING:
            run.poll(ROLLOUT_POLL_SECONDS)
            return run.finish(phase, reason, message, note="; aborting the replay", warning=phase is Phase.FAILED)
        if abort_job.state is JobState.FAILED:
            run.condition("ReplayAborted", False, "AbortFailed", f"abort Job {abort_job.name}: {abort_job.message}")
    if in_flight:
        run.act(ClearReplaying())
        run.poll(ROLLOUT_POLL_SECONDS)
    deployment = cluster.deployments.get(target)
    if deployment is not None and deployment.replicas > 0:
        run.act(ScaleDeployment(target, 0))
    serving = run.memory.active_version
    note = f"; version {serving} keeps serving" if serving else ""
    if not in_flight and not (replay_open and abort_job is not None and abort_job.state is JobState.FAILED):
        run.condition("ReplayAborted", True, "Aborted", "replaying and activating versions are cleared")
    return run.finish(phase, reason, message, note=note, warning=phase is Phase.FAILED)


def _stay_finished(run: _Pass, plan: Plan) -> Decision:
    """A failed or aborted rollout waits for a spec change (a retry) with spec.abort false."""
    previous = run.previous
    if run.conditions.get("ReplayAborted") is None or run.conditions["ReplayAborted"].reason != "AbortFailed":
        run.condition("ReplayAborted", True, "Aborted", "replaying and activating versions are cleared")
    serving = run.memory.active_version
    note = f"; version {serving} keeps serving" if serving else ""
    note += "; set spec.abort to false to retry" if run.spec.abort else "; edit the spec to retry"
    reason = _progress_reason(previous) or "Failed"
    return run.finish(previous.phase, reason, _progress_message(previous), note=note)


def _latest(jobs: Sequence[JobView]) -> JobView | None:
    return max(jobs, key=lambda job: job.round, default=None)
