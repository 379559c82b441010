"""Steady state: the Service already reaches spec.version."""

from __future__ import annotations

from projectorset.api import Phase
from projectorset.api.conditions import ConditionType, Reason
from projectorset.domain.observation import ClearReplaying, DeleteDeployment, DeleteJob, ScaleDeployment
from projectorset.domain.planning import Change, Plan
from projectorset.domain.rollout.decision import BLOCKED_POLL_SECONDS, Decision, Pass
from projectorset.domain.rollout.queries import required_missing, shows, still_running
from projectorset.domain.sequent import DatabaseState


def steady_state(run: Pass, plan: Plan, db: DatabaseState) -> Decision:
    spec, cluster = run.spec, run.cluster
    target = spec.version
    run.ensure_deployment()
    _retire_old_versions(run)
    _clear_stale_registrations(run, db)
    run.remember(target_version=target)
    drift = [p for p in plan.projectors if p.change is not Change.UNCHANGED]
    missing = required_missing(spec, db)
    if (drift or missing) and not plan.first_install:
        details = "; ".join(
            [f"{p.name}: active {p.state.active_version}, release {p.spec_version}" for p in drift]
            + [f"{name} (required): {shows(state)}, release {version}" for name, version, state in missing]
        )
        run.condition(ConditionType.PROJECTORS_IN_SYNC, False, Reason.PROJECTORS_OUT_OF_SYNC, details)
        run.poll(BLOCKED_POLL_SECONDS)
        return run.finish(
            Phase.ACTIVE,
            Reason.PROJECTORS_OUT_OF_SYNC,
            f"version {target} serves but the database differs ({details}); "
            "projector changes roll out with a new spec.version",
            warning=True,
        )
    run.condition(
        ConditionType.PROJECTORS_IN_SYNC, True, Reason.IN_SYNC, "every projector is active at its release version"
    )
    deployment = cluster.deployments.get(target)
    message = f"version {target} serves"
    if deployment is not None and not deployment.available:
        message += f" ({deployment.ready_replicas}/{deployment.replicas} pods ready)"
    return run.finish(Phase.ACTIVE, Reason.ROLLOUT_COMPLETE, message)


def _clear_stale_registrations(run: Pass, db: DatabaseState) -> None:
    """Replaying or activating versions with no replay in progress and no stage Job at work are
    what an abandoned rollout registered before its prepare Job ever ran (its creation failed,
    or the spec moved back first): cleared, for this ProjectorSet's projectors only."""
    if db.replay_in_progress is not None or any(still_running(job) for job in run.cluster.jobs):
        return
    ours = set(run.spec.projector_versions)
    for deployment in run.cluster.deployments.values():
        ours |= set(deployment.projectors or {})
    stale = sorted(
        name
        for name, state in db.projectors.items()
        if name in ours and (state.replaying_version is not None or state.activating_version is not None)
    )
    if stale:
        run.act(ClearReplaying(tuple(stale)))


def _retire_old_versions(run: Pass) -> None:
    """Scale the previous version down after the delay and keep a bounded history."""
    spec, cluster = run.spec, run.cluster
    serving = run.next_status.active_version
    previous = run.next_status.previous_version
    switched_at = run.next_status.switched_at
    delay = float(spec.strategy.scale_down_delay_seconds)
    history: list[str] = [v for v in run.next_status.history if v not in (serving, spec.version)]
    for version in sorted(cluster.deployments):
        if version not in (serving, spec.version) and version not in history:
            history.append(version)
    keep = set(history[: spec.strategy.revision_history_limit])
    for version, deployment in sorted(cluster.deployments.items()):
        if version in (serving, spec.version):
            continue
        waited = (run.now - switched_at).total_seconds() if switched_at is not None else None
        if version == previous and waited is not None and waited < delay:
            # The old pods stay up for the delay, whatever the history limit says (seconds, not a
            # datetime sum: the CRD allows delays past the year 9999).
            run.poll(max(0.5, delay - waited))
            continue
        if version not in keep:
            run.act(DeleteDeployment(version))
            run.act(*(DeleteJob(job.name) for job in cluster.jobs if job.version == version))
            run.event(Reason.REVISION_PRUNED, f"version {version} deleted (revisionHistoryLimit)")
            continue
        if deployment.replicas > 0:
            run.act(ScaleDeployment(version, 0))
            run.event(Reason.SCALED_DOWN, f"version {version} scaled down to 0 replicas")
    run.remember(history=history[: spec.strategy.revision_history_limit])
