"""The ProjectorSet API (projectorset.io/v1alpha1): the single source of its schema.

The CRD's openAPIV3Schema in ``crds/`` is generated from these models
(``python -m projectorset.api.crd``), and the operator parses every object it reads
with them, so the API server and the operator agree on every field and default.
Python code uses snake_case; the manifest uses camelCase through aliases.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic.alias_generators import to_camel

GROUP = "projectorset.io"
VERSION = "v1alpha1"
KIND = "ProjectorSet"
PLURAL = "projectorsets"
SINGULAR = "projectorset"
SHORT_NAMES = ["pjs"]

# Labels the operator puts on everything it creates; versions must be label values.
NAME_LABEL = f"{GROUP}/name"
VERSION_LABEL = f"{GROUP}/version"
STAGE_LABEL = f"{GROUP}/stage"
LABEL_VALUE_PATTERN = r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
# A projector is a (possibly namespaced) Ruby class name, e.g. Blog::PostProjector.
PROJECTOR_NAME_PATTERN = r"^[A-Z][A-Za-z0-9_]*(::[A-Z][A-Za-z0-9_]*)*$"
SCHEMA_NAME_PATTERN = r"^[a-z_][a-z0-9_]{0,62}$"


class Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class SecretKeyRef(Model):
    """Where the database URI lives: never copied into logs, Events or status."""

    name: str = Field(min_length=1, max_length=253, description="Name of a Secret in the same namespace.")
    key: str = Field(
        default="uri", min_length=1, max_length=253, description="Key holding a libpq URI (postgresql://...)."
    )


class DatabaseSpec(Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.viewSchema != self.replaySchema && self.viewSchema != self.archiveSchema "
                    "&& self.replaySchema != self.archiveSchema",
                    "message": "viewSchema, replaySchema and archiveSchema must be three different schemas",
                }
            ]
        }
    )

    secret_ref: SecretKeyRef = Field(description="Secret key holding the application's database URI.")
    event_store_schema: str = Field(
        default="sequent_schema",
        pattern=SCHEMA_NAME_PATTERN,
        description="Schema of the event store, projector_states and replay_states.",
        json_schema_extra={
            "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "eventStoreSchema is immutable"}]
        },
    )
    view_schema: str = Field(default="view_schema", pattern=SCHEMA_NAME_PATTERN)
    replay_schema: str = Field(default="replay_schema", pattern=SCHEMA_NAME_PATTERN)
    archive_schema: str = Field(default="archive_schema", pattern=SCHEMA_NAME_PATTERN)

    @model_validator(mode="after")
    def _schemas_differ(self) -> DatabaseSpec:
        if len({self.view_schema, self.replay_schema, self.archive_schema}) != 3:
            raise ValueError("viewSchema, replaySchema and archiveSchema must be three different schemas")
        return self


class ProjectorSpec(Model):
    name: str = Field(
        min_length=1,
        max_length=200,
        pattern=PROJECTOR_NAME_PATTERN,
        description="Projector class name, e.g. PostProjector.",
    )
    version: int = Field(ge=1, le=2_147_483_647, description="The projector's version in this release.")


class ServiceRef(Model):
    name: str = Field(
        min_length=1,
        max_length=63,
        description="The Service users reach; the operator switches its selector to the active version.",
    )


def _sequent_task(task: str) -> list[str]:
    return ["bundle", "exec", "rake", f"sequent:projectors:replay:{task}"]


class StageCommands(Model):
    """One command per stage, run in a Job built from the new version's pod template. In every
    element, {projectors} becomes the comma-separated projector names and {groupSize} and
    {processes} the replay settings. The defaults are Sequent's rake tasks."""

    migrate: list[str] = Field(
        default_factory=lambda: ["bundle", "exec", "rake", "sequent:db:migrate"],
        description="Run first in every rollout: the new release's database migrations (Sequent's "
        "documented workflow runs view-schema migrations before prepare, whose pg_dump --strict-names "
        "fails on a table the migrations did not create). It must be idempotent and compatible with "
        "the running release. [] skips it (when migrations run elsewhere, e.g. an init container).",
    )
    prepare: list[str] = Field(default_factory=lambda: _sequent_task("prepare[{projectors}]"), min_length=1)
    replay: list[str] = Field(default_factory=lambda: _sequent_task("replay[{groupSize},{processes}]"), min_length=1)
    catchup: list[str] = Field(default_factory=lambda: _sequent_task("catchup[{groupSize},{processes}]"), min_length=1)
    optimize: list[str] = Field(default_factory=lambda: _sequent_task("optimize"), min_length=1)
    golive: list[str] = Field(default_factory=lambda: _sequent_task("golive"), min_length=1)
    abort: list[str] = Field(default_factory=lambda: _sequent_task("abort"), min_length=1)


