"""Planning an upgrade from the database: which projectors need a replay, which are gone.

Pure: from the release's projector versions and the observed ``projector_states`` and
``replay_states`` to a plan, with every state the operator must not silently ignore
reported as a blocking issue or a notice.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from projectorset.api.conditions import Reason
from projectorset.domain.sequent import DatabaseState, ProjectorState, ReplayStateName


class Change(StrEnum):
    UNCHANGED = "Unchanged"  # active at the release's version
    NEW = "New"  # no active version yet: needs a replay
    CHANGED = "Changed"  # another version is active: needs a replay (also a rollback to a lower one)
    REMOVED = "Removed"  # active, but not in the release: deactivated at activation


@dataclass(frozen=True)
class ProjectorPlan:
    name: str
    change: Change
    spec_version: int | None
    state: ProjectorState


@dataclass(frozen=True)
class PlanIssue:
    """A database state that stops the rollout until someone resolves it."""

    reason: Reason
    message: str


@dataclass(frozen=True)
class Plan:
    projectors: tuple[ProjectorPlan, ...]
    # Nothing active or in flight at all: adopt the release as it is (no replay).
    first_install: bool
    issues: tuple[PlanIssue, ...] = ()
    notices: tuple[str, ...] = field(default=())

    @property
    def to_replay(self) -> dict[str, int]:
        return {
            p.name: p.spec_version
            for p in self.projectors
            if p.change in (Change.NEW, Change.CHANGED) and p.spec_version is not None
        }

    @property
    def to_deactivate(self) -> list[str]:
        return [p.name for p in self.projectors if p.change is Change.REMOVED]

    @property
    def needs_replay(self) -> bool:
        return not self.first_install and bool(self.to_replay)

    @property
    def blocked(self) -> bool:
        return bool(self.issues)


def plan_upgrade(
    release: Mapping[str, int],
    database: DatabaseState,
    owned: Collection[str] | None = None,
    required: Collection[str] = (),
) -> Plan:
    """Compare the release's projector versions with what the database says.

    ``owned``: the projectors this ProjectorSet listed in the releases it deployed before; only
    those can be Removed. Others in the table belong to other applications on the same event
    store and are none of this plan's business. None: unknown (every one not in the release).
    ``required``: another set's projectors this release's code needs (``requiredProjectors``):
    never Removed, never this plan's to replay, whatever ``owned`` says.
    """
    first_install = (
        all(
            state.active_version is None and state.activating_version is None and state.replaying_version is None
            for state in database.projectors.values()
        )
        and database.replay_in_progress is None
    )
    plans: list[ProjectorPlan] = []
    issues: list[PlanIssue] = []
    notices: list[str] = []

    for name, version in sorted(release.items()):
        state = database.projectors.get(name, ProjectorState(name))
        if state.active_version == version:
            change = Change.UNCHANGED
        elif state.active_version is None:
            change = Change.NEW
        else:
            change = Change.CHANGED
            if state.active_version > version:
                notices.append(
                    f"{name}: version {state.active_version} is active and the release has {version}; "
                    "rolling back by replay"
                )
        plans.append(ProjectorPlan(name, change, version, state))
        if state.activating_version is not None and state.activating_version != version:
            issues.append(
                PlanIssue(
                    Reason.ACTIVATION_IN_PROGRESS,
                    f"{name}: version {state.activating_version} is activating, the release has {version}",
                )
            )
        if state.replaying_version is not None and state.replaying_version != version:
            issues.append(
                PlanIssue(
                    Reason.REPLAY_IN_PROGRESS_FOR_OTHER_TARGET,
                    f"{name}: version {state.replaying_version} is replaying, the release has {version}",
                )
            )

    for name, state in sorted(database.projectors.items()):
        if name in release or name in required or (owned is not None and name not in owned):
            continue
        if state.active_version is not None:
            plans.append(ProjectorPlan(name, Change.REMOVED, None, state))
        if state.activating_version is not None:
            issues.append(
                PlanIssue(
                    Reason.ACTIVATION_IN_PROGRESS,
                    f"{name}: version {state.activating_version} is activating but the release has no {name}",
                )
            )
        if state.replaying_version is not None:
            issues.append(
                PlanIssue(
                    Reason.REPLAY_IN_PROGRESS_FOR_OTHER_TARGET,
                    f"{name}: version {state.replaying_version} is replaying but the release has no {name}",
                )
            )

    replay = database.replay_in_progress
    if replay is not None:
        wanted = {p.name for p in plans if p.change in (Change.NEW, Change.CHANGED)}
        if set(replay.projectors) != wanted:
            building = ", ".join(replay.projectors) or "nothing"
            needs = f"the release needs {', '.join(sorted(wanted)) or 'no replay'}"
            if replay.state == ReplayStateName.FAILED:
                message = (
                    f"replay {replay.id} failed building {building} and stays in progress until it is aborted "
                    f"(sequent:projectors:replay:abort); {needs}"
                )
            else:
                message = f"replay {replay.id} ({replay.state}) is building {building}, {needs}"
            issues.append(PlanIssue(Reason.REPLAY_IN_PROGRESS_FOR_OTHER_TARGET, message))
    if database.replay is not None and not database.replay.known:
        issues.append(
            PlanIssue(
                Reason.UNKNOWN_REPLAY_STATE,
                f"replay {database.replay.id} is in unknown state {database.replay.state!r}",
            )
        )

    return Plan(tuple(plans), first_install, tuple(issues), tuple(notices))
