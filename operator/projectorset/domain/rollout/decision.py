"""The pass and its Decision: the scratch state one ``decide`` call builds its answer in."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

from projectorset.api import Condition, Phase, ProjectorSetSpec, ProjectorSetStatus, utc_seconds
from projectorset.api.conditions import ConditionType, Reason, progress_reason, reason_named, set_condition
from projectorset.domain.observation import (
    Action,
    Activate,
    ClusterView,
    DatabaseView,
    Deactivate,
    EnsureDeployment,
    Event,
)
from projectorset.domain.resources import stale_template
from projectorset.domain.rollout.queries import owned_projectors

# How often the database is read while a rollout runs, and while it waits for a human or an outage.
ROLLOUT_POLL_SECONDS = 2.0
BLOCKED_POLL_SECONDS = 10.0
# While only Kubernetes objects are awaited (pods becoming ready, a migrate Job), their watch
# events wake the set; this poll is the safety net. A 2 s poll would make a thousand sets starting
# at once read the cluster hundreds of times a second for nothing.
WATCHED_POLL_SECONDS = 30.0
# No pass asks to sleep longer than this (a scaleDownDelaySeconds of years must not overflow a timer).
LONGEST_POLL_SECONDS = 300.0
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
class Pass:
    """The mutable scratch state of one ``decide`` call: what it read, and what it will answer."""

    spec: ProjectorSetSpec
    generation: int
    # The status as this pass read it (what the last pass wrote): never changed.
    read_status: ProjectorSetStatus
    cluster: ClusterView
    database: DatabaseView
    now: datetime
    # The status this pass will write, carried forward from ``read_status`` and changed with
    # ``remember``; ``finish`` sets its per-pass fields.
    next_status: ProjectorSetStatus = field(init=False)
    conditions: list[Condition] = field(init=False)
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    activated: bool = False

    @cached_property
    def owned(self) -> set[str] | None:
        """The projectors of every release this set deployed (``owned_projectors``), taken once a pass."""
        return owned_projectors(self.cluster)

    def __post_init__(self) -> None:
        self.next_status = self.read_status
        self.conditions = list(self.read_status.conditions)

    # -- helpers used by the steps --

    def remember(self, **changes: Any) -> None:
        """Change status fields carried forward to the next pass."""
        unknown = changes.keys() - ProjectorSetStatus.model_fields.keys() | (changes.keys() & _PER_PASS_FIELDS)
        assert not unknown, f"not a carried status field: {sorted(unknown)}"
        self.next_status = self.next_status.model_copy(update=changes)

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
        changed = phase != self.read_status.phase or reason != progress_reason(self.read_status)
        if changed:
            self.event(reason, message + note, warning=warning)
        progressing = phase in IN_FLIGHT_PHASES and phase is not Phase.PAUSED
        self.condition(ConditionType.PROGRESSING, progressing, reason, message)
        ready = phase is Phase.ACTIVE and self.next_status.active_version == self.spec.version
        self.condition(
            ConditionType.READY,
            ready,
            Reason.ACTIVE if ready else reason,
            f"version {self.spec.version} serves" if ready else message,
        )
        written = self.next_status.model_copy(
            update={
                "phase": phase,
                "message": message + note,
                "observed_generation": self.generation,
                "conditions": self.conditions,
            }
        )
        # Waiting for another set's projectors can take that set's whole replay: polled, not watched.
        await_activation = phase is Phase.ACTIVATING and reason is not Reason.WAITING_FOR_PROJECTORS
        failure = reason if phase is Phase.FAILED and changed else None
        # Projectors this set made live (or stopped waiting for) may let another set switch.
        changed_store = any(isinstance(action, (Activate, Deactivate)) for action in self.actions)
        started_waiting = reason is Reason.WAITING_FOR_PROJECTORS and changed
        return Decision(
            actions=tuple(self.actions),
            status=written,
            events=tuple(self.events),
            requeue_after=self.requeue_after,
            await_activation=await_activation,
            activated=self.activated,
            failure=failure,
            store_changed=self.activated or changed_store or started_waiting,
        )


def ended_reason(status: ProjectorSetStatus) -> Reason:
    """The reason a finished rollout ended with, as its status recorded it."""
    return reason_named(progress_reason(status)) or Reason.FAILED
