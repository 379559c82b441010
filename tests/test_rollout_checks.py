"""Checks before golive in the phase machine (pure): when they run, what a result decides, and
that a lost status patch, a restart or a retry runs them again rather than skipping them.
What the database does with a check's query is in tests/test_checks.py."""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

import pytest
from rollout_world import World, manifest

from projectorset.api import Phase, ProjectorSetStatus
from projectorset.domain.observation import RunChecks, RunStageJob, SwitchService

COUNTS = {"name": "rows-match", "query": "SELECT (SELECT count(*) FROM replay_schema.posts) = 5"}
NO_NULL = {"name": "titles-set", "query": "SELECT count(*) = 0 FROM replay_schema.posts WHERE title IS NULL"}


def reason(world: World) -> str:
    return next(c.reason for c in world.status.conditions if c.type == "Progressing")


def condition(world: World, type_: str) -> tuple[str, str] | None:
    found = next((c for c in world.status.conditions if c.type == type_), None)
    return None if found is None else (found.status, found.reason)


def with_checks(*checks: dict[str, Any], **overrides: Any) -> World:
    world = World(manifest("v1")).serving_v1()
    world.upgrade(manifest("v2", {"PostProjector": 2}, replay={"checks": list(checks)}, **overrides))
    return world


def advance(world: World, until: Any, passes: int = 30, **kwargs: Any) -> None:
    """Pass, finishing Jobs as Sequent would, until ``until(world)``."""
    for _ in range(passes):
        if until(world):
            return
        world.step(**kwargs)
        world.finish_running_jobs()
        world.now += timedelta(seconds=5)
    assert until(world), f"never reached; phase {world.status.phase}, reason {reason(world)}"


def events(world: World) -> list[tuple[str, str, str]]:
    return [(e.type, e.reason, e.message) for d in world.history for e in d.events]


def actions(world: World) -> list[object]:
    return [a for d in world.history for a in d.actions]


def results(world: World) -> dict[str, tuple[bool, str, int]]:
    return {r.name: (r.passed, r.result, r.attempt) for r in world.status.checks}


def test_checks_run_once_after_catching_up_and_before_golive() -> None:
    world = with_checks(COUNTS, NO_NULL)
    world.lag = 5000  # the first catch-up round brings it within maxLag
    advance(world, lambda w: w.service_version == "v2" and w.status.phase is Phase.ACTIVE)

    assert world.checks_run == ["rows-match", "titles-set"]
    ordered = [type(a).__name__ + (f":{a.stage}" if isinstance(a, RunStageJob) else "") for a in actions(world)]
    ran = ordered.index("RunChecks")
    assert ordered.index("RunStageJob:catchup") < ran < ordered.index("RunStageJob:golive")
    [run] = [a for a in actions(world) if isinstance(a, RunChecks)]
    assert (run.version, run.attempt, [c.name for c in run.checks]) == ("v2", 1, ["rows-match", "titles-set"])
    assert results(world) == {"rows-match": (True, "true", 1), "titles-set": (True, "true", 1)}
    assert ("Normal", "ChecksPassed", "checks passed before golive: rows-match, titles-set") in events(world)
    reasons = [r for _, r, _ in events(world)]
    assert reasons.index("RunningChecks") < reasons.index("ChecksPassed") < reasons.index("GoingLive")


def test_without_checks_no_check_runs() -> None:
    world = with_checks()
    advance(world, lambda w: w.service_version == "v2")
    assert not [a for a in actions(world) if isinstance(a, RunChecks)]
    assert world.status.checks == []


