"""The status conditions the operator writes: their types and reasons, each documented once here.

The README's "Phases and conditions" tables are printed from this module
(``python -m projectorset.api.conditions``) and a test fails when they differ, so the
documentation cannot drift from the code. Reasons are fixed CamelCase words: alerts,
scripts and ``kubectl wait`` may rely on them; messages are for people and may change.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum
from typing import Literal

from projectorset.api.models import CONDITION_MESSAGE_LIMIT, Condition, ProjectorSetStatus


class ConditionType(StrEnum):
    meaning: str

    def __new__(cls, value: str, meaning: str) -> ConditionType:
        member = str.__new__(cls, value)
        member._value_ = value
        member.meaning = meaning
        return member

    READY = "Ready", "True when the Service reaches `spec.version`."
    PROGRESSING = "Progressing", "True while a rollout moves; its reason is the current step, the failure or the wait."
    DATABASE_READY = "DatabaseReady", "Whether `projector_states` and `replay_states` could be read."
    ACTIONS_APPLIED = "ActionsApplied", "Whether every action of the last pass succeeded (a failed one is retried)."
    REPLAY_ABORTED = "ReplayAborted", "After a failure or an abort: whether the replay is aborted and versions cleared."
    PROJECTORS_IN_SYNC = "ProjectorsInSync", "Whether the database has every projector active at its release version."
    PLANNED = "Planned", "Notes about the plan, such as a rollback by replay."


class Kind(StrEnum):
    """Where a reason appears and what it asks of the reader."""

    STEP = "step"  # Progressing True: the rollout moves on by itself
    WAITING = "waiting"  # held until someone fixes something; the phase stays as it was
    FAILURE = "failure"  # the rollout ended Failed or Aborted; the old version serves
    WRITE = "write"  # ActionsApplied False: an action failed and the next pass retries it
    STATUS = "status"  # the reason of another condition
    EVENT = "event"  # only an Event on the ProjectorSet


class Reason(StrEnum):
    kind: Kind
    meaning: str

    def __new__(cls, value: str, kind: Kind, meaning: str) -> Reason:
        member = str.__new__(cls, value)
        member._value_ = value
        member.kind = kind
        member.meaning = meaning
        return member

    # -- steps of a rollout --
    MIGRATING = (
        "Migrating",
        Kind.STEP,
        "The migrate stage runs the release's database migrations, first in every rollout.",
    )
    DEPLOYING = "Deploying", Kind.STEP, "The new version's Deployment is not available yet."
    PREPARING = "Preparing", Kind.STEP, "The prepare stage runs (replay schema, projectors registered replaying)."
    REPLAYING = "Replaying", Kind.STEP, "The initial replay stage runs."
    OPTIMIZING = "Optimizing", Kind.STEP, "The optimize stage runs (indexes, vacuum, analyze)."
    CATCHING_UP = "CatchingUp", Kind.STEP, "A catch-up round runs because the lag exceeds `maxLag`."
    RUNNING_CHECKS = (
        "RunningChecks",
        Kind.STEP,
        "The replay caught up: `spec.replay.checks` run (read-only) before golive or the promotion wait.",
    )
    GOING_LIVE = "GoingLive", Kind.STEP, "golive runs (one transaction); traffic moves when it commits."
    ACTIVATING = "Activating", Kind.STEP, "Nothing to replay: the operator activates the release itself."
    WAITING_FOR_AVAILABLE_PODS = (
        "WaitingForAvailablePods",
        Kind.STEP,
        "Active in the database; the Service moves once the new pods are available.",
    )
    ABORT_WAITING_FOR_GOLIVE = (
        "AbortWaitingForGolive",
        Kind.STEP,
        "`spec.abort` is set while golive runs; golive finishes first (it either lands or leaves nothing).",
    )
    REPLAY_QUEUED = (
        "ReplayQueued",
        Kind.STEP,
        "Another ProjectorSet's replay runs on the same event store (Sequent runs one at a time): this "
        "rollout starts its own when that one ends.",
    )
    WAITING_FOR_PROJECTORS = (
        "WaitingForProjectors",
        Kind.STEP,
        "This set's projectors are live; the switch waits until the database shows each of "
        "`requiredProjectors` active at its version (another set owns them: named in the message). The "
        "old version keeps serving meanwhile.",
    )
    ROLLOUT_COMPLETE = "RolloutComplete", Kind.STEP, "The Service reaches `spec.version`."
    SUPERSEDED = (
        "Superseded",
        Kind.STEP,
        "`spec.version` moved away from a rollout in progress: its stage Jobs are stopped and its replay "
        "aborted before the next rollout starts.",
    )
    FOLLOWING_DATABASE = (
        "FollowingDatabase",
        Kind.STEP,
        "The database made an earlier target's release active (its golive committed after `spec.version` "
        "changed): the Service moves to those pods first, then `spec.version` rolls out.",
    )
    # -- waiting for someone --
    SERVICE_NOT_FOUND = "ServiceNotFound", Kind.WAITING, "`spec.service.name` does not exist."
    PROJECTORS_OWNED_BY_OTHER = (
        "ProjectorsOwnedByOther",
        Kind.WAITING,
        "Another ProjectorSet, created earlier, lists some of this set's projectors on the same event store "
        "(named in the message): this set does nothing until one of the two lists change.",
    )
    SERVICE_OWNED_BY_OTHER = (
        "ServiceOwnedByOther",
        Kind.WAITING,
        "`spec.service.name` belongs to another ProjectorSet (named in the message); this set never switches it.",
    )
    SERVICE_NOT_CLAIMED = (
        "ServiceNotClaimed",
        Kind.WAITING,
        "The Service selects pods the operator did not create and this set served before: "
        "it is taken over only on a first install.",
    )
    SECRET_NOT_FOUND = "SecretNotFound", Kind.WAITING, "The database Secret or its key is missing or unreadable."
    DATABASE_UNREACHABLE = "DatabaseUnreachable", Kind.WAITING, "No connection to the database."
    DATABASE_CONNECTIONS_BUSY = (
        "DatabaseConnectionsBusy",
        Kind.WAITING,
        "Every connection the operator allows itself to this database stayed in use (load, not an outage).",
    )
    DATABASE_AUTHENTICATION_FAILED = (
        "DatabaseAuthenticationFailed",
        Kind.WAITING,
        "The database refused the Secret's credentials.",
    )
    INVALID_DATABASE_URI = "InvalidDatabaseURI", Kind.WAITING, "The Secret's value is not a libpq URI."
    SEQUENT_TABLES_MISSING = (
        "SequentTablesMissing",
        Kind.WAITING,
        "`projector_states` or `replay_states` is missing in `eventStoreSchema`.",
    )
    DATABASE_READ_TIMED_OUT = (
        "DatabaseReadTimedOut",
        Kind.WAITING,
        "A read of the database hit its statement timeout; nothing was changed.",
    )
    DATABASE_PERMISSION_DENIED = (
        "DatabasePermissionDenied",
        Kind.WAITING,
        "The Secret's database role lacks a privilege on Sequent's tables; the message says which grants.",
    )
    DATABASE_ERROR = "DatabaseError", Kind.WAITING, "Another database problem; the message says which."
    REPLAY_IN_PROGRESS_FOR_OTHER_TARGET = (
        "ReplayInProgressForOtherTarget",
        Kind.WAITING,
        "A replay in progress (even a `failed` one) or a replaying version is not this release's.",
    )
    ACTIVATION_IN_PROGRESS = (
        "ActivationInProgress",
        Kind.WAITING,
        "A projector is activating a version this release does not have.",
    )
    UNKNOWN_REPLAY_STATE = (
        "UnknownReplayState",
        Kind.WAITING,
        "`replay_states.state` holds a value Sequent never writes.",
    )
    PROJECTOR_STATES_EMPTY = (
        "ProjectorStatesEmpty",
        Kind.WAITING,
        "A version serves but `projector_states` is empty: activate it first.",
    )
    PROJECTORS_OUT_OF_SYNC = (
        "ProjectorsOutOfSync",
        Kind.WAITING,
        "`spec.version` serves but the database has other projector versions active.",
    )
    AWAITING_PROMOTION = "AwaitingPromotion", Kind.WAITING, "Manual promotion: golive waits for `spec.promote`."
    PAUSED_BY_USER = "PausedByUser", Kind.WAITING, "`spec.paused` holds the next step."
    INVALID_SPEC = "InvalidSpec", Kind.WAITING, "The spec does not validate (a CRD installed without its schema)."
    # -- a rollout that ended --
    STAGE_FAILED = "StageFailed", Kind.FAILURE, "A stage Job failed past its retries or its deadline."
    REPLAY_FAILED = "ReplayFailed", Kind.FAILURE, "`replay_states` says `failed`: a stage raised inside Sequent."
    VERIFICATION_FAILED = (
        "VerificationFailed",
        Kind.FAILURE,
        "A stage Job succeeded without leaving `replay_states` in its stage's state.",
    )
    STAGE_INTERRUPTED = (
        "StageInterrupted",
        Kind.FAILURE,
        "The database says a stage works but no Job of this rollout runs it.",
    )
    CATCHUP_DID_NOT_CONVERGE = (
        "CatchupDidNotConverge",
        Kind.FAILURE,
        "The lag still exceeds `maxLag` after `maxRounds` catch-up rounds.",
    )
    CHECK_FAILED = (
        "CheckFailed",
        Kind.FAILURE,
        "A check of `spec.replay.checks` did not return true, timed out, or erred; the message names it.",
    )
    DEPLOYMENT_FAILED = "DeploymentFailed", Kind.FAILURE, "The new Deployment exceeded its progress deadline."
    ABORTED = "Aborted", Kind.FAILURE, "`spec.abort` stopped the rollout; as ReplayAborted's reason: versions cleared."
    FAILED = "Failed", Kind.FAILURE, "A failed rollout whose original reason was not kept in the status."
    # -- a write that failed (retried) --
    PROJECTOR_STATES_LOCKED = (
        "ProjectorStatesLocked",
        Kind.WRITE,
        "`projector_states` stayed locked by others past the write timeout.",
    )
    ILLEGAL_PROJECTOR_STATE = (
        "IllegalProjectorState",
        Kind.WRITE,
        "A write Sequent's protocol forbids was refused before it was made.",
    )
    KUBERNETES_FORBIDDEN = "KubernetesForbidden", Kind.WRITE, "The API server refused a request (RBAC)."
    KUBERNETES_NOT_FOUND = "KubernetesNotFound", Kind.WRITE, "An object the action needs is gone."
    KUBERNETES_CONFLICT = "KubernetesConflict", Kind.WRITE, "The API server reported a conflict."
    KUBERNETES_INVALID = "KubernetesInvalid", Kind.WRITE, "The API server rejected an object as invalid."
    KUBERNETES_API_ERROR = "KubernetesAPIError", Kind.WRITE, "Another API server error."
    # -- other conditions --
    ACTIVE = "Active", Kind.STATUS, "Ready: the version serves."
    SERVICE_PATCH_FAILED = (
        "ServicePatchFailed",
        Kind.STATUS,
        "Ready: the Service patch failed or timed out; which pods it selects is read again at the next pass.",
    )
    CONNECTED = "Connected", Kind.STATUS, "DatabaseReady: both tables are readable."
    APPLIED = "Applied", Kind.STATUS, "ActionsApplied: every action of the last pass succeeded."
    IN_SYNC = "InSync", Kind.STATUS, "ProjectorsInSync: every projector is active at its release version."
    ROLLBACK_BY_REPLAY = "RollbackByReplay", Kind.STATUS, "Planned: a projector goes back to a lower version."
    ABORTING = (
        "Aborting",
        Kind.STATUS,
        "ReplayAborted: the abort waits for the failed stage's pods to stop, or its Job runs.",
    )
    ABORT_FAILED = (
        "AbortFailed",
        Kind.STATUS,
        "ReplayAborted: an abort Job failed; it runs again after a back-off (the message says when).",
    )
    # -- Events only --
    ROLLOUT_STARTED = "RolloutStarted", Kind.EVENT, "A new `spec.version` is rolled out."
    ROLLOUT_RETRIED = "RolloutRetried", Kind.EVENT, "A spec edit retries a failed or aborted rollout (a new attempt)."
    PROJECTORS_DEACTIVATED = (
        "ProjectorsDeactivated",
        Kind.EVENT,
        "Right after golive committed, the projectors the release removed were deactivated.",
    )
    CHECKS_PASSED = "ChecksPassed", Kind.EVENT, "Every check of `spec.replay.checks` returned true."
    ACTIVATED = "Activated", Kind.EVENT, "The database first showed every projector of the release active."
    SERVICE_SWITCHED = "ServiceSwitched", Kind.EVENT, "The Service now selects the new version's pods."
    SCALED_DOWN = "ScaledDown", Kind.EVENT, "An old version was scaled to zero after `scaleDownDelaySeconds`."
    REVISION_PRUNED = "RevisionPruned", Kind.EVENT, "An old version's Deployment was deleted (`revisionHistoryLimit`)."


def reason_named(value: str | None) -> Reason | None:
    """The Reason spelled ``value`` (for instance one read back from a status), if there is one."""
    return next((reason for reason in Reason if reason.value == value), None)


class ReportedError(Exception):
    """A failure the operator reports in a condition (and retries) rather than crashing on."""

    reason: Reason = Reason.DATABASE_ERROR

    def __init__(self, message: str, reason: Reason | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason


# ---- building and reading conditions ------------------------------------------------------------


def set_condition(
    conditions: Iterable[Condition],
    type_: ConditionType,
    status: bool | None,
    reason: Reason,
    message: str,
    generation: int | None,
    now: datetime,
) -> list[Condition]:
    """The conditions with ``type_`` set, sorted by type; lastTransitionTime moves only when the
    condition's status changes (not its reason or message)."""
    value: Literal["True", "False", "Unknown"] = "Unknown" if status is None else ("True" if status else "False")
    conditions = list(conditions)
    others = [c for c in conditions if c.type != type_]
    old = find_condition(conditions, type_)
    if len(message) > CONDITION_MESSAGE_LIMIT:
        message = message[: CONDITION_MESSAGE_LIMIT - 3] + "..."
    condition = Condition(
        type=str(type_),
        status=value,
        reason=str(reason),
        message=message,
        last_transition_time=old.last_transition_time if old is not None and old.status == value else now,
        observed_generation=generation,
    )
    return sorted([*others, condition], key=lambda c: c.type)


def find_condition(conditions: Iterable[Condition], type_: ConditionType) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def progress_reason(status: ProjectorSetStatus) -> str | None:
    """The reason of the Progressing condition: the step, the failure or the wait."""
    found = find_condition(status.conditions, ConditionType.PROGRESSING)
    return found.reason if found is not None else None


def progress_message(status: ProjectorSetStatus) -> str:
    found = find_condition(status.conditions, ConditionType.PROGRESSING)
    return found.message if found is not None else status.message


# ---- the README's tables ------------------------------------------------------------------------


def markdown() -> str:
    """The condition and reason tables of the README's "Phases and conditions" section."""
    lines = ["| condition | meaning |", "|---|---|"]
    lines += [f"| `{t.value}` | {t.meaning} |" for t in ConditionType]
    lines += ["", "| reason | kind | meaning |", "|---|---|---|"]
    lines += [f"| `{r.value}` | {r.kind.value} | {r.meaning} |" for r in Reason]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
