"""Sequent's replay protocol as plain data: the states of ``replay_states``, what counts as in
progress, and the stages that move a replay from one state to the next.

No driver here: ``database.py`` reads and writes these values with psycopg, the rollout
decides with them. Every fact comes from Sequent master's replayer
(lib/sequent/migrations/projectors_replayer.rb) and its schema (db/structure.sql); see
docs/sequent-protocol.md for the table of what the operator relies on and where it is proven.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class ReplayStateName(StrEnum):
    """``replay_states.state``: the values Sequent's check constraint allows."""

    CREATED = "created"  # prepare made the row and is copying the view tables' definitions
    PREPARED = "prepared"  # the replay schema is ready and the projectors are registered replaying
    REPLAYING = "replaying"  # the initial replay runs
    CATCHING_UP = "catching_up"  # an incremental replay runs; it returns to the state it started from
    REPLAYED = "replayed"  # the initial replay finished
    OPTIMIZED = "optimized"  # indexes rebuilt, tables vacuumed and analyzed: ready for golive
    LIVE = "live"  # golive moved the replayed tables into the view schema
    FAILED = "failed"  # a stage raised; the replay still holds the unique index until abort runs
    ABORTED = "aborted"  # abort cleared replaying versions and dropped the replay schema


# Sequent's unique index admits one row whose state is neither of these: the replay in progress.
FINISHED_STATES = frozenset({ReplayStateName.LIVE, ReplayStateName.ABORTED})
IN_PROGRESS_STATES = frozenset(state for state in ReplayStateName if state not in FINISHED_STATES)
_KNOWN_STATES = frozenset(state.value for state in ReplayStateName)


class Stage(StrEnum):
    """A step of a background replay, run by the operator as a Job (Sequent's rake task)."""

    # Before the replay: the release's database migrations (view-schema tables first, as Sequent's
    # documented workflow says: prepare copies them with pg_dump --strict-names). It does not touch
    # replay_states, so it has no row in STAGES.
    MIGRATE = "migrate"
    PREPARE = "prepare"
    REPLAY = "replay"
    OPTIMIZE = "optimize"
    CATCHUP = "catchup"
    GOLIVE = "golive"
    ABORT = "abort"


@dataclass(frozen=True)
class StageStep:
    """What one stage does to ``replay_states``."""

    stage: Stage
    # The state the replay shows while this stage's Job works; None when the stage has no state of
    # its own (it works inside one transaction, or leaves the state as it was until it is done).
    at_work: ReplayStateName | None
    # The state a successful Job of this stage leaves behind.
    after: ReplayStateName
    # The stage that normally follows; None at the end of the replay.
    next: Stage | None
    # Whether the same stage may simply run again after a failure: true only where a failure
    # leaves the state as it was (optimize, golive), not where Sequent marks the replay failed.
    retryable: bool


STAGES: Mapping[Stage, StageStep] = {
    step.stage: step
    for step in (
        StageStep(Stage.PREPARE, ReplayStateName.CREATED, ReplayStateName.PREPARED, Stage.REPLAY, retryable=False),
        StageStep(Stage.REPLAY, ReplayStateName.REPLAYING, ReplayStateName.REPLAYED, Stage.OPTIMIZE, retryable=False),
        StageStep(Stage.OPTIMIZE, None, ReplayStateName.OPTIMIZED, Stage.CATCHUP, retryable=True),
        # Sequent's catch-up returns to the state it started from; the operator runs it after optimize.
        StageStep(Stage.CATCHUP, ReplayStateName.CATCHING_UP, ReplayStateName.OPTIMIZED, Stage.GOLIVE, retryable=False),
        StageStep(Stage.GOLIVE, None, ReplayStateName.LIVE, None, retryable=True),
        # Abort works from any state in progress, in one transaction.
        StageStep(Stage.ABORT, None, ReplayStateName.ABORTED, None, retryable=True),
    )
}
# The stages of a replay in the order they run, abort aside.
PIPELINE = (Stage.PREPARE, Stage.REPLAY, Stage.OPTIMIZE, Stage.CATCHUP, Stage.GOLIVE)


def stage_at_work(state: ReplayStateName | str) -> Stage | None:
    """The stage whose Job holds the replay in ``state`` while it works, if any."""
    return next((step.stage for step in STAGES.values() if step.at_work == state), None)


def stage_following(state: ReplayStateName | str) -> Stage | None:
    """The stage that runs next on a replay a stage left in ``state`` (the first in the pipeline
    that leaves it so); None when no stage leads there."""
    return next((STAGES[stage].next for stage in PIPELINE if STAGES[stage].after == state), None)


def is_in_progress(state: str) -> bool:
    """In progress by Sequent's unique index: anything but live and aborted (``failed`` included)."""
    return state not in FINISHED_STATES


# ---- what the database holds ----------------------------------------------------------------------


@dataclass(frozen=True)
class ProjectorState:
    """One row of ``projector_states``."""

    name: str
    active_version: int | None = None
    activating_version: int | None = None
    replaying_version: int | None = None


@dataclass(frozen=True)
class ReplayState:
    """One row of ``replay_states``; ``state`` is kept as read, even a value this code does not know."""

    id: int
    state: str
    projectors: tuple[str, ...]
    continue_replay_at_xact_id: int | None

    @property
    def in_progress(self) -> bool:
        return is_in_progress(self.state)

    @property
    def known(self) -> bool:
        return self.state in _KNOWN_STATES


@dataclass(frozen=True)
class DatabaseState:
    projectors: Mapping[str, ProjectorState] = field(default_factory=dict)
    # The replay in progress (at most one, by Sequent's unique index), else the latest.
    replay: ReplayState | None = None
    # Events with xact_id >= replay.continue_replay_at_xact_id; None when no replay is in progress.
    replay_lag: int | None = None
    # The lag read stopped at its row budget with at least half of the rows behind: the lag is at
    # least replay_lag (only past 250,000 events, far above any sensible maxLag).
    replay_lag_at_least: bool = False

    @property
    def empty(self) -> bool:
        return not self.projectors

    @property
    def replay_in_progress(self) -> ReplayState | None:
        return self.replay if self.replay is not None and self.replay.in_progress else None
