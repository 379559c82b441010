"""``make fuzz`` is random: a seed draws its own examples, the same seed the same ones.

Each run is a real ``pytest --hypothesis-seed=N`` under ``HYPOTHESIS_PROFILE``, as ``make fuzz``
runs it, over a small property that prints what it drew.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import fuzz_profiles
from hypothesis import settings

TESTS = Path(__file__).resolve().parent

PROPERTY = """
import fuzz_profiles
from hypothesis import given, settings, strategies as st

fuzz_profiles.register()


@settings(max_examples=10, database=None)
@given(st.integers(min_value=0, max_value=10**9))
def test_draw(value):
    print("drawn", value)
"""


def drawn_under(tmp_path: Path, profile: str, run_seed: int) -> list[str]:
    module = tmp_path / "test_property.py"
    module.write_text(PROPERTY)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", f"--hypothesis-seed={run_seed}", module],
        env={**os.environ, "HYPOTHESIS_PROFILE": profile, "PYTHONPATH": str(TESTS)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    drawn = [line for line in run.stdout.splitlines() if line.startswith("drawn")]
    assert drawn
    return drawn


def test_two_seeds_draw_different_examples_and_one_seed_the_same(tmp_path: Path) -> None:
    first = drawn_under(tmp_path, "fuzz", 1)
    assert drawn_under(tmp_path, "fuzz", 1) == first
    assert drawn_under(tmp_path, "fuzz", 2) != first


def test_the_hunt_profile_is_random_too() -> None:
    fuzz_profiles.register()
    assert settings.get_profile("hunt").derandomize is False
    assert settings.get_profile("fuzz").derandomize is False


def test_the_suites_profile_replays_the_same_examples_whatever_the_seed(tmp_path: Path) -> None:
    # make test must never go red by chance: derandomized, the seed changes nothing.
    assert drawn_under(tmp_path, "default", 1) == drawn_under(tmp_path, "default", 2)
