"""The ProjectorSet API (projectorset.io/v1alpha1): the single source of its schema.

The CRD's openAPIV3Schema in ``crds/`` is generated from these models
(``python -m projectorset.api.crd``), and the operator parses every object it reads
with them, so the API server and the operator agree on every field and default.
Python code uses snake_case; the manifest uses camelCase through aliases.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PlainSerializer,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)
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


# ---- times --------------------------------------------------------------------------------------


def utc_seconds(moment: datetime) -> datetime:
    """A time as the status keeps it: in UTC, to the second (the precision of metav1.Time)."""
    return moment.astimezone(UTC).replace(microsecond=0)


def rfc3339(moment: datetime) -> str:
    """The one text form of a time, in the manifest and in messages: RFC 3339 in UTC, ``Z``."""
    return utc_seconds(moment).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any) -> datetime | None:
    """A time as Kubernetes objects carry it (RFC 3339 text, or a datetime already), in UTC; None
    when absent or unreadable. The status's own times are parsed by the models (``Time``)."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str) and value:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return None
    else:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


# A time in the status: a timezone-aware datetime in Python, RFC 3339 text in the manifest.
Time = Annotated[AwareDatetime, AfterValidator(utc_seconds), PlainSerializer(rfc3339, when_used="json")]


class Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class SecretKeyRef(Model):
    """Where the database URI lives: never copied into logs, Events or status."""

    name: str = Field(
        min_length=1, max_length=253, description="Name of a Secret in the ProjectorSet's namespace (required)."
    )
    key: str = Field(
        default="uri",
        min_length=1,
        max_length=253,
        description="Key of the Secret whose value is the application's libpq URI (postgresql://...). Default: uri.",
    )


class DatabaseSpec(Model):
    """The application's PostgreSQL database: where Sequent's event store and view tables live."""

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

    secret_ref: SecretKeyRef = Field(
        description="The Secret key holding the application's database URI. The URI is never copied into "
        "logs, Events or the status."
    )
    event_store_schema: str = Field(
        default="sequent_schema",
        pattern=SCHEMA_NAME_PATTERN,
        description="PostgreSQL schema of Sequent's event store, projector_states and replay_states. "
        "Immutable. Default: sequent_schema.",
        json_schema_extra={
            "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "eventStoreSchema is immutable"}]
        },
    )
    view_schema: str = Field(
        default="view_schema",
        pattern=SCHEMA_NAME_PATTERN,
        description="Sequent's view schema: the projectors' tables the serving version reads. Differs from "
        "replaySchema and archiveSchema. Default: view_schema.",
    )
    replay_schema: str = Field(
        default="replay_schema",
        pattern=SCHEMA_NAME_PATTERN,
        description="Sequent's replay schema: where prepare and replay build the new tables that golive moves "
        "into viewSchema. Differs from viewSchema and archiveSchema. Default: replay_schema.",
    )
    archive_schema: str = Field(
        default="archive_schema",
        pattern=SCHEMA_NAME_PATTERN,
        description="Sequent's archive schema: where golive moves the view tables it replaces. Differs from "
        "viewSchema and replaySchema. Default: archive_schema.",
    )

    @model_validator(mode="after")
    def _schemas_differ(self) -> DatabaseSpec:
        if len({self.view_schema, self.replay_schema, self.archive_schema}) != 3:
            raise ValueError("viewSchema, replaySchema and archiveSchema must be three different schemas")
        return self


class ProjectorSpec(Model):
    """A Sequent projector and the version the release's code has of it."""

    name: str = Field(
        min_length=1,
        max_length=200,
        pattern=PROJECTOR_NAME_PATTERN,
        description="The projector's Ruby class name, namespaced with :: where it is (e.g. Blog::PostProjector); "
        "unique in the list.",
    )
    version: int = Field(
        ge=1,
        le=2_147_483_647,
        description="The projector's version in this release (its Sequent version number, at least 1); "
        "a changed version is replayed.",
    )


