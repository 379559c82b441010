"""After a failed action the next pass waits a jittered, growing time (issue 18: one back-off with
full jitter for every retry). A fixed 5 s brought a thousand sets back together, every 5 s, after
an API outage."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from projectorset.api import ProjectorSetStatus
from projectorset.api.conditions import ConditionType, Reason, set_condition
from projectorset.controller.reconciler import ACTION_FAILURE_MIN_RETRY_SECONDS, action_retry_delay

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def failing_since(seconds: float) -> ProjectorSetStatus:
    conditions = set_condition(
        [],
        ConditionType.ACTIONS_APPLIED,
        False,
        Reason.KUBERNETES_CONFLICT,
        "the API server did not answer",
        1,
        NOW - timedelta(seconds=seconds),
    )
    return ProjectorSetStatus(conditions=conditions)


def test_a_thousand_sets_failing_together_come_back_spread_over_the_window() -> None:
    source = random.Random(7)
    waits = [action_retry_delay(failing_since(0), NOW, source) for _ in range(1000)]
    assert all(ACTION_FAILURE_MIN_RETRY_SECONDS <= wait <= 5 + ACTION_FAILURE_MIN_RETRY_SECONDS for wait in waits)
    # Spread, not in lockstep: no half-second holds more than a fifth of them.
    slots = [sum(1 for wait in waits if low <= wait < low + 0.5) for low in (x / 2 for x in range(1, 11))]
    assert max(slots) < 200, slots


def test_the_ceiling_grows_the_longer_actions_keep_failing_up_to_a_minute() -> None:
    source = random.Random(7)

    def longest(seconds: float) -> float:
        return max(action_retry_delay(failing_since(seconds), NOW, source) for _ in range(500))

    most = 60 + ACTION_FAILURE_MIN_RETRY_SECONDS
    assert longest(0) <= 5 + ACTION_FAILURE_MIN_RETRY_SECONDS < longest(60) <= most
    assert 40 < longest(3600) <= most
