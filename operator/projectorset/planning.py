"""Planning an upgrade from the database: which projectors need a replay, which are gone.

Pure: from the release's projector versions and the observed ``projector_states`` and
``replay_states`` to a plan, with every state the operator must not silently ignore
reported as a blocking issue or a notice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from projectorset.database import DatabaseState, ProjectorState


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

    reason: str
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


def plan_upgrade(release: Mapping[str, int], database: DatabaseState) -> Plan:
    """Compare the release's projector versions with what the database says."""
    first_install = all(
        state.active_version is None and state.activating_version is None and state.replaying_version is None
        for state in database.projectors.values()
    ) and (database.replay is None or not database.replay.in_progress)
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
                    "ActivationInProgress",
                    f"{name}: version {state.activating_version} is activating, the release has {version}",
                )
            )
        if state.replaying_version is not None and state.replaying_version != version:
            issues.append(
                PlanIssue(
                    "ReplayInProgressForOtherTarget",
                    f"{name}: version {state.replaying_version} is replaying, the release has {version}",
                )
            )

    for name, state in sorted(database.projectors.items()):
        if name in release:
            continue
        if state.active_version is not None:
            plans.append(ProjectorPlan(name, Change.REMOVED, None, state))
        if state.activating_version is not None:
            issues.append(
                PlanIssue(
                    "ActivationInProgress",
                    f"{name}: version {state.activating_version} is activating but the release has no {name}",
                )
            )
        if state.replaying_version is not None:
            issues.append(
                PlanIssue(
                    "ReplayInProgressForOtherTarget",
                    f"{name}: version {state.replaying_version} is replaying but the release has no {name}",
                )
            )

    replay = database.replay
    if replay is not None and replay.in_progress:
        wanted = {p.name for p in plans if p.change in (Change.NEW, Change.CHANGED)}
        if set(replay.projectors) != wanted:
            issues.append(
                PlanIssue(
                    "ReplayInProgressForOtherTarget",
                    f"replay {replay.id} ({replay.state}) is building {', '.join(replay.projectors) or 'nothing'}, "
                    f"the release needs {', '.join(sorted(wanted)) or 'no replay'}",
                )
            )
    if replay is not None and replay.state not in _KNOWN_REPLAY_STATES:
        issues.append(PlanIssue("UnknownReplayState", f"replay {replay.id} is in unknown state {replay.state!r}"))

    return Plan(tuple(plans), first_install, tuple(issues), tuple(notices))


_KNOWN_REPLAY_STATES = frozenset(
    {"created", "prepared", "replaying", "catching_up", "replayed", "optimized", "live", "failed", "aborted"}
)