class CatchupSpec(Model):
    max_lag: int = Field(default=1000, ge=0, description="Go live once at most this many events are left to catch up.")
    max_rounds: int = Field(default=10, ge=1, le=1000, description="Catch-up Jobs before the rollout fails.")


CHECK_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"


class Check(Model):
    """A read-only SQL query run after the replay caught up and before golive (README: "Checks
    before golive"). It passes when it returns exactly one row whose first column is true."""

    name: str = Field(
        min_length=1,
        max_length=63,
        pattern=CHECK_NAME_PATTERN,
        description="Unique among the checks; shown in the status and Events.",
    )
    query: str = Field(
        min_length=1,
        max_length=10_000,
        description="One SQL statement, run in a read-only transaction; passes when it returns exactly one row "
        "whose first column is true. Qualify tables with their schema (replay_schema.x, view_schema.x).",
    )
    timeout_seconds: int = Field(
        default=30, ge=1, le=600, description="statement_timeout of the query; a check that runs longer fails."
    )

    @property
    def digest(self) -> str:
        """Identifies the query: a result counts only for the query that produced it."""
        return hashlib.sha256(self.query.encode()).hexdigest()[:12]


class ReplaySpec(Model):
    commands: StageCommands = Field(default_factory=StageCommands)
    container: str | None = Field(
        default=None,
        max_length=63,
        description="Container of the template that runs the stages (default: the first).",
    )
    group_size: int = Field(
        default=250_000,
        ge=1,
        description="Events per replay group ({groupSize}); Sequent's own default is 250,000.",
    )
    processes: int = Field(default=1, ge=1, le=256, description="Replay processes ({processes}).")
    catchup: CatchupSpec = Field(default_factory=CatchupSpec)
    stage_timeout_seconds: int = Field(
        default=86_400,
        ge=10,
        description="Deadline of each stage Job (activeDeadlineSeconds): a replay of a large event store "
        "takes hours, so the default is a day. A stage past it is stopped and the rollout fails.",
    )
    stage_retries: int = Field(
        default=2,
        ge=0,
        le=20,
        description="Retries of a failed optimize or golive Job (backoffLimit), the stages Sequent can run "
        "again. prepare, replay and catchup are never retried in place (a failure marks the replay failed): "
        "the rollout fails, aborts the replay, and a retry starts from a fresh prepare.",
    )
    checks: list[Check] = Field(
        default_factory=list,
        max_length=20,
        description="Read-only SQL checks run after the replay caught up and before golive (and before waiting "
        "for promotion); one that fails, times out or errors fails the rollout (CheckFailed).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )

    @field_validator("checks")
    @classmethod
    def _unique_check_names(cls, checks: list[Check]) -> list[Check]:
        names = [check.name for check in checks]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"check names must be unique: {', '.join(twice)} listed twice")
        return checks


class Promotion(StrEnum):
    AUTOMATIC = "Automatic"
    MANUAL = "Manual"


class StrategySpec(Model):
    promotion: Promotion = Field(
        default=Promotion.AUTOMATIC,
        description="Manual waits, before golive, until spec.promote names the target version.",
    )
    scale_down_delay_seconds: int = Field(
        default=30, ge=0, description="How long the old version keeps its pods after the switch."
    )
    revision_history_limit: int = Field(
        default=2, ge=0, le=50, description="Old versions' Deployments kept (scaled to zero)."
    )


