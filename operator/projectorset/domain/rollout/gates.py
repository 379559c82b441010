"""The gates before golive (or a direct activation): states that block a rollout, the checks, the promotion
and spec.paused."""

from __future__ import annotations

from collections.abc import Sequence

from projectorset.api import CheckResult, Phase, ProjectorSetSpec, ProjectorSetStatus, Promotion
from projectorset.api.conditions import ConditionType, Reason, progress_reason
from projectorset.domain.observation import RunChecks
from projectorset.domain.planning import Plan
from projectorset.domain.rollout.decision import BLOCKED_POLL_SECONDS, Decision, Pass
from projectorset.domain.rollout.teardown import fail
from projectorset.domain.sequent import DatabaseState


def blocking_state(run: Pass, plan: Plan) -> Decision | None:
    """States of the database the operator must not paper over: the plan says why."""
    serving = run.next_status.active_version
    if plan.first_install and serving is not None:
        run.poll(BLOCKED_POLL_SECONDS)
        return run.finish(
            Phase.PENDING,
            Reason.PROJECTOR_STATES_EMPTY,
            f"version {serving} serves but projector_states is empty, so nothing says which projector "
            f"versions are live: activate version {serving}'s configuration with its own code, e.g. "
            f"kubectl exec deploy/<its Deployment> -- bin/rails runner 'Sequent.activate_current_configuration!' "
            "(sequent:migrate:offline activates only when a view-schema migration is pending)",
            warning=True,
        )
    if plan.blocked:
        run.poll(BLOCKED_POLL_SECONDS)
        return run.finish(Phase.PENDING, plan.issues[0].reason, "; ".join(i.message for i in plan.issues), warning=True)
    for notice in plan.notices:
        run.condition(ConditionType.PLANNED, True, Reason.ROLLBACK_BY_REPLAY, notice)
    return None


def check_results(status: ProjectorSetStatus, spec: ProjectorSetSpec, attempt: int) -> dict[str, CheckResult]:
    """The results that count for this attempt: by check name, for this version and attempt, and
    for the query the spec holds now (an edited query runs again)."""
    digests = {check.name: check.digest for check in spec.replay.checks}
    return {
        result.name: result
        for result in status.checks
        if result.version == spec.version and result.attempt == attempt and digests.get(result.name) == result.digest
    }


def with_check_results(status: ProjectorSetStatus, results: Sequence[CheckResult]) -> ProjectorSetStatus:
    """The status with ``results`` recorded (what the controller writes after ``RunChecks``);
    results of another version or attempt are dropped."""
    if not results:
        return status
    run_of = (results[0].version, results[0].attempt)
    names = {result.name for result in results}
    kept = [r for r in status.checks if (r.version, r.attempt) == run_of and r.name not in names]
    return status.model_copy(update={"checks": [*kept, *results]})


def failed_checks(run: Pass, db: DatabaseState, attempt: int) -> Decision | None:
    """A check of this attempt that did not pass fails the rollout; the replay is aborted."""
    results = check_results(run.next_status, run.spec, attempt)
    failed = [results[c.name] for c in run.spec.replay.checks if c.name in results and not results[c.name].passed]
    if not failed:
        return None
    if len(failed) == 1:
        message = f"check {failed[0].name} failed: {failed[0].result}"
    else:
        message = f"{len(failed)} checks failed: " + "; ".join(f"{r.name}: {r.result}" for r in failed)
    return fail(run, db, Reason.CHECK_FAILED, message)


def run_checks(run: Pass, attempt: int, lag: int) -> Decision | None:
    """Once per attempt, after the replay caught up and before golive or the promotion wait: ask the
    controller to run the checks that have no result yet. None: every check passed (or none)."""
    checks = run.spec.replay.checks
    if not checks:
        return None
    results = check_results(run.next_status, run.spec, attempt)
    missing = tuple(check for check in checks if check.name not in results)
    if missing:
        if run.spec.paused:
            return paused(run)
        run.act(RunChecks(run.spec.version, attempt, missing))
        names = ", ".join(check.name for check in missing)
        return run.finish(Phase.REPLAYING, Reason.RUNNING_CHECKS, f"lag {lag} events: running checks {names}")
    if progress_reason(run.read_status) == Reason.RUNNING_CHECKS:
        run.event(Reason.CHECKS_PASSED, "checks passed before golive: " + ", ".join(check.name for check in checks))
    return None


def promotion_gate(run: Pass) -> Decision | None:
    spec = run.spec
    if spec.paused:
        return paused(run)
    if spec.strategy.promotion is Promotion.MANUAL and spec.promote != spec.version:
        run.poll(BLOCKED_POLL_SECONDS)
        return run.finish(
            Phase.PAUSED,
            Reason.AWAITING_PROMOTION,
            f"version {spec.version} is ready to go live; set spec.promote to {spec.version!r} to promote it",
        )
    return None


def paused(run: Pass) -> Decision:
    run.poll(BLOCKED_POLL_SECONDS)
    return run.finish(Phase.PAUSED, Reason.PAUSED_BY_USER, f"rollout of {run.spec.version} paused by spec.paused")