class ServiceRef(Model):
    """The Service users reach, in the ProjectorSet's namespace."""

    name: str = Field(
        min_length=1,
        max_length=63,
        description="Name of the Service users reach. The operator only sets its selector (to the serving "
        "version's pods) and its owner annotation; one ProjectorSet per Service.",
    )


def _sequent_task(task: str) -> list[str]:
    return ["bundle", "exec", "rake", f"sequent:projectors:replay:{task}"]


def _stage_command(task: str, meaning: str) -> Any:
    """A stage's command: Sequent's rake task ``task`` unless set, named in the description."""
    default = _sequent_task(task)
    return Field(
        default_factory=lambda: list(default), min_length=1, description=f"{meaning} Default: {' '.join(default)}."
    )


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
    prepare: list[str] = _stage_command(
        "prepare[{projectors}]", "Creates the replay schema's tables and registers the projectors replaying."
    )
    replay: list[str] = _stage_command(
        "replay[{groupSize},{processes}]",
        "The initial replay of every event into the replay schema (hours on a large event store).",
    )
    catchup: list[str] = _stage_command(
        "catchup[{groupSize},{processes}]",
        "Replays the events written since the last round, until at most replay.catchup.maxLag are left.",
    )
    optimize: list[str] = _stage_command("optimize", "Builds indexes and vacuums and analyzes the replayed tables.")
    golive: list[str] = _stage_command(
        "golive",
        "One transaction: replays the last events, moves the replayed tables into the view schema and activates "
        "the projectors; traffic moves once it commits.",
    )
    abort: list[str] = _stage_command(
        "abort", "Aborts a failed or abandoned replay: clears the replaying versions and drops the replay schema."
    )


class CatchupSpec(Model):
    """When the replay has caught up enough to go live."""

    max_lag: int = Field(
        default=1000,
        ge=0,
        description="golive runs once at most this many events are left to replay; more runs another "
        "catch-up round. Unit: events. Default: 1000.",
    )
    max_rounds: int = Field(
        default=10,
        ge=1,
        le=1000,
        description="Catch-up Jobs run before the rollout fails (CatchupDidNotConverge). 1 to 1000; default: 10.",
    )


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
        default=30,
        ge=1,
        le=600,
        description="statement_timeout of the query in seconds (1 to 600); a check that runs longer fails. "
        "Default: 30.",
    )

    @property
    def digest(self) -> str:
        """Identifies the query: a result counts only for the query that produced it."""
        return hashlib.sha256(self.query.encode()).hexdigest()[:12]


