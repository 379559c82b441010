"""What the operator sees, and what it asks for: plain data shared by the phase machine, the
controller and the adapters. Nothing here knows Kopf, the Kubernetes client or psycopg."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from projectorset.api import Check
from projectorset.api.conditions import Reason
from projectorset.domain.sequent import DatabaseState, Stage

# ---- observations -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeploymentView:
    version: str
    replicas: int
    ready_replicas: int = 0
    available: bool = False
    # Set when the Deployment controller gave up (progress deadline exceeded).
    failure: str | None = None
    template_hash: str | None = None
    # The projector versions of the release this Deployment runs (its release annotation).
    projectors: Mapping[str, int] | None = None
    # Its release's requiredProjectors (other sets' projectors its code needs active).
    required: Mapping[str, int] = field(default_factory=dict)
    # Its pods that are not terminating (status.replicas): what an autoscaler counts.
    current_replicas: int = 0


class JobState(StrEnum):
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


@dataclass(frozen=True)
class JobView:
    name: str
    version: str
    attempt: int
    stage: str
    round: int
    state: JobState
    message: str = ""
    # Pods of the Job still running or terminating: a stage is over only when none is left.
    active: int = 0
    # When the Job completed or failed (its condition's lastTransitionTime).
    finished_at: datetime | None = None
    # Deleted, with its pods still terminating (the operator deletes Jobs in the foreground).
    deleting: bool = False


@dataclass(frozen=True)
class ClusterView:
    service_found: bool = True
    # The version label in the Service's selector: which version users reach.
    service_version: str | None = None
    # Why the database Secret could not be used (missing Secret or key); never its content.
    secret_problem: str | None = None
    deployments: Mapping[str, DeploymentView] = field(default_factory=dict)
    jobs: tuple[JobView, ...] = ()
    # The other ProjectorSet (namespace/name) that lists each of spec.requiredProjectors on this
    # set's event store, as the operator's cross-set index knows them; absent: none lists it.
    projector_owners: Mapping[str, str] = field(default_factory=dict)

    def jobs_for(self, version: str, attempt: int, stage: str | None = None) -> list[JobView]:
        return [
            job
            for job in self.jobs
            if job.version == version and job.attempt == attempt and (stage is None or job.stage == stage)
        ]


@dataclass(frozen=True)
class DatabaseView:
    state: DatabaseState | None = None
    error_reason: Reason | None = None
    error_message: str | None = None


# ---- actions: what a pass asks for, carried out by the controller in order -------------------------

# Cluster actions go to ``Cluster.apply``.


@dataclass(frozen=True)
class EnsureDeployment:
    """Create the version's Deployment from the spec's template if missing; set its replicas."""

    version: str
    replicas: int


@dataclass(frozen=True)
class ScaleDeployment:
    version: str
    replicas: int


@dataclass(frozen=True)
class DeleteDeployment:
    version: str


@dataclass(frozen=True)
class RunStageJob:
    """Create the Job for one replay stage if it does not exist yet (the name makes it idempotent)."""

    version: str
    attempt: int
    stage: Stage
    round: int = 0
    # The projectors being replayed: {projectors} in the stage command.
    projectors: tuple[str, ...] = ()


@dataclass(frozen=True)
class DeleteJob:
    name: str


@dataclass(frozen=True)
class SwitchService:
    version: str
    # Filled in by the controller: this set never served yet, so it may take over a Service whose
    # selector picks pods the operator did not create (ownership.service_claim).
    first_install: bool = False


ClusterAction = EnsureDeployment | ScaleDeployment | DeleteDeployment | RunStageJob | DeleteJob | SwitchService


# Database actions are Sequent's writes to projector_states, and the read-only checks before golive
# (``SequentDatabase``).


@dataclass(frozen=True)
class RegisterReplaying:
    versions: Mapping[str, int]


@dataclass(frozen=True)
class Activate:
    """Register ``versions`` active and deactivate ``deactivate`` in one database transaction."""

    versions: Mapping[str, int]
    deactivate: tuple[str, ...] = ()


@dataclass(frozen=True)
class Deactivate:
    names: tuple[str, ...]


@dataclass(frozen=True)
class ClearReplaying:
    """Sequent's abort write: clear replaying and activating versions of these projectors (this
    ProjectorSet's: another application may share the schema)."""

    names: tuple[str, ...]


@dataclass(frozen=True)
class RunChecks:
    """Run ``checks`` (read-only SQL) and record their results in the status the pass writes;
    the next pass decides from them. Read-only, so running them again (a lost status patch,
    a restart) changes nothing."""

    version: str
    attempt: int
    checks: tuple[Check, ...]


DatabaseAction = RegisterReplaying | Activate | Deactivate | ClearReplaying | RunChecks
Action = ClusterAction | DatabaseAction


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: Reason
    message: str
