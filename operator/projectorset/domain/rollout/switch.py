"""The switch: the Service moves once the database shows the release active, and follows the database."""

from __future__ import annotations

from projectorset.api import Phase
from projectorset.api.conditions import Reason
from projectorset.domain.observation import Deactivate, JobView, ScaleDeployment, SwitchService
from projectorset.domain.planning import Plan
from projectorset.domain.rollout.decision import ROLLOUT_POLL_SECONDS, Decision, Pass
from projectorset.domain.rollout.queries import (
    counted_projectors,
    in_flight,
    pods_ready,
    release_is_active,
    release_is_live,
    required_missing,
    shows,
)
from projectorset.domain.sequent import DatabaseState


def _active_projectors(run: Pass, db: DatabaseState) -> dict[str, int] | None:
    """This set's projector versions the database shows active, when none of them is replaying or
    activating (other applications' projectors on a shared event store do not count)."""
    mine = counted_projectors(run.spec, db, run.owned)
    if db.empty or in_flight(db, mine):
        return None
    active = {
        name: s.active_version for name, s in db.projectors.items() if s.active_version is not None and name in mine
    }
    return active or None


def deployed_active_release(run: Pass, db: DatabaseState) -> str | None:
    """A deployed version, not spec.version's, whose release the database shows active while the
    Service selects pods of another release: an earlier target's golive committed after the spec
    moved on (or back). Its Deployment's release annotation says which projectors it runs."""
    active = _active_projectors(run, db)
    spec_ready = pods_ready(run.cluster.deployments.get(run.spec.version), run.spec)
    if active is None or (active == run.spec.projector_versions and spec_ready):
        return None  # nothing settled, or spec.version's own release, ready: the rollout switches to it

    def runs_active(version: str | None) -> bool:
        deployment = run.cluster.deployments.get(version) if version else None
        return (
            deployment is not None
            and deployment.projectors is not None
            and dict(deployment.projectors) == active
            and not required_missing(run.spec, db, deployment.required)
        )

    if runs_active(run.cluster.service_version):
        return None
    candidates = sorted(
        v
        for v in run.cluster.deployments
        if v != run.spec.version and runs_active(v) and (active != run.spec.projector_versions or _ready(run, v))
    )
    if run.read_status.target_version in candidates:
        return run.read_status.target_version
    return candidates[-1] if candidates else None


def _ready(run: Pass, version: str) -> bool:
    deployment = run.cluster.deployments.get(version)
    return deployment is not None and deployment.available


def follow_database(run: Pass, version: str) -> Decision:
    """Move the Service to ``version``, the release the database made active, then carry on."""
    spec, cluster = run.spec, run.cluster
    deployment = cluster.deployments[version]
    why = (
        f"the database shows version {version}'s release active (its golive committed after spec.version "
        f"changed to {spec.version})"
    )
    run.poll(ROLLOUT_POLL_SECONDS)
    if not deployment.available:
        if deployment.replicas == 0:
            run.act(ScaleDeployment(version, max(1, spec.replicas)))
        return _waiting_for_pods(run, f"{why}; waiting for its pods before the Service moves to them")
    _move_service(run, version, f": {why}")
    return run.finish(
        Phase.SWITCHING,
        Reason.FOLLOWING_DATABASE,
        f"{why}: the Service selects version {version}; version {spec.version} rolls out next",
    )


def _waiting_for_pods(run: Pass, message: str) -> Decision:
    # A Warning while a serving version waits on these pods (the database moved past it); a first
    # install has nothing serving, and its pods starting is no cause for alarm.
    warning = run.next_status.active_version is not None
    return run.finish(Phase.SWITCHING, Reason.WAITING_FOR_AVAILABLE_PODS, message, warning=warning)


def _move_service(run: Pass, version: str, why: str = "") -> None:
    """Patch the Service to select ``version``'s pods and remember the switch."""
    serving = run.next_status.active_version
    run.act(SwitchService(version))
    history = [v for v in [serving, *run.next_status.history] if v and v != version]
    run.remember(active_version=version, previous_version=serving, switched_at=run.timestamp(), history=history)
    run.event(Reason.SERVICE_SWITCHED, f"Service {run.spec.service.name} now selects version {version}{why}")


def switch_once_live(run: Pass, plan: Plan, db: DatabaseState, golive: JobView | None) -> Decision | None:
    """The database is the gate: once it shows the release active, traffic moves in this very pass."""
    if release_is_active(run.spec, db, run.owned):
        return switch_when_required_active(run, db)
    if golive is not None and plan.to_deactivate and release_is_live(run.spec, db, run.owned):
        # golive committed. Only now are the projectors the release removed deactivated (a golive
        # that fails leaves them as they were); the new code refuses every write while a projector
        # it does not know is active, so this comes right before the switch, in the same pass.
        removed = tuple(plan.to_deactivate)
        run.act(Deactivate(removed))
        run.event(
            Reason.PROJECTORS_DEACTIVATED, f"deactivated {', '.join(removed)} (not in version {run.spec.version})"
        )
        return switch_when_required_active(run, db)
    return None


def switch_when_required_active(run: Pass, db: DatabaseState) -> Decision:
    """This set's projectors are live: switch, once the database also shows every projector of
    ``requiredProjectors`` (another set's) active at its version. Until then the old version
    serves, and the new one waits: its code would be refused every write."""
    missing = required_missing(run.spec, db)
    if not missing:
        return _switch(run)
    owners = run.cluster.projector_owners
    waits = "; ".join(
        f"{name} version {version} ({shows(state)}; "
        + (
            f"ProjectorSet {owners[name]} owns it)"
            if name in owners
            else "no ProjectorSet on this event store lists it)"
        )
        for name, version, state in missing
    )
    run.ensure_deployment()
    run.poll(ROLLOUT_POLL_SECONDS)
    serving = run.next_status.active_version
    return run.finish(
        Phase.ACTIVATING,
        Reason.WAITING_FOR_PROJECTORS,
        f"version {run.spec.version} waits for required projectors: {waits}",
        note=f"; version {serving} keeps serving" if serving else "",
    )


def _switch(run: Pass) -> Decision:
    spec, cluster = run.spec, run.cluster
    target = spec.version
    serving = run.next_status.active_version
    if run.next_status.activated_at is None:
        run.remember(activated_at=run.timestamp())
        run.activated = True
        run.event(Reason.ACTIVATED, f"the database shows every projector of {target} active")
    deployment = cluster.deployments.get(target)
    if not pods_ready(deployment, spec):
        # Switching to pods that are not ready would drop every request; keep the old pods.
        run.ensure_deployment()
        run.poll(ROLLOUT_POLL_SECONDS)
        return _waiting_for_pods(run, f"version {target} is active in the database but its Deployment is not available")
    _move_service(run, target)
    if serving is not None:
        run.poll(max(0.5, float(spec.strategy.scale_down_delay_seconds)))
    return run.finish(Phase.ACTIVE, Reason.ROLLOUT_COMPLETE, f"version {target} serves")