def _pod_template_schema(schema: dict[str, Any]) -> None:
    schema.clear()
    schema.update(
        {
            "type": "object",
            "description": "Pod template of the application (a core/v1 PodTemplateSpec).",
            "x-kubernetes-preserve-unknown-fields": True,
            "required": ["spec"],
            "properties": {
                "metadata": {
                    "type": "object",
                    "x-kubernetes-preserve-unknown-fields": True,
                    # Typed so that the CEL rule below can read the labels.
                    "properties": {
                        "labels": {
                            "type": "object",
                            "maxProperties": 64,
                            "additionalProperties": {"type": "string", "maxLength": 63},
                        }
                    },
                },
                "spec": {
                    "type": "object",
                    "x-kubernetes-preserve-unknown-fields": True,
                    "required": ["containers"],
                    "properties": {
                        "containers": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": 20,
                            "items": {
                                "type": "object",
                                "x-kubernetes-preserve-unknown-fields": True,
                                "required": ["name"],
                                "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 63}},
                            },
                        }
                    },
                },
            },
            "x-kubernetes-validations": [
                {
                    "rule": f"!has(self.metadata) || !has(self.metadata.labels) "
                    f"|| !('{VERSION_LABEL}' in self.metadata.labels || '{NAME_LABEL}' in self.metadata.labels)",
                    "message": f"template.metadata.labels must not set {NAME_LABEL} or {VERSION_LABEL}: "
                    "the operator sets them",
                }
            ],
        }
    )


