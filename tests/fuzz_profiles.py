"""Hypothesis profiles of the rollout's state machines (``HYPOTHESIS_PROFILE``).

``default`` is the bounded, derandomized run of ``make test``: the same examples every time, so
the suite never goes red by chance. ``fuzz`` (``make fuzz``) and ``hunt`` exist to find new
interleavings, so they must be random: each sets ``derandomize=False`` itself, because a profile
registered after ``default`` is loaded inherits the settings then in force, and would otherwise
replay ``default``'s fixed examples whatever ``--hypothesis-seed`` says.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, settings

# Every profile: no deadline (passes vary on a loaded machine), the reproduction blob printed.
COMMON: dict[str, Any] = {
    "deadline": None,
    "print_blob": True,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}


def register() -> None:
    """Register the three profiles and load the one ``HYPOTHESIS_PROFILE`` names (``default``)."""
    settings.register_profile("default", max_examples=40, stateful_step_count=40, derandomize=True, **COMMON)
    settings.register_profile("fuzz", max_examples=500, stateful_step_count=60, derandomize=False, **COMMON)
    # Finding counterexamples one at a time: stop at the first bug, shrink it alone.
    settings.register_profile(
        "hunt", max_examples=300, stateful_step_count=40, derandomize=False, report_multiple_bugs=False, **COMMON
    )
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
