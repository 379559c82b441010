"""Which watch events wake a ProjectorSet: only those that change what its rollout sees."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from projectorset.domain.resources import job_view
from projectorset.runtime.handlers import (
    IDLE_RESYNC_SECONDS,
    RESYNC_WINDOW_SECONDS,
    _seen_differently,
    next_resync_delay,
)


def migrate_job(**status: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "accounts-v2-a1-migrate",
            "uid": "job-1",
            "labels": {
                "projectorset.io/name": "accounts",
                "projectorset.io/version": "v2",
                "projectorset.io/attempt": "1",
                "projectorset.io/stage": "migrate",
            },
        },
        "status": status,
    }


def test_a_job_wakes_its_set_when_it_starts_and_ends_not_when_its_pod_gets_ready() -> None:
    views: dict[str, Any] = {}
    created = migrate_job()
    started = migrate_job(active=1, startTime="2026-11-29T21:00:00Z")
    ready = copy.deepcopy(started)
    ready["status"]["ready"] = 1
    done = migrate_job(
        succeeded=1,
        conditions=[{"type": "Complete", "status": "True", "lastTransitionTime": "2026-11-29T21:00:05Z"}],
    )
    woke = [
        _seen_differently(views, "job-1", "MODIFIED", lambda b=body: job_view(b))
        for body in (created, started, ready, done)
    ]
    assert woke == [True, True, False, True]
    assert _seen_differently(views, "job-1", "DELETED", lambda: job_view(done))
    assert views == {}


SETS = [("shop", f"crowd-{number}") for number in range(200)]


@pytest.mark.parametrize("started", [1_800_000_000.0, 1_800_003_500.0, 1_800_001_234.5])
def test_sets_at_rest_are_not_resynced_in_the_operators_first_hour_wherever_in_the_hour_it_started(
    started: float,
) -> None:
    # 1_800_003_500 is 100 s before a wall-clock hour: a window of the clock's hour would open then.
    for now in (started + 1, started + 100, started + 1800, started + 3599):
        for namespace, name in SETS:
            slot = now + next_resync_delay(namespace, name, started, now)
            assert started + IDLE_RESYNC_SECONDS <= slot < started + IDLE_RESYNC_SECONDS + RESYNC_WINDOW_SECONDS


def test_then_every_set_is_resynced_once_an_hour_within_one_five_minute_window() -> None:
    started = 1_800_001_234.5
    for namespace, name in SETS:
        first = started + 10 + next_resync_delay(namespace, name, started, started + 10)
        # Right after its slot, the set's next one is an hour later, at the same offset.
        after = first + 0.001
        assert after + next_resync_delay(namespace, name, started, after) == pytest.approx(first + IDLE_RESYNC_SECONDS)
        later = first + 5 * IDLE_RESYNC_SECONDS - 1
        assert later + next_resync_delay(namespace, name, started, later) == pytest.approx(
            first + 5 * IDLE_RESYNC_SECONDS
        )
    offsets = {started + 10 + next_resync_delay(n, s, started, started + 10) - started for n, s in SETS}
    # The 200 sets are spread over the window, not all at its start.
    assert max(offsets) - min(offsets) > RESYNC_WINDOW_SECONDS / 2