class ReplaySpec(Model):
    """How the new release's projectors are replayed: Sequent's replay stages, each run as a Job."""

    commands: StageCommands = Field(
        default_factory=StageCommands,
        description="The command of each stage (migrate, prepare, replay, catchup, optimize, golive, abort), "
        "run in a Job built from the new version's pod template. Defaults: Sequent's rake tasks.",
    )
    container: str | None = Field(
        default=None,
        max_length=63,
        description="Name of the template's container that runs the stages (its probes and ports are dropped "
        "in the Jobs). Default: the first container.",
    )
    group_size: int = Field(
        default=250_000,
        ge=1,
        description="Events per replay group ({groupSize} in the replay and catchup commands). Unit: events. "
        "Default: 250000, Sequent's own.",
    )
    processes: int = Field(
        default=1,
        ge=1,
        le=256,
        description="Replay processes ({processes} in the replay and catchup commands), 1 to 256. Default: 1.",
    )
    catchup: CatchupSpec = Field(
        default_factory=CatchupSpec, description="When the replay has caught up enough to go live."
    )
    stage_timeout_seconds: int = Field(
        default=86_400,
        ge=10,
        description="Deadline of each stage Job in seconds (activeDeadlineSeconds), at least 10: a replay of a "
        "large event store takes hours, so the default is a day (86400). A stage past it is stopped and the "
        "rollout fails.",
    )
    stage_retries: int = Field(
        default=2,
        ge=0,
        le=20,
        description="Retries of a failed migrate, optimize or golive Job (backoffLimit), the stages that can run "
        "again; 0 to 20, default 2. prepare, replay and catchup are never retried in place (a failure marks the "
        "replay failed): the rollout fails, aborts the replay, and a retry starts from a fresh prepare.",
    )
    checks: list[Check] = Field(
        default_factory=list,
        max_length=20,
        description="Read-only SQL checks run after the replay caught up and before golive (and before waiting "
        "for promotion); one that fails, times out or errors fails the rollout (CheckFailed). At most 20, "
        "names unique. Default: none.",
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
    """Whether golive runs by itself or waits for spec.promote."""

    AUTOMATIC = "Automatic"
    MANUAL = "Manual"


class StrategySpec(Model):
    """How a rollout goes live and what it leaves of older versions."""

    promotion: Promotion = Field(
        default=Promotion.AUTOMATIC,
        description="Automatic runs golive as soon as the replay caught up and the checks passed; Manual waits "
        "before golive (phase Paused, reason AwaitingPromotion) until spec.promote names the target version. "
        "Default: Automatic.",
    )
    scale_down_delay_seconds: int = Field(
        default=30,
        ge=0,
        description="How long the old version keeps its pods after the Service switched to the new one, in "
        "seconds. Default: 30.",
    )
    revision_history_limit: int = Field(
        default=2,
        ge=0,
        le=50,
        description="Old versions' Deployments kept, scaled to zero, for a quick rollback; 0 to 50. Default: 2.",
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
                    "description": "The pods' metadata (a core/v1 ObjectMeta): labels and annotations.",
                    "x-kubernetes-preserve-unknown-fields": True,
                    # Typed so that the CEL rule below can read the labels.
                    "properties": {
                        "labels": {
                            "type": "object",
                            "description": f"The pods' labels, at most 64; not {NAME_LABEL} or {VERSION_LABEL}, "
                            "which the operator sets.",
                            "maxProperties": 64,
                            "additionalProperties": {"type": "string", "maxLength": 63},
                        }
                    },
                },
                "spec": {
                    "type": "object",
                    "description": "The pods' spec (a core/v1 PodSpec).",
                    "x-kubernetes-preserve-unknown-fields": True,
                    "required": ["containers"],
                    "properties": {
                        "containers": {
                            "type": "array",
                            "description": "The application's containers (core/v1 Container), 1 to 20.",
                            "minItems": 1,
                            "maxItems": 20,
                            "items": {
                                "type": "object",
                                "x-kubernetes-preserve-unknown-fields": True,
                                "required": ["name"],
                                "properties": {
                                    "name": {
                                        "type": "string",
                                        "description": "The container's name, unique in the pod.",
                                        "minLength": 1,
                                        "maxLength": 63,
                                    }
                                },
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
    """The application release to run and how to roll it out."""

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
        description="The application release, a label value of at most 40 characters. Changing it (with "
        "template and projectors) starts an upgrade; each version gets its own Deployment.",
    )
    replicas: int = Field(
        default=1,
        ge=0,
        le=1000,
        description="Pods of the serving version's Deployment (and of spec.version's while it rolls out), "
        "0 to 1000. The scale subresource sets it: kubectl scale pjs NAME --replicas=N, or a "
        "HorizontalPodAutoscaler. Default: 1.",
    )
    service: ServiceRef = Field(
        description="The Service users reach: the operator switches its selector to a version's pods once the "
        "database shows that version's projectors active."
    )
    database: DatabaseSpec = Field(
        description="The application's PostgreSQL database: the Secret with its URI and Sequent's schemas."
    )
    projectors: list[ProjectorSpec] = Field(
        min_length=1,
        max_length=500,
        description="Every projector of this release with its version (1 to 500, names unique): what the database "
        "must show active for this version to serve. A new or changed version is replayed.",
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
    replay: ReplaySpec = Field(
        default_factory=ReplaySpec,
        description="How the release's new or changed projectors are replayed: the stage commands, the replay "
        "settings, catch-up, deadlines, retries and the checks before golive.",
    )
    strategy: StrategySpec = Field(
        default_factory=StrategySpec,
        description="Promotion (automatic or manual), the old version's scale-down delay and the Deployments kept.",
    )
    paused: bool = Field(
        default=False,
        description="Hold the rollout before its next step until set back to false. Never holds back the "
        "traffic switch once the database shows the new version active. Default: false.",
    )
    abort: bool = Field(
        default=False,
        description="Abort the rollout of spec.version: the replay is aborted, replaying and activating versions "
        "are cleared and the old version keeps serving (a running golive finishes first). Default: false.",
    )
    promote: str | None = Field(
        default=None,
        max_length=40,
        description="With manual promotion: the version allowed to go live (set it to spec.version). Default: unset.",
    )
    retry: int = Field(
        default=0,
        ge=0,
        description="Bump to retry a Failed or Aborted rollout (kubectl projectorset retry): like any spec edit "
        "with abort false, a new generation starts a new attempt. Default: 0.",
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
    """Where the rollout is (README: "Phases and conditions")."""

    PENDING = "Pending"
    DEPLOYING = "Deploying"
    REPLAYING = "Replaying"
    ACTIVATING = "Activating"
    SWITCHING = "Switching"
    ACTIVE = "Active"
    PAUSED = "Paused"
    FAILED = "Failed"
    ABORTED = "Aborted"


# metav1.Condition's bounds, so that the conditions read like every other object's.
CONDITION_TYPE_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
CONDITION_REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
CONDITION_MESSAGE_LIMIT = 32_768


class Condition(Model):
    """One aspect of the set's state, shaped like metav1.Condition (kubectl wait --for=condition=Ready)."""

    type: str = Field(
        max_length=316,
        pattern=CONDITION_TYPE_PATTERN,
        description="Which aspect: Ready, Progressing, DatabaseReady, ActionsApplied, ReplayAborted, "
        "ProjectorsInSync or Planned. Unique in the list.",
    )
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(
        min_length=1,
        max_length=1024,
        pattern=CONDITION_REASON_PATTERN,
        description="Why, as a fixed CamelCase word scripts and alerts may rely on (README: the reason table).",
    )
    message: str = Field(
        max_length=CONDITION_MESSAGE_LIMIT, description="Why, for people; may be empty and may change wording."
    )
    last_transition_time: Time = Field(description="When status last changed (not reason or message), RFC 3339 in UTC.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="The metadata.generation of the spec the condition was set from."
    )


# status.projectors[].plan of a requiredProjectors entry (the others are planning.Change values).
REQUIRED_PLAN = "Required"


class ProjectorStatus(Model):
    """One projector: the version the spec lists and what projector_states shows."""

    name: str = Field(description="The projector's class name.")
    spec_version: int | None = Field(
        default=None, description="Its version in spec.projectors (or spec.requiredProjectors)."
    )
    active_version: int | None = Field(
        default=None, description="The version projector_states shows active: the one the serving code uses."
    )
    activating_version: int | None = Field(
        default=None, description="The version projector_states shows activating (during golive)."
    )
    replaying_version: int | None = Field(
        default=None, description="The version projector_states shows replaying (from prepare until golive)."
    )
    plan: str | None = Field(
        default=None,
        description="Unchanged, New, Changed or Removed; Required for a requiredProjectors entry (another set's).",
    )


class ReplayStatus(Model):
    """The replay of the rollout in progress, as replay_states and the stage Jobs show it."""

    stage: str | None = Field(
        default=None,
        description="The stage whose Job runs, or ran last: migrate, prepare, replay, catchup, optimize, golive "
        "or abort.",
    )
    state: str | None = Field(default=None, description="replay_states.state as read from the database.")
    replay_id: int | None = Field(default=None, description="The replay's id in replay_states.")
    catchup_round: int = Field(default=0, description="Catch-up Jobs run so far for this replay.")
    lag: int | None = Field(
        default=None,
        description="Events at or after continue_replay_at_xact_id: what catch-up and golive still replay.",
    )
    lag_at_least: bool = Field(
        default=False, description="The lag read stopped at its budget: the lag is at least `lag`."
    )
    job: str | None = Field(default=None, description="Name of the stage Job that runs, if one does.")


class CheckResult(Model):
    """The outcome of one of spec.replay.checks."""

    name: str = Field(description="The check's name in spec.replay.checks.")
    passed: bool = Field(description="Whether the query returned exactly one row whose first column is true.")
    result: str = Field(
        description="What the query returned (true, false, NULL, no row, ...) or the error's class and message."
    )
    checked_at: Time = Field(description="When the query ran, RFC 3339 in UTC.")
    version: str = Field(description="The version rolled out when the check ran.")
    attempt: int = Field(description="The rollout attempt the check ran in; a retry runs the checks again.")
    digest: str = Field(default="", description="Identifies the query that ran.")


class ProjectorSetStatus(Model):
    """What the operator observed and did; written only by the operator."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)

    phase: Phase = Field(
        default=Phase.PENDING,
        description="Where the rollout is: Pending, Deploying, Replaying, Activating, Switching, Active, Paused, "
        "Failed or Aborted.",
    )
    message: str = Field(default="", description="What happens now and why, for people.")
    observed_generation: int | None = Field(
        default=None, description="The metadata.generation of the spec the last pass acted on."
    )
    active_version: str | None = Field(default=None, description="The version the Service points to.")
    target_version: str | None = Field(default=None, description="The version being rolled out.")
    previous_version: str | None = Field(
        default=None, description="The version the Service pointed to before the last switch."
    )
    replicas: int = Field(
        default=0,
        description="Pods of the serving version's Deployment (its status.replicas): what the scale "
        "subresource and a HorizontalPodAutoscaler read.",
    )
    selector: str | None = Field(
        default=None,
        description="Label selector of the serving version's pods, as text (the scale subresource's "
        "labelSelectorPath): what a HorizontalPodAutoscaler measures.",
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="The latest observations of the set's state, one per type (metav1.Condition).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    projectors: list[ProjectorStatus] = Field(
        default_factory=list,
        description="Each projector of spec.projectors, then of spec.requiredProjectors, with what the database "
        "shows and its plan.",
    )
    replay: ReplayStatus | None = Field(
        default=None, description="The replay of the rollout in progress, or of the last one."
    )
    history: list[str] = Field(default_factory=list, description="Earlier versions, newest first.")
    rollout_started_at: Time | None = Field(
        default=None, description="When the rollout of targetVersion (its current attempt) started."
    )
    activated_at: Time | None = Field(default=None, description="When the database showed the target active.")
    switched_at: Time | None = Field(default=None, description="When the Service last switched versions.")
    attempt: int = Field(default=0, description="Rollout attempt for target version; bumped by a retry.")
    checks: list[CheckResult] = Field(
        default_factory=list, description="Results of spec.replay.checks in the latest attempt that ran them."
    )

    # Completed on read: see ``needs_rewrite``.
    _completed: bool = PrivateAttr(default=False)

    @model_validator(mode="wrap")
    @classmethod
    def _complete_older_conditions(
        cls, data: Any, handler: ModelWrapValidatorHandler[Self], info: ValidationInfo
    ) -> Self:
        """Operator versions before metav1-shaped conditions could leave lastTransitionTime out: such a
        condition gets the time it was read (``context={"now": ...}``, else the clock)."""
        conditions = data.get("conditions") if isinstance(data, dict) else None
        if not isinstance(conditions, list):
            return handler(data)
        now = (info.context or {}).get("now") or datetime.now(UTC)

        def timeless(condition: Any) -> bool:
            return isinstance(condition, dict) and not (
                condition.get("lastTransitionTime") or condition.get("last_transition_time")
            )

        completed = [{**c, "lastTransitionTime": now} if timeless(c) else c for c in conditions]
        status = handler({**data, "conditions": completed})
        status._completed = any(timeless(c) for c in conditions)
        return status

    @property
    def needs_rewrite(self) -> bool:
        """Read from a status that lacks what the CRD now requires (an older operator's): to be written
        back even when nothing else changed, so that the stored object validates again."""
        return self._completed