@pytest.mark.parametrize(
    "outcome",
    [
        "false",
        "NULL",
        "no row",
        "timed out after 30s: QueryCanceled: canceling statement due to statement timeout",
        'SyntaxError: syntax error at or near "SELEC"',
        "ReadOnlySqlTransaction: cannot execute DELETE in a read-only transaction",
    ],
    ids=["false", "null", "no-row", "timeout", "invalid-sql", "write-attempt"],
)
def test_a_check_that_does_not_pass_fails_the_rollout_and_aborts_the_replay(outcome: str) -> None:
    world = with_checks(COUNTS, NO_NULL)
    world.check_outcomes["titles-set"] = (False, outcome)
    advance(world, lambda w: w.status.phase is Phase.FAILED)

    assert reason(world) == "CheckFailed"
    assert world.status.message.startswith(f"check titles-set failed: {outcome}; aborting")
    assert results(world) == {"rows-match": (True, "true", 1), "titles-set": (False, outcome, 1)}
    [warning] = [e for e in events(world) if e[1] == "CheckFailed"]
    assert warning[0] == "Warning" and f"check titles-set failed: {outcome}" in warning[2]
    assert world.golive_runs == 0
    # The failure path aborts the replay; the old version keeps serving.
    advance(world, lambda w: condition(w, "ReplayAborted") == ("True", "Aborted"))
    assert any(isinstance(a, RunStageJob) and a.stage == "abort" for a in actions(world))
    assert world.replay is not None and world.replay.state == "aborted"
    assert world.projectors["PostProjector"].replaying_version is None
    assert world.service_version == "v1"
    assert not [a for a in actions(world) if isinstance(a, SwitchService)]
    assert world.status.phase is Phase.FAILED and reason(world) == "CheckFailed"
    assert "version v1 keeps serving" in world.status.message
    # Waiting for a retry does not run the checks again.
    world.run(passes=5)
    assert world.checks_run == ["rows-match", "titles-set"]


def test_several_failed_checks_are_all_named() -> None:
    world = with_checks(COUNTS, NO_NULL)
    world.check_outcomes.update({"rows-match": (False, "false"), "titles-set": (False, "NULL")})
    advance(world, lambda w: w.status.phase is Phase.FAILED)
    assert world.status.message.startswith("2 checks failed: rows-match: false; titles-set: NULL")


def test_manual_promotion_shows_the_results_before_the_user_promotes() -> None:
    world = with_checks(COUNTS, strategy={"promotion": "Manual"})
    advance(world, lambda w: w.status.phase is Phase.PAUSED)

    assert reason(world) == "AwaitingPromotion"
    assert results(world) == {"rows-match": (True, "true", 1)}
    assert world.checks_run == ["rows-match"]
    assert world.golive_runs == 0
    # The user promotes: golive runs on the results already shown, without running the checks again.
    world.spec = world.spec.model_copy(update={"promote": "v2"})
    world.generation += 1
    advance(world, lambda w: w.service_version == "v2")
    assert world.checks_run == ["rows-match"]
    assert world.golive_runs == 1


def test_manual_promotion_is_never_offered_after_a_failed_check() -> None:
    world = with_checks(COUNTS, strategy={"promotion": "Manual"})
    world.check_outcomes["rows-match"] = (False, "false")
    advance(world, lambda w: w.status.phase is Phase.FAILED)
    assert "AwaitingPromotion" not in [r for _, r, _ in events(world)]
    assert reason(world) == "CheckFailed"


def test_a_query_edited_while_awaiting_promotion_runs_again() -> None:
    world = with_checks(COUNTS, strategy={"promotion": "Manual"})
    advance(world, lambda w: w.status.phase is Phase.PAUSED)
    edited = {**COUNTS, "query": "SELECT (SELECT count(*) FROM replay_schema.posts) = 6"}
    world.upgrade(manifest("v2", {"PostProjector": 2}, replay={"checks": [edited]}, strategy={"promotion": "Manual"}))
    world.check_outcomes["rows-match"] = (False, "false")
    advance(world, lambda w: w.status.phase is Phase.FAILED)
    assert world.checks_run == ["rows-match", "rows-match"]
    assert reason(world) == "CheckFailed"


def test_a_lost_status_patch_runs_the_checks_again() -> None:
    world = with_checks(COUNTS)
    advance(world, lambda w: any(isinstance(a, RunChecks) for a in w.history[-1].actions) if w.history else False)
    # The status written with the results never reached the API server: the next pass starts from
    # the status before it, and runs the (read-only) checks again.
    world.status = world.history[-2].status
    advance(world, lambda w: w.service_version == "v2")
    assert world.checks_run == ["rows-match", "rows-match"]
    assert world.golive_runs == 1


