"""An in-memory world for the phase machine: it carries out the actions ``decide`` returns the
way the cluster and Sequent would, so tests can walk whole rollouts step by step.

Sequent's side follows its replayer (see docs/sequent-protocol.md):
``prepare`` creates the replay row (refused while another replay is in progress) and registers the
projectors replaying; a stage that raises marks the replay ``failed``, which stays in progress until
``abort``; ``optimize`` and ``golive`` leave the state as it was when they fail; ``abort`` works from
any in-progress state and raises with none; a stage that ends after an abort marks it ``failed``
again; golive commits in one transaction, possibly some time before its Job reports success.

``step`` calls ``decide`` directly; ``reconcile`` runs a whole pass through the real
``controller.Reconciler`` (observe, decide, act, patch status, emit Events) with faults
injected where the test asks: a failing API call or database write, a lost status patch.

By default the world is kind: migrate changes nothing, the lag moves only when a test sets it, a
Job's database effect and its completion happen together, pods never die, checks take no time.
The real world's hardships are options, each a small object on the World (all off by default):
``Schema`` (migrate moves a schema version the serving release's code needs), ``EventFlow`` (the
lag of a replay in progress grows with time), ``JobPods`` (pods that die, replacement pods up to
``backoffLimit``, a failed Job's pod still terminating), ``SequentQuirks`` (what Sequent master's
code does: a failed prepare leaves ``created``, prepare inserts its row before it checks the
names, abort resolves the replay at its start and marks that row ``aborted`` whatever it became)
and ``check_seconds`` (a check's query takes time). ``stage_takes_effect`` does a stage's
database work while its Job still runs; ``pod_dies`` kills the pod after it.

It is a fast stand-in for unit tests only; the same rollouts run against a real PostgreSQL
and a real API server elsewhere in the suite.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from projectorset.adapters.database import CheckOutcome, DatabaseUnreachable, IllegalProjectorState
from projectorset.api import CheckResult, ProjectorSetSpec, ProjectorSetStatus
from projectorset.api.conditions import Reason
from projectorset.controller.reconciler import DatabaseRegistry, PassResult, Reconciler
from projectorset.domain.cluster import ClusterError, Owner
from projectorset.domain.observation import (
    Action,
    Activate,
    ClearReplaying,
    ClusterView,
    DatabaseAction,
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
from projectorset.domain.resources import job_name, stale_template, template_hash
from projectorset.domain.rollout import Decision, decide, with_check_results
from projectorset.domain.sequent import IN_PROGRESS_STATES as IN_PROGRESS
from projectorset.domain.sequent import DatabaseState, ProjectorState, ReplayState

START = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)
OWNER = Owner("blog", "default", "uid-blog")
DATABASE_URI = "postgresql://blog:secret@db.example/blog"


def manifest(version: str = "v1", projectors: dict[str, int] | None = None, **overrides: Any) -> ProjectorSetSpec:
    body: dict[str, Any] = {
        "version": version,
        "replicas": 2,
        "service": {"name": "blog"},
        "database": {"secretRef": {"name": "blog-db"}},
        "projectors": [{"name": n, "version": v} for n, v in (projectors or {"PostProjector": 1}).items()],
        "template": {"spec": {"containers": [{"name": "app", "image": "blog:" + version}]}},
    }
    body.update(overrides)
    # No migrate stage unless a test asks for it (as when migrations run in an init container).
    replay = body.setdefault("replay", {})
    replay["commands"] = {"migrate": [], **replay.get("commands", {})}
    return ProjectorSetSpec.model_validate(body)


@dataclass
class StageRun:
    """Sequent's side of one stage Job: the replay it works on and the code it runs."""

    stage: str
    # The projector versions of the release the Job's image has (its projector classes).
    versions: Mapping[str, int]
    replay_id: int | None = None
    # Set when the stage cannot even start (no replay in progress, a replay already in progress
    # for prepare): the Job fails without touching the database.
    doomed: str | None = None
    # The state a catch-up returns to.
    saved_state: str | None = None
    # golive's transaction committed (its Job may still be Running).
    committed: bool = False
    # The world's rollout epoch when the Job was created (see the stateful test).
    epoch: int = 0
    # Every projector class of the Job's image (abort loads each class of the replay it resumes).
    code: Mapping[str, int] = field(default_factory=dict)
    # The stage's database work is done (True) or was refused (False) while its pod still runs.
    effect: bool | None = None
    # When the pod started (a catch-up replays the events written since).
    started_at: datetime | None = None


