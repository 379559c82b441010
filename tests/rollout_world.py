"""An in-memory world for the phase machine: it carries out the actions ``decide`` returns the
way the cluster and Sequent would, so tests can walk whole rollouts step by step.

It is a fast stand-in for unit tests only; the same rollouts run against a real PostgreSQL
and a real API server elsewhere in the suite.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from projectorset.api import ProjectorSetSpec, ProjectorSetStatus
from projectorset.observation import (
    Activate,
    ClearReplaying,
    ClusterView,
    DatabaseView,
    Deactivate,
    DeleteDeployment,
    DeleteJob,
    DeploymentView,
    EnsureDeployment,
    JobState,
    JobView,
    RegisterReplaying,
    RunStageJob,
    ScaleDeployment,
    SwitchService,
)
from projectorset.rollout import Decision, decide
from projectorset.sequent import DatabaseState, ProjectorState, ReplayState

START = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)


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
    projectors: dict[str, ProjectorState] = field(default_factory=dict)
    replay: ReplayState | None = None
    lag: int = 0
    database_error: tuple[str, str] | None = None
    history: list[Decision] = field(default_factory=list)
    golive_runs: int = 0
    # Deployments become available on the pass after they are created, like a healthy rollout.
    auto_available: bool = True

    # -- observation --

    def cluster(self) -> ClusterView:
        return ClusterView(
            service_found=self.service_found,
            service_version=self.service_version,
            secret_problem=self.secret_problem,
            deployments=dict(self.deployments),
            jobs=tuple(self.jobs.values()),
        )

    def database(self) -> DatabaseView:
        if self.database_error is not None:
            return DatabaseView(error_reason=self.database_error[0], error_message=self.database_error[1])
        lag = self.lag if self.replay is not None and self.replay.in_progress else None
        return DatabaseView(DatabaseState(dict(self.projectors), self.replay, lag))

    # -- one operator pass --

    def step(self, *, restart: bool = False, execute: bool = True) -> Decision:
        """One pass of the operator. ``restart`` round-trips the status through its manifest form,
        which is all an operator restarted at this moment would have."""
        if restart:
            self.status = ProjectorSetStatus.model_validate(
                copy.deepcopy(self.status.model_dump(by_alias=True, mode="json"))
            )
        for name, deployment in list(self.deployments.items()):
            if self.auto_available and not deployment.available and deployment.replicas > 0:
                self.deployments[name] = replace(deployment, available=True, ready_replicas=deployment.replicas)
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

    def execute(self, action: object) -> None:
        match action:
            case EnsureDeployment(version=version, replicas=replicas):
                current = self.deployments.get(version)
                if current is None:
                    self.deployments[version] = DeploymentView(version, replicas)
                elif current.replicas != replicas:
                    self.deployments[version] = replace(current, replicas=replicas)
            case ScaleDeployment(version=version, replicas=replicas):
                self.deployments[version] = replace(self.deployments[version], replicas=replicas, ready_replicas=0)
            case DeleteDeployment(version=version):
                self.deployments.pop(version, None)
            case RunStageJob(version=version, attempt=attempt, stage=stage, round=round_):
                name = f"blog-{version}-a{attempt}-{stage}" + (f"-{round_}" if round_ else "")
                if name not in self.jobs:
                    self.jobs[name] = JobView(name, version, attempt, stage, round_, JobState.RUNNING)
                    self.start_stage(stage)
            case DeleteJob(name=name):
                self.jobs.pop(name, None)
            case RegisterReplaying(versions=versions):
                for name, version in versions.items():
                    old = self.projectors.get(name, ProjectorState(name))
                    assert old.activating_version is None
                    self.projectors[name] = replace(old, replaying_version=version, activating_version=None)
            case Activate(versions=versions, deactivate=removed):
                for name, version in versions.items():
                    self.projectors[name] = ProjectorState(name, version, None, None)
                for name in removed:
                    self.projectors[name] = replace(self.projectors[name], active_version=None)
            case Deactivate(names=names):
                for name in names:
                    self.projectors[name] = replace(self.projectors[name], active_version=None)
            case ClearReplaying(names=names):
                for name in names:
                    if name in self.projectors:
                        state = self.projectors[name]
                        self.projectors[name] = replace(state, replaying_version=None, activating_version=None)
            case SwitchService(version=version):
                self.service_version = version
            case _:
                raise AssertionError(f"unknown action {action!r}")

    # -- Sequent's side of the stages --

    def start_stage(self, stage: str) -> None:
        if stage == "prepare":
            self.replay = ReplayState(
                (self.replay.id + 1) if self.replay else 1, "created", tuple(self.replaying()), None
            )
        elif stage == "replay" and self.replay:
            self.replay = replace(self.replay, state="replaying")
        elif stage == "catchup" and self.replay:
            self.replay = replace(self.replay, state="catching_up")
        elif stage == "golive":
            self.golive_runs += 1

    def finish_job(self, name: str, *, succeed: bool = True, move_database: bool = True) -> None:
        job = self.jobs[name]
        self.jobs[name] = replace(
            job,
            state=JobState.SUCCEEDED if succeed else JobState.FAILED,
            message="" if succeed else "BackoffLimitExceeded",
            finished_at=self.now,
        )
        if not succeed or not move_database or job.stage == "migrate":
            return
        replay = self.replay
        assert replay is not None or job.stage == "abort"
        if job.stage == "prepare":
            self.replay = replace(replay, state="prepared", continue_replay_at_xact_id=100)
        elif job.stage == "replay":
            self.replay = replace(replay, state="replayed")
        elif job.stage == "optimize":
            self.replay = replace(replay, state="optimized")
        elif job.stage == "catchup":
            self.replay = replace(replay, state="optimized")
            self.lag = 0
        elif job.stage == "golive":
            for name_ in replay.projectors:
                state = self.projectors[name_]
                self.projectors[name_] = ProjectorState(name_, state.replaying_version, None, None)
            self.replay = replace(replay, state="live")
        elif job.stage == "abort" and replay is not None and replay.in_progress:
            # Sequent's abort also clears the replaying and activating versions of the replay's projectors.
            self.replay = replace(replay, state="aborted")
            for name_ in replay.projectors:
                if name_ in self.projectors:
                    state = self.projectors[name_]
                    self.projectors[name_] = replace(state, replaying_version=None, activating_version=None)

    def stage_raises(self, name: str, *, job_ends: bool = True) -> None:
        """A stage fails the way Sequent's stages do: the replay is marked ``failed`` (and stays in
        progress); the Job's pod exits non-zero (``job_ends``) or is still retrying."""
        assert self.replay is not None
        self.replay = replace(self.replay, state="failed")
        if job_ends:
            self.finish_job(name, succeed=False)

    def finish_running_jobs(self) -> None:
        for name, job in list(self.jobs.items()):
            if job.state is JobState.RUNNING:
                self.finish_job(name)

    def replaying(self) -> list[str]:
        return sorted(n for n, s in self.projectors.items() if s.replaying_version is not None)

    def running_job(self, stage: str) -> str:
        names = [n for n, j in self.jobs.items() if j.stage == stage and j.state is JobState.RUNNING]
        assert names, f"no running {stage} Job in {list(self.jobs)}"
        return names[-1]

    def serving_v1(self, projectors: dict[str, int] | None = None) -> World:
        """An application whose version v1 serves, with its projectors active."""
        self.service_version = "v1"
        self.deployments["v1"] = DeploymentView("v1", 2, 2, True)
        for name, version in (projectors or {"PostProjector": 1}).items():
            self.projectors[name] = ProjectorState(name, version)
        self.status = ProjectorSetStatus(phase="Active", active_version="v1", target_version="v1")
        return self

    def upgrade(self, spec: ProjectorSetSpec) -> None:
        self.spec = spec
        self.generation += 1
