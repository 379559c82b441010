"""How long to wait before trying again: exponential back-off with full jitter, for every retry.

A delay that only doubles brings every waiting client back at the same instants: after an API
server or database outage, a thousand ProjectorSets that failed together would retry together,
again and again. Full jitter (the AWS Architecture Blog's "Exponential Backoff And Jitter")
draws each wait uniformly between zero and the doubling ceiling, ``min(cap, base * 2**attempt)``,
which spreads the retries over the whole window while keeping the ceiling's growth.

Pure: the random source is a parameter. A caller that must decide the same way on every pass
(the rollout's ``decide``) uses ``delay_seeded`` with a stable name, such as the failed Job's.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol

# Past this many doublings any sensible cap is reached; it keeps 2**attempt from overflowing a float.
_MAX_DOUBLINGS = 64


class RandomSource(Protocol):
    """What the back-off draws from: ``random.Random`` (or the ``random`` module) has it."""

    def uniform(self, a: float, b: float, /) -> float: ...


@dataclass(frozen=True)
class Backoff:
    """Waits for retry ``attempt`` (0 for the first retry) grow from ``base`` seconds, doubling, up to ``cap``."""

    base: float
    cap: float

    def __post_init__(self) -> None:
        if self.base <= 0 or self.cap < self.base:
            raise ValueError(f"back-off needs 0 < base <= cap, got base={self.base}, cap={self.cap}")

    def ceiling(self, attempt: int) -> float:
        """The longest wait before retry ``attempt``: ``min(cap, base * 2**attempt)``."""
        if attempt < 0:
            raise ValueError(f"attempt must be 0 or more, got {attempt}")
        return min(self.cap, self.base * 2.0 ** min(attempt, _MAX_DOUBLINGS))

    def delay(self, attempt: int, source: RandomSource) -> float:
        """Full jitter: a wait drawn uniformly from ``[0, ceiling(attempt)]``."""
        return source.uniform(0.0, self.ceiling(attempt))

    def delay_seeded(self, attempt: int, seed: str) -> float:
        """The same full-jitter wait for the same seed, every time and in every process (a string
        seeds ``random.Random`` through SHA-512, not ``hash``): for a decision made afresh on each
        pass, which must find the same due time on the next one. Different seeds (the sets' Job
        names) still spread over the window."""
        return self.delay(attempt, random.Random(seed))
