"""The one back-off with full jitter (domain.backoff) that every retry uses: its ceilings, its draws
from a seeded source, and what it is for: sets that failed together do not retry together."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections import Counter

import pytest

from projectorset.domain.backoff import Backoff


def test_the_ceiling_doubles_from_the_base_up_to_the_cap() -> None:
    backoff = Backoff(base=1.0, cap=60.0)
    assert [backoff.ceiling(attempt) for attempt in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff.ceiling(10_000) == 60  # no overflow after a very long outage


def test_each_wait_is_drawn_between_zero_and_the_ceiling() -> None:
    backoff = Backoff(base=10.0, cap=300.0)
    source = random.Random(7)
    for attempt in range(12):
        waits = [backoff.delay(attempt, source) for _ in range(200)]
        assert all(0 <= wait <= backoff.ceiling(attempt) for wait in waits)
        # Full jitter: the draws use the whole window, not a band near the ceiling.
        assert min(waits) < 0.1 * backoff.ceiling(attempt) and max(waits) > 0.9 * backoff.ceiling(attempt)


def test_the_same_seed_gives_the_same_waits() -> None:
    backoff = Backoff(base=1.0, cap=60.0)
    first = [backoff.delay(attempt, random.Random("shop/blog")) for attempt in range(6)]
    again = [backoff.delay(attempt, random.Random("shop/blog")) for attempt in range(6)]
    other = [backoff.delay(attempt, random.Random("shop/news")) for attempt in range(6)]
    assert first == again
    assert first != other


def test_a_thousand_sets_failing_together_retry_spread_over_the_window() -> None:
    """After an outage every set's pass failed at the same moment. Each one's next tries land at its
    own times: within no 100 ms, even in the first retry's two-second window, do more than a tenth
    of them come back together (an even spread puts 5 % there; lockstep puts all of them)."""
    backoff = Backoff(base=1.0, cap=60.0)
    source = random.Random(2026)
    sets = 1000
    retry_at = [0.0] * sets
    for attempt in range(1, 7):  # the outage lasts six tries
        retry_at = [at + backoff.delay(attempt, source) for at in retry_at]
        per_100ms = Counter(int(at * 10) for at in retry_at)
        assert max(per_100ms.values()) <= 0.1 * sets, (attempt, per_100ms.most_common(3))
        assert max(retry_at) - min(retry_at) > 0.9 * backoff.ceiling(attempt)  # over the whole window

    # Without jitter (the doubling alone) all thousand would come back at the same instant each time.
    in_lockstep = Counter(sum(backoff.ceiling(attempt) for attempt in range(1, 7)) for _ in range(sets))
    assert in_lockstep.most_common(1)[0][1] == sets


def test_a_seeded_wait_is_the_same_on_every_pass_and_in_every_process() -> None:
    """The rollout decides afresh on each pass: the wait before the next abort Job, seeded by the name of
    the one that failed, must give the same due time on the next pass, and after a restart."""
    backoff = Backoff(base=10.0, cap=300.0)
    here = backoff.delay_seeded(2, "blog-v2-a1-abort-r1")
    assert backoff.delay_seeded(2, "blog-v2-a1-abort-r1") == here
    code = (
        "from projectorset.domain.backoff import Backoff\n"
        "print(repr(Backoff(10.0, 300.0).delay_seeded(2, 'blog-v2-a1-abort-r1')))"
    )
    other_process = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert float(other_process.stdout) == here
    # A thousand sets whose abort Jobs failed together come back over the window, not at once.
    waits = [backoff.delay_seeded(2, f"set-{number}-v2-a1-abort-r1") for number in range(1000)]
    per_second = Counter(int(wait) for wait in waits)
    assert max(per_second.values()) <= 100 and max(waits) - min(waits) > 0.9 * backoff.ceiling(2)


@pytest.mark.parametrize(("base", "cap"), [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_a_back_off_that_cannot_work_is_refused(base: float, cap: float) -> None:
    with pytest.raises(ValueError, match="base"):
        Backoff(base=base, cap=cap)


def test_a_negative_attempt_is_refused() -> None:
    with pytest.raises(ValueError, match="attempt"):
        Backoff(base=1.0, cap=2.0).ceiling(-1)