# ---- the real world's hardships (each off by default) ------------------------------------------


@dataclass
class Schema:
    """The application's schema migrations: each version's code needs the schema at
    ``needs[version]`` or later; its migrate Job brings the database (``version``) there."""

    needs: dict[str, int]
    version: int = 0

    def migrate(self, release: str) -> None:
        self.version = max(self.version, self.needs.get(release, 0))

    def serves(self, release: str | None) -> bool:
        """The code of ``release`` runs on this schema (None: no release serves)."""
        return release is None or self.needs.get(release, 0) <= self.version


@dataclass
class EventFlow:
    """The applications keep writing: while a replay is in progress its lag grows by
    ``per_second`` events a second (golive's locked tail grows with it)."""

    per_second: int = 0

    def elapse(self, world: World, seconds: float) -> None:
        replay = world.replay
        if self.per_second and replay is not None and replay.state in IN_PROGRESS:
            world.lag += int(self.per_second * seconds)

    def written_since(self, world: World, started_at: datetime | None) -> int:
        """Events written since ``started_at``: what a catch-up that began then leaves behind."""
        if started_at is None:
            return 0
        return int(self.per_second * (world.now - started_at).total_seconds())


@dataclass
class JobPods:
    """Pods of stage Jobs die (eviction, OOM, node lost: no Ruby exception, nothing marked failed).
    Kubernetes starts a replacement pod, which runs the stage again from its start, until
    ``backoff_limit`` pods failed; then the Job fails with its last pod still terminating."""

    backoff_limit: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    # Failed Jobs whose last pod still terminates (gone once time passes).
    terminating: set[str] = field(default_factory=set)

    def exhausted(self, job: str) -> bool:
        self.failures[job] = self.failures.get(job, 0) + 1
        return self.failures[job] > self.backoff_limit


@dataclass
class SequentQuirks:
    """What Sequent master's code does that a tidier model would not (docs/sequent-protocol.md lists each)."""

    # prepare's rescue runs inside the transaction its re-raise rolls back: the row stays `created`.
    prepare_leaves_created: bool = False
    # prepare inserts the row before it checks each name is a projector class.
    prepare_inserts_before_names: bool = False
    # abort resumes the replay in progress when it starts and marks that row `aborted` when it ends,
    # whatever its state became meanwhile (a golive that committed: `live` -> `aborted`).
    abort_resolves_at_start: bool = False


@dataclass
class Faults:
    """What goes wrong in one ``reconcile`` pass."""

    # Listing the cluster fails: the pass raises before deciding anything.
    observe_fails: bool = False
    # The n-th action of the pass fails: "before" it takes effect (409, 5xx, refused write), or
    # "after" (the API server or the database did it, the response was lost: a timeout).
    failing_action: int | None = None
    failing_when: str = "before"
    failing_status: int = 500
    status_patch_lost: bool = False

    @property
    def any(self) -> bool:
        return self.observe_fails or self.failing_action is not None or self.status_patch_lost


@dataclass
class PassRecord:
    """What one ``reconcile`` pass saw and did, for the invariants."""

    result: PassResult | None
    raised: Exception | None
    applied: list[Action]
    failed_action: Action | None
    status_written: bool
    events: list[Event]
    # The database as the pass read it, and the Service before and after.
    projectors_before: dict[str, ProjectorState]
    service_before: str | None
    service_after: str | None