class ProjectorSetSpec(Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.replay) || !has(self.replay.container) "
                    "|| self.template.spec.containers.exists(c, c.name == self.replay.container)",
                    "message": "replay.container must name a container of template.spec.containers",
                    "fieldPath": ".replay.container",
                },
                {
                    "rule": "!has(self.requiredProjectors) "
                    "|| self.requiredProjectors.all(r, !self.projectors.exists(p, p.name == r.name))",
                    "message": "a projector is listed in both projectors and requiredProjectors",
                    "fieldPath": ".requiredProjectors",
                },
            ]
        }
    )

    version: str = Field(
        min_length=1,
        max_length=40,
        pattern=LABEL_VALUE_PATTERN,
        description="The application release; changing it (with template and projectors) starts an upgrade.",
    )
    replicas: int = Field(default=1, ge=0, le=1000)
    service: ServiceRef
    database: DatabaseSpec
    projectors: list[ProjectorSpec] = Field(
        min_length=1,
        max_length=500,
        description="Every projector of this release with its version.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    required_projectors: list[ProjectorSpec] = Field(
        default_factory=list,
        # 100, not 500: the API server's cost budget for the rule that no name is in both lists.
        max_length=100,
        description="Projectors this release's code registers that another ProjectorSet on the same event store "
        "owns (Sequent refuses writes from code that lacks an active projector or has another version of it). "
        "This set never replays, activates or deactivates them; it switches to this version only once the "
        "database shows each of them active at the version listed here.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    template: dict[str, Any] = Field(json_schema_extra=_pod_template_schema)
    replay: ReplaySpec = Field(default_factory=ReplaySpec)
    strategy: StrategySpec = Field(default_factory=StrategySpec)
    paused: bool = Field(default=False, description="Hold the rollout at its next step until set back to false.")
    abort: bool = Field(
        default=False,
        description="Abort the rollout of spec.version: the replay is aborted and the old version keeps serving.",
    )
    promote: str | None = Field(
        default=None,
        max_length=40,
        description="With manual promotion: the version allowed to go live (set it to spec.version).",
    )
    retry: int = Field(
        default=0,
        ge=0,
        description="Bump to retry a Failed or Aborted rollout (kubectl projectorset retry): like any spec edit "
        "with abort false, a new generation starts a new attempt.",
    )

    @field_validator("projectors", "required_projectors")
    @classmethod
    def _unique_projector_names(cls, projectors: list[ProjectorSpec], info: ValidationInfo) -> list[ProjectorSpec]:
        what = "projector" if info.field_name == "projectors" else "required projector"
        seen: set[str] = set()
        for projector in projectors:
            if projector.name in seen:
                raise ValueError(f"{what} {projector.name} is listed twice")
            seen.add(projector.name)
        return projectors

    @model_validator(mode="after")
    def _owned_or_required(self) -> ProjectorSetSpec:
        both = sorted(set(self.projector_versions) & set(self.required_versions))
        if both:
            raise ValueError(
                f"requiredProjectors: {', '.join(both)} also in projectors; a projector is either this set's "
                "own (projectors) or another set's (requiredProjectors)"
            )
        return self

    @field_validator("template")
    @classmethod
    def _template_has_containers(cls, template: dict[str, Any]) -> dict[str, Any]:
        containers = (template.get("spec") or {}).get("containers") or []
        if not containers:
            raise ValueError("template.spec.containers must list at least one container")
        labels = (template.get("metadata") or {}).get("labels") or {}
        for reserved in (NAME_LABEL, VERSION_LABEL):
            if reserved in labels:
                raise ValueError(f"template.metadata.labels must not set {reserved}: the operator sets it")
        return template

    @model_validator(mode="after")
    def _replay_container_exists(self) -> ProjectorSetSpec:
        if self.replay.container is not None:
            names = [c.get("name") for c in self.template["spec"]["containers"]]
            if self.replay.container not in names:
                raise ValueError(f"replay.container {self.replay.container!r} is not a container of the template")
        return self

    @property
    def projector_versions(self) -> dict[str, int]:
        return {p.name: p.version for p in self.projectors}

    @property
    def required_versions(self) -> dict[str, int]:
        """``requiredProjectors``: another set's projectors this release's code needs active."""
        return {p.name: p.version for p in self.required_projectors}


# ---- status -------------------------------------------------------------------------------------


class Phase(StrEnum):
    PENDING = "Pending"
    DEPLOYING = "Deploying"
    REPLAYING = "Replaying"
    ACTIVATING = "Activating"
    SWITCHING = "Switching"
    ACTIVE = "Active"
    PAUSED = "Paused"
    FAILED = "Failed"
    ABORTED = "Aborted"


class Condition(Model):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


# status.projectors[].plan of a requiredProjectors entry (the others are planning.Change values).
REQUIRED_PLAN = "Required"


class ProjectorStatus(Model):
    name: str
    spec_version: int | None = None
    active_version: int | None = None
    activating_version: int | None = None
    replaying_version: int | None = None
    plan: str | None = Field(
        default=None,
        description="Unchanged, New, Changed or Removed; Required for a requiredProjectors entry (another set's).",
    )


class ReplayStatus(Model):
    stage: str | None = None
    state: str | None = Field(default=None, description="replay_states.state as read from the database.")
    replay_id: int | None = None
    catchup_round: int = 0
    lag: int | None = Field(
        default=None,
        description="Events at or after continue_replay_at_xact_id: what catch-up and golive still replay.",
    )
    lag_at_least: bool = Field(
        default=False, description="The lag read stopped at its budget: the lag is at least `lag`."
    )
    job: str | None = None


class CheckResult(Model):
    name: str
    passed: bool
    result: str = Field(
        description="What the query returned (true, false, NULL, no row, ...) or the error's class and message."
    )
    checked_at: str
    version: str = Field(description="The version rolled out when the check ran.")
    attempt: int = Field(description="The rollout attempt the check ran in; a retry runs the checks again.")
    digest: str = Field(default="", description="Identifies the query that ran.")


class ProjectorSetStatus(Model):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)

    phase: Phase = Phase.PENDING
    message: str = ""
    observed_generation: int | None = None
    active_version: str | None = Field(default=None, description="The version the Service points to.")
    target_version: str | None = Field(default=None, description="The version being rolled out.")
    previous_version: str | None = None
    conditions: list[Condition] = Field(default_factory=list)
    projectors: list[ProjectorStatus] = Field(default_factory=list)
    replay: ReplayStatus | None = None
    history: list[str] = Field(default_factory=list, description="Earlier versions, newest first.")
    rollout_started_at: str | None = None
    activated_at: str | None = Field(default=None, description="When the database showed the target active.")
    switched_at: str | None = None
    attempt: int = Field(default=0, description="Rollout attempt for target version; bumped by a retry.")
    checks: list[CheckResult] = Field(
        default_factory=list, description="Results of spec.replay.checks in the latest attempt that ran them."
    )
