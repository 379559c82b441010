"""Sequent's replay protocol as data (sequent.py), checked against a real PostgreSQL holding
Sequent's tables where the database can say it."""

from __future__ import annotations

import psycopg
import pytest

from projectorset.adapters.database import SequentDatabase
from projectorset.domain.sequent import (
    IN_PROGRESS_STATES,
    STAGES,
    ReplayStateName,
    Stage,
    stage_at_work,
    stage_following,
)


@pytest.mark.parametrize("state", list(ReplayStateName))
def test_in_progress_is_what_the_unique_index_admits_once(state: ReplayStateName, database_url: str) -> None:
    """Sequent's unique index allows one replay that is neither live nor aborted: a second one
    fails exactly when the first is in progress, ``failed`` included."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO sequent_schema.replay_states (state, projectors) VALUES (%s, '{A}')", (state.value,))
        try:
            conn.execute("INSERT INTO sequent_schema.replay_states (state, projectors) VALUES ('created', '{B}')")
            second_admitted = True
        except psycopg.errors.UniqueViolation:
            second_admitted = False
    assert (state in IN_PROGRESS_STATES) is not second_admitted
    assert ReplayStateName.FAILED in IN_PROGRESS_STATES


def test_a_failed_replay_is_read_as_the_one_in_progress(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO sequent_schema.replay_states (state, projectors) VALUES "
            "('aborted', '{A}'), ('failed', '{B}'), ('live', '{C}')"
        )
    db = SequentDatabase(database_url)
    try:
        replay = db.read_state().replay
    finally:
        db.close()
    assert replay is not None and (replay.state, replay.projectors, replay.in_progress) == ("failed", ("B",), True)


def test_stages_chain_from_prepare_to_golive() -> None:
    chain = [Stage.PREPARE]
    while (following := STAGES[chain[-1]].next) is not None:
        chain.append(following)
    assert chain == [Stage.PREPARE, Stage.REPLAY, Stage.OPTIMIZE, Stage.CATCHUP, Stage.GOLIVE]
    assert STAGES[Stage.GOLIVE].after is ReplayStateName.LIVE
    assert STAGES[Stage.ABORT].after is ReplayStateName.ABORTED


def test_only_stages_that_leave_the_state_as_it_was_can_be_retried_in_place() -> None:
    retryable = {stage for stage, step in STAGES.items() if step.retryable and stage is not Stage.ABORT}
    assert retryable == {Stage.OPTIMIZE, Stage.GOLIVE}


def test_the_next_stage_and_the_stage_at_work_follow_from_the_state() -> None:
    assert stage_at_work("created") is Stage.PREPARE
    assert stage_at_work("replaying") is Stage.REPLAY
    assert stage_at_work("catching_up") is Stage.CATCHUP
    assert stage_at_work("failed") is None
    assert stage_following("prepared") is Stage.REPLAY
    assert stage_following("replayed") is Stage.OPTIMIZE
    assert stage_following("failed") is None