@dataclass(repr=False)
class World:
    spec: ProjectorSetSpec
    status: ProjectorSetStatus = field(default_factory=ProjectorSetStatus)
    generation: int = 1
    now: datetime = START
    service_version: str | None = None
    service_found: bool = True
    secret_problem: str | None = None
    deployments: dict[str, DeploymentView] = field(default_factory=dict)
    jobs: dict[str, JobView] = field(default_factory=dict)
    runs: dict[str, StageRun] = field(default_factory=dict)
    projectors: dict[str, ProjectorState] = field(default_factory=dict)
    replays: list[ReplayState] = field(default_factory=list)
    lag: int = 0
    database_error: tuple[str, str] | None = None
    history: list[Decision] = field(default_factory=list)
    golive_runs: int = 0
    # Deployments become available on the pass after they are created, like a healthy rollout.
    auto_available: bool = True
    # What each check returns when the controller runs it (passed, result); unlisted ones pass.
    check_outcomes: dict[str, tuple[bool, str]] = field(default_factory=dict)
    checks_run: list[str] = field(default_factory=list)
    epoch: int = 0
    # The spec.version of the last pass that acted (see execute).
    acted_version: str | None = None
    # Sequent's lag after a catch-up round.
    lag_after_catchup: int = 0
    # The controller's side: the stored object's status as a dict (what the API server holds).
    stored_status: dict[str, Any] | None = None
    reconciler: Reconciler | None = None
    events: list[Event] = field(default_factory=list)
    faults: Faults = field(default_factory=Faults)
    # The hardships (see the module docstring): None or defaults keep the world kind.
    schema: Schema | None = None
    flow: EventFlow = field(default_factory=EventFlow)
    pods: JobPods = field(default_factory=JobPods)
    quirks: SequentQuirks = field(default_factory=SequentQuirks)
    # How long each check's query runs (the applications keep writing meanwhile).
    check_seconds: int = 0

    def __repr__(self) -> str:
        return f"World(spec.version={self.spec.version}, service={self.service_version}, phase={self.status.phase})"

    # -- the replay row Sequent's tasks resume from --

    @property
    def replay(self) -> ReplayState | None:
        """The in-progress replay (at most one, by Sequent's unique index), else the latest."""
        in_progress = [r for r in self.replays if r.state in IN_PROGRESS]
        if in_progress:
            return in_progress[-1]
        return self.replays[-1] if self.replays else None

    @replay.setter
    def replay(self, value: ReplayState | None) -> None:
        if value is None:
            self.replays.clear()
            return
        for index, row in enumerate(self.replays):
            if row.id == value.id:
                self.replays[index] = value
                return
        self.replays.append(value)

    def _set_replay_state(self, replay_id: int, state: str, **changes: Any) -> None:
        for index, row in enumerate(self.replays):
            if row.id == replay_id:
                self.replays[index] = replace(row, state=state, **changes)

    def replay_by_id(self, replay_id: int | None) -> ReplayState | None:
        return next((r for r in self.replays if r.id == replay_id), None)

    # -- observation --

    def cluster(self) -> ClusterView:
        return ClusterView(
            service_found=self.service_found,
            service_version=self.service_version,
            secret_problem=self.secret_problem,
            deployments=dict(self.deployments),
            jobs=tuple(self.jobs.values()),
        )

    def database_state(self) -> DatabaseState:
        replay = self.replay
        lag = self.lag if replay is not None and replay.state in IN_PROGRESS else None
        return DatabaseState(dict(self.projectors), replay, lag)

    def database(self) -> DatabaseView:
        if self.database_error is not None:
            return DatabaseView(error_reason=self.database_error[0], error_message=self.database_error[1])
        return DatabaseView(self.database_state())

    # -- one operator pass, deciding directly --

    def step(self, *, restart: bool = False, execute: bool = True) -> Decision:
        """One pass of the operator. ``restart`` round-trips the status through its manifest form,
        which is all an operator restarted at this moment would have."""
        if restart:
            self.status = ProjectorSetStatus.model_validate(
                copy.deepcopy(self.status.model_dump(by_alias=True, mode="json"))
            )
        self.pods_become_ready()
        decision = decide(self.spec, self.generation, self.status, self.cluster(), self.database(), self.now)
        self.history.append(decision)
        self.status = decision.status
        if execute:
            for action in decision.actions:
                self.execute(action)
        return decision

    def run(self, passes: int = 30, **kwargs: Any) -> Decision:
        """Pass until nothing more happens, finishing Jobs as Sequent would."""
        decision = self.step(**kwargs)
        for _ in range(passes):
            self.finish_running_jobs()
            self.now += timedelta(seconds=5)
            decision = self.step(**kwargs)
        return decision

    def advance(self, seconds: float) -> None:
        """Time passes: the applications keep writing (``flow``), dead pods finish terminating."""
        self.now += timedelta(seconds=seconds)
        self.flow.elapse(self, seconds)
        if seconds > 0:
            for name in self.pods.terminating:
                if name in self.jobs:
                    self.jobs[name] = replace(self.jobs[name], active=0)
            self.pods.terminating.clear()

    def pods_become_ready(self) -> None:
        """What the cluster does between two looks: new pods become ready, deleted Jobs' pods end."""
        for name, job in list(self.jobs.items()):
            if job.deleting:
                self.jobs.pop(name)
                self.runs.pop(name, None)
        for name, deployment in list(self.deployments.items()):
            if self.auto_available and not deployment.available and deployment.replicas > 0:
                self.deployments[name] = replace(deployment, available=True, ready_replicas=deployment.replicas)

    # -- one operator pass through the real controller --

    def body(self) -> dict[str, Any]:
        return {
            "metadata": {
                "name": OWNER.name,
                "namespace": OWNER.namespace,
                "uid": OWNER.uid,
                "generation": self.generation,
            },
            "spec": self.spec.model_dump(by_alias=True, mode="json"),
            "status": copy.deepcopy(self.stored_status),
        }

    def restart_operator(self) -> None:
        """A new operator process: no memory but what the API server and the database hold."""
        self.reconciler = None

    def reconcile(self, faults: Faults | None = None) -> PassRecord:
        """One pass of ``controller.Reconciler`` over this world, with ``faults`` injected."""
        self.faults = faults or Faults()
        if self.reconciler is None:
            adapter = _WorldCluster(self)
            self.reconciler = Reconciler(adapter, _WorldRegistry(self), clock=lambda: self.now)
        adapter = self.reconciler.cluster
        assert isinstance(adapter, _WorldCluster)
        adapter.start_pass()
        projectors_before = dict(self.projectors)
        service_before = self.service_version
        raised: Exception | None = None
        result: PassResult | None = None
        try:
            result = self.reconciler.reconcile(self.body())
        except ClusterError as error:
            raised = error
        if result is not None and result.decision is not None:
            self.history.append(result.decision)
        record = PassRecord(
            result=result,
            raised=raised,
            applied=list(adapter.applied),
            failed_action=adapter.failed_action,
            status_written=adapter.status_written,
            events=list(adapter.events),
            projectors_before=projectors_before,
            service_before=service_before,
            service_after=self.service_version,
        )
        if self.stored_status is not None:
            self.status = ProjectorSetStatus.model_validate(self.stored_status)
        self.faults = Faults()
        return record

    # -- carrying out actions --

    def execute(self, action: object) -> None:
        if self.spec.version != self.acted_version:
            # A new rollout begins with the first action taken for another version: edits that no
            # pass acted on (all held by an outage, say) leave the rollout in flight as it was.
            self.epoch += 1
            self.acted_version = self.spec.version
        match action:
            case EnsureDeployment(version=version, replicas=replicas):
                current = self.deployments.get(version)
                if current is None:
                    if version != self.spec.version:
                        raise ClusterError(f"Deployment {version} is gone", Reason.KUBERNETES_NOT_FOUND)
                    self.deployments[version] = DeploymentView(
                        version,
                        replicas,
                        template_hash=template_hash(self.spec.template),
                        projectors=dict(self.spec.projector_versions),
                        required=dict(self.spec.required_versions),
                    )
                elif version == self.spec.version and stale_template(current, self.spec):
                    # The template was edited: Kubernetes rolls the pods, which are not ready at first.
                    self.deployments[version] = replace(
                        current,
                        replicas=replicas,
                        ready_replicas=0,
                        available=False,
                        template_hash=template_hash(self.spec.template),
                        projectors=dict(self.spec.projector_versions),
                        required=dict(self.spec.required_versions),
                    )
                elif current.replicas != replicas:
                    self.deployments[version] = replace(current, replicas=replicas, ready_replicas=0, available=False)
            case ScaleDeployment(version=version, replicas=replicas):
                current = self.deployments.get(version)
                if current is None:
                    raise ClusterError(f"ScaleDeployment: Deployment {version} not found", Reason.KUBERNETES_NOT_FOUND)
                if current.replicas != replicas:
                    self.deployments[version] = replace(current, replicas=replicas, ready_replicas=0, available=False)
            case DeleteDeployment(version=version):
                self.deployments.pop(version, None)
            case RunStageJob(version=version, attempt=attempt, stage=stage, round=round_, projectors=names):
                name = job_name(OWNER, version, attempt, stage, round_)
                if name in self.jobs:
                    return  # 409: the API server keeps the Job that has this name
                self.jobs[name] = JobView(name, version, attempt, stage, round_, JobState.RUNNING, active=1)
                code = self._release_code(version)
                unknown = [n for n in names if n not in code]
                self.runs[name] = StageRun(stage, {n: code[n] for n in names if n in code} or code, epoch=self.epoch)
                self.runs[name].code = code
                if unknown and not (stage == "prepare" and self.quirks.prepare_inserts_before_names):
                    # Class.const_get raises before the task does anything.
                    self.runs[name].doomed = f"uninitialized constant {unknown[0]}"
                self.start_stage(name)
                if unknown:
                    # Sequent master's prepare raises only after it inserted the row (left `created`).
                    self.runs[name].doomed = f"uninitialized constant {unknown[0]}"
            case DeleteJob(name=name):
                # Foreground deletion: the pod is killed (SIGTERM is no StandardError for the rake
                # task: nothing is marked failed); the Job stays in view, deleting, until the pod is
                # gone (the next time the world is looked at).
                job = self.jobs.get(name)
                if job is not None and job.active > 0:
                    self.jobs[name] = replace(job, deleting=True)
                    run = self.runs.get(name)
                    if run is not None:
                        run.doomed = run.doomed or "killed"
                else:
                    self.jobs.pop(name, None)
                    self.runs.pop(name, None)
            case RegisterReplaying(versions=versions):
                self.write_register_replaying(versions)
            case Activate(versions=versions, deactivate=removed):
                self.write_activate(versions, removed)
            case Deactivate(names=names):
                self.write_deactivate(names)
            case ClearReplaying(names=names):
                for name in names:
                    if name in self.projectors:
                        state = self.projectors[name]
                        self.projectors[name] = replace(state, replaying_version=None, activating_version=None)
            case SwitchService(version=version):
                self.service_version = version
            case RunChecks(version=version, attempt=attempt, checks=checks):
                # As the controller does: the results go into the status the pass writes.
                results = []
                for check in checks:
                    self.advance(self.check_seconds)
                    passed, result = self.check_outcomes.get(check.name, (True, "true"))
                    self.checks_run.append(check.name)
                    results.append(
                        CheckResult(
                            name=check.name,
                            passed=passed,
                            result=result,
                            checked_at=self.now,
                            version=version,
                            attempt=attempt,
                            digest=check.digest,
                        )
                    )
                self.status = with_check_results(self.status, results)
            case _:
                raise AssertionError(f"unknown action {action!r}")

    def _release_code(self, version: str) -> dict[str, int]:
        """The projector classes a stage Job's image has: spec.version's release, or for another
        version the release its Deployment records (kube.py builds the Job from that template)."""
        deployment = self.deployments.get(version)
        if version == self.spec.version or deployment is None or deployment.projectors is None:
            return dict(self.spec.projector_versions)
        return dict(deployment.projectors)

    # -- the operator's database writes, with SequentDatabase's checks --

    def write_register_replaying(self, versions: Mapping[str, int]) -> None:
        for name, version in sorted(versions.items()):
            old = self.projectors.get(name, ProjectorState(name))
            if old.activating_version is not None:
                raise IllegalProjectorState(f"cannot register {name} replaying: activating")
            if old.replaying_version not in (None, version):
                raise IllegalProjectorState(f"cannot register {name} replaying: another version replays")
        for name, version in versions.items():
            old = self.projectors.get(name, ProjectorState(name))
            self.projectors[name] = replace(old, replaying_version=version, activating_version=None)

    def write_activate(self, versions: Mapping[str, int], removed: tuple[str, ...] = ()) -> None:
        for name, version in versions.items():
            state = self.projectors.get(name, ProjectorState(name))
            busy = state.activating_version if state.activating_version is not None else state.replaying_version
            if busy is not None and busy != version:
                raise IllegalProjectorState(f"cannot activate {name}: version {busy} is busy")
        for name in removed:
            state = self.projectors.get(name)
            if state is not None and state.activating_version is not None:
                raise IllegalProjectorState(f"cannot deactivate {name}: activating")
        for name, version in versions.items():
            self.projectors[name] = ProjectorState(name, version, None, None)
        for name in removed:
            if name in self.projectors:
                self.projectors[name] = replace(self.projectors[name], active_version=None)

    def write_deactivate(self, names: tuple[str, ...]) -> None:
        for name in names:
            state = self.projectors.get(name)
            if state is not None and state.activating_version is not None:
                raise IllegalProjectorState(f"cannot deactivate {name}: activating")
        for name in names:
            if name in self.projectors:
                self.projectors[name] = replace(self.projectors[name], active_version=None)

    # -- Sequent's side of the stages --

    def _replaying_matches(self, run: StageRun) -> bool:
        """Sequent's verify_replaying_projector_versions: the replay set and the code agree."""
        replay = self.replay_by_id(run.replay_id)
        if replay is None:
            return False
        classes = {name: run.versions.get(name) for name in replay.projectors}
        replaying = {n: s.replaying_version for n, s in self.projectors.items() if s.replaying_version is not None}
        return replaying == classes

    def start_stage(self, name: str) -> None:
        run = self.runs[name]
        run.started_at = self.now
        if run.doomed is not None or run.stage == "migrate":
            return
        current = self.replay
        in_progress = current if current is not None and current.state in IN_PROGRESS else None
        if run.stage == "prepare":
            if in_progress is not None:
                run.doomed = "a replay is already in progress (unique index)"
                return
            replay_id = max((r.id for r in self.replays), default=0) + 1
            self.replays.append(ReplayState(replay_id, "created", tuple(sorted(run.versions)), None))
            run.replay_id = replay_id
            return
        if in_progress is None:
            run.doomed = "no replay in progress"
            return
        run.replay_id = in_progress.id
        if run.stage == "replay":
            if in_progress.state != "prepared" or not self._replaying_matches(run):
                run.doomed = f"initial replay can only be performed when prepared, not {in_progress.state}"
                return
            self._set_replay_state(in_progress.id, "replaying")
        elif run.stage == "catchup":
            if in_progress.state not in ("replayed", "optimized") or not self._replaying_matches(run):
                run.doomed = f"catching up can only be performed when replayed or optimized, not {in_progress.state}"
                return
            run.saved_state = in_progress.state
            self._set_replay_state(in_progress.id, "catching_up")
        elif run.stage == "golive":
            self.golive_runs += 1

    def _mark_failed(self, run: StageRun) -> None:
        if run.stage == "prepare" and self.quirks.prepare_leaves_created:
            return  # the rescue's update is rolled back with prepare's transaction
        if run.replay_id is not None:
            self._set_replay_state(run.replay_id, "failed")

    def commit_golive(self, name: str) -> bool:
        """golive's single transaction; False when Sequent's checks refuse it (nothing changes)."""
        run = self.runs[name]
        replay = self.replay_by_id(run.replay_id)
        if run.committed or run.doomed or replay is None or replay.state != "optimized":
            return run.committed
        if not self._replaying_matches(run):
            return False
        for projector in replay.projectors:
            self.projectors[projector] = ProjectorState(projector, run.versions[projector], None, None)
        self._set_replay_state(replay.id, "live")
        run.committed = True
        return True

    def finish_job(self, name: str, *, succeed: bool = True, move_database: bool = True, hang: bool = False) -> None:
        """The Job ends. ``succeed=False`` is a stage that raised (Sequent marks the replay failed
        where it does); ``hang`` is a Job killed by its deadline (nothing marked);
        ``move_database=False`` a Job that exits 0 without doing its work."""
        job = self.jobs[name]
        run = self.runs.get(name) or StageRun(job.stage, {})
        ok = succeed and not hang and run.doomed is None
        if run.effect is not None:
            # The database work was done (or refused) while the pod ran: now it only exits.
            ok = ok and run.effect
        elif ok and move_database:
            ok = self._complete_stage(name, run)
        elif succeed and not hang and not move_database:
            ok = True
        elif not succeed and not hang and run.doomed is None and run.stage in ("prepare", "replay", "catchup"):
            self._mark_failed(run)
        message = ""
        if not ok:
            message = (
                "DeadlineExceeded: Job was active longer than specified deadline" if hang else "BackoffLimitExceeded"
            )
        state = JobState.SUCCEEDED if ok else JobState.FAILED
        self.jobs[name] = replace(job, state=state, message=message, finished_at=self.now, active=0)

    def _complete_stage(self, name: str, run: StageRun) -> bool:
        replay = self.replay_by_id(run.replay_id)
        stage = run.stage
        if stage == "migrate":
            # The release's migrations: nothing in Sequent's replay tables, the schema moves.
            if self.schema is not None and name in self.jobs:
                self.schema.migrate(self.jobs[name].version)
            return True
        if stage == "abort" and self.quirks.abort_resolves_at_start:
            return self._abort(self.replay_by_id(run.replay_id), run)
        if stage == "abort":
            current = self.replay
            if current is None or current.state not in IN_PROGRESS:
                return False  # resume_from_database finds nothing in progress: the task raises
            if any(projector not in run.code for projector in current.projectors):
                return False  # the replay's projector classes are unknown to this image
            for projector in current.projectors:
                if projector in self.projectors:
                    state = self.projectors[projector]
                    self.projectors[projector] = replace(state, replaying_version=None, activating_version=None)
            self._set_replay_state(current.id, "aborted")
            return True
        if stage == "golive":
            return self.commit_golive(name)
        assert replay is not None
        if stage == "prepare":
            if replay.state != "created":
                return False
            if any(self.projectors.get(p, ProjectorState(p)).activating_version is not None for p in replay.projectors):
                self._mark_failed(run)
                return False
            for projector in replay.projectors:
                state = self.projectors.get(projector, ProjectorState(projector))
                self.projectors[projector] = replace(
                    state, replaying_version=run.versions[projector], activating_version=None
                )
            self._set_replay_state(replay.id, "prepared")
            return True
        if stage == "optimize":
            if replay.state != "replayed" or not self._replaying_matches(run):
                return False
            self._set_replay_state(replay.id, "optimized")
            return True
        # replay and catchup: a state or version check that fails inside the rescue marks it failed.
        expected = "replaying" if stage == "replay" else "catching_up"
        if replay.state != expected or not self._replaying_matches(run):
            self._mark_failed(run)
            return False
        if stage == "replay":
            self._set_replay_state(replay.id, "replayed", continue_replay_at_xact_id=100)
        else:
            self._set_replay_state(replay.id, run.saved_state or "replayed", continue_replay_at_xact_id=200)
            self.lag = self.lag_after_catchup + self.flow.written_since(self, run.started_at)
        return True

    def _abort(self, replay: ReplayState | None, run: StageRun) -> bool:
        """Sequent master's abort of the replay it resumed at its start, whatever its state now."""
        if replay is None:
            return False
        if any(projector not in run.code for projector in replay.projectors):
            return False
        for projector in replay.projectors:
            if projector in self.projectors:
                state = self.projectors[projector]
                self.projectors[projector] = replace(state, replaying_version=None, activating_version=None)
        self._set_replay_state(replay.id, "aborted")
        return True

    def stage_takes_effect(self, name: str) -> None:
        """The stage's database work is done (golive commits, prepare registers, ...) while its Job
        still runs: its pod has yet to exit, or may die before it does (``pod_dies``)."""
        run = self.runs.get(name)
        if run is None or run.effect is not None or run.doomed is not None:
            return
        run.effect = self._complete_stage(name, run)

    def pod_dies(self, name: str) -> None:
        """The Job's pod is killed, whatever it had done. A replacement pod runs the stage again
        from its start while ``pods.backoff_limit`` allows; then the Job fails, its pod terminating."""
        job = self.jobs[name]
        if self.pods.exhausted(name):
            message = "BackoffLimitExceeded: Job has reached the specified backoff limit"
            self.jobs[name] = replace(job, state=JobState.FAILED, message=message, finished_at=self.now, active=1)
            self.pods.terminating.add(name)
            return
        run = self.runs.get(name)
        if run is not None:
            self.runs[name] = StageRun(run.stage, run.versions, epoch=run.epoch, code=run.code)
            self.start_stage(name)

    def stage_raises(self, name: str, *, job_ends: bool = True) -> None:
        """A stage fails the way Sequent's stages do: the replay is marked ``failed`` (and stays in
        progress); the Job's pod exits non-zero (``job_ends``) or is still retrying."""
        run = self.runs.get(name)
        if run is not None and run.replay_id is not None:
            self._mark_failed(run)
        elif self.replay is not None:
            self.replay = replace(self.replay, state="failed")
        if job_ends:
            self.finish_job(name, succeed=False)

    def finish_running_jobs(self) -> None:
        for name, job in list(self.jobs.items()):
            if job.state is JobState.RUNNING and not job.deleting:
                self.finish_job(name)

    def replaying(self) -> list[str]:
        return sorted(n for n, s in self.projectors.items() if s.replaying_version is not None)

    def running_job(self, stage: str) -> str:
        names = [n for n, j in self.jobs.items() if j.stage == stage and j.state is JobState.RUNNING]
        assert names, f"no running {stage} Job in {list(self.jobs)}"
        return names[-1]

    def serving_v1(self, projectors: dict[str, int] | None = None) -> World:
        """An application whose version v1 serves, with its projectors active."""
        release = projectors or {"PostProjector": 1}
        self.service_version = "v1"
        self.deployments["v1"] = DeploymentView("v1", 2, 2, True, projectors=dict(release))
        for name, version in release.items():
            self.projectors[name] = ProjectorState(name, version)
        if self.schema is not None:
            self.schema.migrate("v1")
        self.status = ProjectorSetStatus(phase="Active", active_version="v1", target_version="v1")
        self.acted_version = "v1"
        self.stored_status = self.status.model_dump(by_alias=True, mode="json")
        return self

    def upgrade(self, spec: ProjectorSetSpec) -> None:
        self.spec = spec
        self.generation += 1