def test_an_operator_restarted_at_every_pass_runs_the_checks_once() -> None:
    world = with_checks(COUNTS, NO_NULL)
    advance(world, lambda w: w.service_version == "v2", restart=True)
    assert world.checks_run == ["rows-match", "titles-set"]
    assert results(world) == {"rows-match": (True, "true", 1), "titles-set": (True, "true", 1)}


def test_a_retry_runs_the_checks_again_in_the_new_attempt() -> None:
    world = with_checks(COUNTS)
    world.check_outcomes["rows-match"] = (False, "false")
    advance(world, lambda w: w.status.phase is Phase.FAILED and condition(w, "ReplayAborted") == ("True", "Aborted"))

    world.check_outcomes.clear()  # the data was fixed; the user retries
    world.spec = world.spec.model_copy(update={"retry": 1})
    world.generation += 1
    advance(world, lambda w: w.service_version == "v2")
    assert world.checks_run == ["rows-match", "rows-match"]
    assert results(world) == {"rows-match": (True, "true", 2)}


def test_a_paused_rollout_does_not_run_its_checks() -> None:
    world = with_checks(COUNTS, paused=False)
    advance(world, lambda w: w.replay is not None and w.replay.state == "optimized")
    world.spec = world.spec.model_copy(update={"paused": True})
    world.run(passes=3)
    assert world.checks_run == []
    assert reason(world) == "PausedByUser"


def test_results_round_trip_through_the_status_manifest() -> None:
    world = with_checks(COUNTS)
    advance(world, lambda w: w.service_version == "v2")
    dumped = world.status.model_dump(by_alias=True, mode="json")
    [entry] = dumped["checks"]
    assert set(entry) == {"name", "passed", "result", "checkedAt", "version", "attempt", "digest"}
    assert ProjectorSetStatus.model_validate(dumped).checks == world.status.checks


# ---- through the real controller (controller.Reconciler over the world) -------------------------


def reconcile_until(world: World, until: Any, passes: int = 40, lose_patch_of_checks: bool = False) -> None:
    """Passes of the real controller, finishing Jobs as Sequent would, until ``until(world)``;
    ``lose_patch_of_checks``: the status written by the first pass that ran checks is lost."""
    for _ in range(passes):
        if until(world):
            return
        runs_before, stored_before = len(world.checks_run), copy.deepcopy(world.stored_status)
        record = world.reconcile()
        if lose_patch_of_checks and len(world.checks_run) > runs_before:
            # The patch never reached the API server: it still holds the status from before.
            assert record.status_written
            world.stored_status = stored_before
            world.status = ProjectorSetStatus.model_validate(stored_before)
            lose_patch_of_checks = False
        world.finish_running_jobs()
        world.now += timedelta(seconds=5)
    assert until(world), f"never reached; phase {world.status.phase}, reason {reason(world)}"


def test_the_controller_records_the_results_and_the_next_pass_fails_on_them() -> None:
    world = with_checks(COUNTS, NO_NULL)
    world.check_outcomes["titles-set"] = (False, "NULL")
    reconcile_until(world, lambda w: w.status.phase is Phase.FAILED)

    stored = world.stored_status
    assert stored is not None
    assert [(c["name"], c["passed"], c["result"]) for c in stored["checks"]] == [
        ("rows-match", True, "true"),
        ("titles-set", False, "NULL"),
    ]
    assert reason(world) == "CheckFailed"
    warnings = [e for e in world.events if e.type == "Warning" and e.reason == "CheckFailed"]
    assert warnings and warnings[0].message.startswith("check titles-set failed: NULL")
    reconcile_until(world, lambda w: condition(w, "ReplayAborted") == ("True", "Aborted"))
    assert world.service_version == "v1" and world.golive_runs == 0
    assert world.checks_run == ["rows-match", "titles-set"]


def test_through_the_controller_a_lost_status_patch_runs_the_checks_again() -> None:
    world = with_checks(COUNTS)
    reconcile_until(world, lambda w: w.service_version == "v2", lose_patch_of_checks=True)
    assert world.checks_run == ["rows-match", "rows-match"]
    assert world.golive_runs == 1
    assert [(c.name, c.passed) for c in world.status.checks] == [("rows-match", True)]
