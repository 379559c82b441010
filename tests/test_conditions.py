"""Condition types and reasons: one documented vocabulary, the README printed from it."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from projectorset.api import ProjectorSetStatus, conditions
from projectorset.api.conditions import ConditionType, Reason, set_condition

ROOT = Path(__file__).resolve().parents[1]
MARKERS = re.compile(r"<!-- conditions:begin .*?-->\n(?P<table>.*?)<!-- conditions:end -->", re.DOTALL)
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def test_readme_tables_match_the_code() -> None:
    found = MARKERS.search((ROOT / "README.md").read_text())
    assert found is not None, "README.md lacks the <!-- conditions:begin/end --> markers"
    assert found["table"] == conditions.markdown(), (
        "README.md's condition tables are stale: replace them with `python -m projectorset.api.conditions`"
    )


def test_the_module_prints_the_tables() -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "projectorset.api.conditions"],
        cwd=ROOT / "operator",
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert printed == conditions.markdown()
    assert "| `ReplayFailed` | failure |" in printed


def test_reasons_are_unique_camel_case_words() -> None:
    values = [reason.value for reason in Reason]
    assert len(values) == len(set(values))
    assert all(re.fullmatch(r"[A-Z][A-Za-z]+", value) for value in values)
    assert conditions.reason_named("StageFailed") is Reason.STAGE_FAILED
    assert conditions.reason_named("NoSuchReason") is None


def test_transition_time_moves_only_when_the_status_changes() -> None:
    first = set_condition([], ConditionType.READY, False, Reason.DEPLOYING, "waiting", 1, NOW)
    later = NOW + timedelta(minutes=5)
    same_status = set_condition(first, ConditionType.READY, False, Reason.REPLAYING, "replay", 2, later)
    flipped = set_condition(same_status, ConditionType.READY, True, Reason.ACTIVE, "serves", 2, later)
    (condition,) = same_status
    assert (condition.reason, condition.observed_generation) == ("Replaying", 2)
    assert condition.last_transition_time == NOW
    assert flipped[0].last_transition_time == later
    assert flipped[0].model_dump(by_alias=True, mode="json")["lastTransitionTime"] == "2026-11-29T12:05:00Z"


def test_a_message_longer_than_metav1_allows_is_shortened() -> None:
    (condition,) = set_condition([], ConditionType.READY, False, Reason.DEPLOYING, "x" * 40_000, 1, NOW)
    assert len(condition.message) == 32_768
    assert condition.message.endswith("...")


def test_conditions_written_without_transition_time_are_read_and_completed() -> None:
    """Older operator versions made lastTransitionTime optional: such a status is still read, the
    condition gets the time it was read, and the status asks to be written back."""
    stored = {
        "phase": "Active",
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "Active", "message": "version v1 serves"},
            {
                "type": "Progressing",
                "status": "False",
                "reason": "RolloutComplete",
                "message": "",
                "lastTransitionTime": "2026-11-01T08:00:00Z",
                "observedGeneration": None,
            },
        ],
    }
    status = ProjectorSetStatus.model_validate(stored, context={"now": NOW})
    ready = conditions.find_condition(status.conditions, ConditionType.READY)
    progressing = conditions.find_condition(status.conditions, ConditionType.PROGRESSING)
    assert ready is not None and ready.last_transition_time == NOW
    assert progressing is not None and progressing.last_transition_time == datetime(2026, 11, 1, 8, tzinfo=UTC)
    assert status.needs_rewrite
    written = status.model_dump(by_alias=True, mode="json")
    assert [c["lastTransitionTime"] for c in written["conditions"]] == ["2026-11-29T12:00:00Z", "2026-11-01T08:00:00Z"]
    assert not ProjectorSetStatus.model_validate(written).needs_rewrite


def test_conditions_stay_sorted_by_type_and_unique() -> None:
    found = set_condition([], ConditionType.READY, True, Reason.ACTIVE, "", 1, NOW)
    found = set_condition(found, ConditionType.DATABASE_READY, True, Reason.CONNECTED, "", 1, NOW)
    found = set_condition(found, ConditionType.READY, False, Reason.DEPLOYING, "", 1, NOW)
    assert [c.type for c in found] == ["DatabaseReady", "Ready"]