# ---- the controller's view of the world -----------------------------------------------------------


class _WorldCluster:
    """The ``Cluster`` protocol over a World, failing where ``world.faults`` says."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.start_pass()

    def start_pass(self) -> None:
        self.calls = 0
        self.applied: list[Action] = []
        self.failed_action: Action | None = None
        self.status_written = False
        self.events: list[Event] = []

    def _count(self, action: Action) -> None:
        """Fail the action the faults name (counting cluster and database actions alike)."""
        faults = self.world.faults
        index = self.calls
        self.calls += 1
        if faults.failing_action != index:
            return
        self.failed_action = action
        if faults.failing_when == "after":
            self.world.execute(action)
            self.applied.append(action)
        if isinstance(action, DatabaseAction):
            raise DatabaseUnreachable("the database did not answer in time")
        raise ClusterError(f"{type(action).__name__}: {faults.failing_status} injected")

    def observe(self, owner: Owner, spec: ProjectorSetSpec) -> tuple[ClusterView, str | None]:
        if self.world.faults.observe_fails:
            raise ClusterError("listing Deployments and Jobs: 503 injected")
        self.world.pods_become_ready()
        return self.world.cluster(), DATABASE_URI

    def forget_database_uri(self, owner: Owner, spec: ProjectorSetSpec) -> None:
        pass  # one URI that never changes

    def apply(self, owner: Owner, spec: ProjectorSetSpec, action: Action) -> None:
        self._count(action)
        self.world.execute(action)
        self.applied.append(action)

    def patch_status(self, owner: Owner, status: dict[str, Any]) -> None:
        if self.world.faults.status_patch_lost:
            raise ClusterError("writing status: 500 injected")
        self.world.stored_status = copy.deepcopy(status)
        self.status_written = True

    def emit(self, owner: Owner, event: Event) -> None:
        self.events.append(event)
        self.world.events.append(event)


class _WorldRegistry(DatabaseRegistry):
    """Every ProjectorSet's database is the world's."""

    def __init__(self, world: World) -> None:
        super().__init__()
        self.database = _WorldDatabase(world)

    def get(self, owner: Owner, uri: str, schema: str) -> Any:
        return self.database

    def forget(self, owner: Owner) -> None:
        pass


class _WorldDatabase:
    """The part of ``SequentDatabase`` the controller uses, over a World."""

    def __init__(self, world: World) -> None:
        self.world = world

    def _check(self) -> None:
        if self.world.database_error is not None:
            raise DatabaseUnreachable(self.world.database_error[1])

    def close(self) -> None:
        pass

    def read_state(self) -> DatabaseState:
        self._check()
        return self.world.database_state()

    def read_projector_states(self, lock_timeout_ms: int | None = None) -> DatabaseState:
        self._check()
        return DatabaseState(projectors=dict(self.world.projectors))

    def _write(self, action: Action) -> None:
        self._check()
        adapter = self.world.reconciler.cluster if self.world.reconciler is not None else None
        if isinstance(adapter, _WorldCluster):
            adapter._count(action)
            self.world.execute(action)
            adapter.applied.append(action)
        else:
            self.world.execute(action)

    def register_replaying(self, versions: Mapping[str, int]) -> None:
        self._write(RegisterReplaying(dict(versions)))

    def activate(self, versions: Mapping[str, int], deactivate: Any = ()) -> None:
        self._write(Activate(dict(versions), tuple(deactivate)))

    def deactivate(self, names: Any) -> None:
        self._write(Deactivate(tuple(names)))

    def abort(self, names: Any) -> None:
        self._write(ClearReplaying(tuple(names)))

    def run_checks(self, checks: Any) -> list[CheckOutcome]:
        """Read-only: what ``world.check_outcomes`` says (unlisted checks pass)."""
        self._check()
        outcomes = []
        for check in checks:
            self.world.advance(self.world.check_seconds)
            self.world.checks_run.append(check.name)
            outcomes.append(CheckOutcome(check.name, *self.world.check_outcomes.get(check.name, (True, "true"))))
        return outcomes
