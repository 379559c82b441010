"""Pure facts about the spec, the cluster view and the database state, each decided once."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

from projectorset.api import ProjectorSetSpec
from projectorset.domain.observation import ClusterView, DeploymentView, JobState, JobView
from projectorset.domain.resources import stale_template
from projectorset.domain.sequent import DatabaseState, ProjectorState, Stage


def release_is_live(spec: ProjectorSetSpec, db: DatabaseState, owned: Collection[str] | None = None) -> bool:
    """Every projector of the release is active at its version and nothing is left in flight:
    golive (or the activation) committed. Projectors the release removed may still be active.
    ``owned`` (``owned_projectors``): only those and the release's count; other applications'
    projectors on a shared event store may be replaying meanwhile."""
    if db.empty or in_flight(db, counted_projectors(spec, db, owned)):
        return False
    return all(
        (state := db.projectors.get(name)) is not None and state.active_version == version
        for name, version in spec.projector_versions.items()
    )


def release_is_active(spec: ProjectorSetSpec, db: DatabaseState, owned: Collection[str] | None = None) -> bool:
    """The release is live and no projector outside it is still active: its code can write.
    With ``owned``, only this set's projectors count (see ``release_is_live``)."""
    return release_is_live(spec, db, owned) and all(
        name in spec.projector_versions
        or name in spec.required_versions
        or s.active_version is None
        or (owned is not None and name not in owned)
        for name, s in db.projectors.items()
    )


def counted_projectors(spec: ProjectorSetSpec, db: DatabaseState, owned: Collection[str] | None) -> set[str]:
    """The projectors whose state is this set's business: the release's and those of the releases
    it deployed before (``owned``); with ``owned`` unknown, every projector in the table but the
    other sets' ones this release requires."""
    if owned is None:
        return set(db.projectors) - set(spec.required_versions)
    return {*spec.projector_versions, *owned}


def in_flight(db: DatabaseState, names: Iterable[str] | None = None) -> bool:
    """Some projector (of ``names``, if given) is replaying or activating."""
    chosen = None if names is None else set(names)
    return any(
        (s.replaying_version is not None or s.activating_version is not None) and (chosen is None or name in chosen)
        for name, s in db.projectors.items()
    )


def own_projectors(spec: ProjectorSetSpec, db: DatabaseState) -> tuple[str, ...]:
    """The projectors this ProjectorSet may have left replaying or activating: the release's and
    those of the latest replay (a spec edit may have dropped one)."""
    names = set(spec.projector_versions) | set(db.replay.projectors if db.replay is not None else ())
    return tuple(sorted(names - set(spec.required_versions)))


def owned_projectors(cluster: ClusterView) -> set[str] | None:
    """The projectors of every release this set deployed (its Deployments' release annotations):
    what it may deactivate when the spec drops them. None when a Deployment does not say (made by an
    operator version before the annotation): then every active projector not in the spec counts."""
    owned: set[str] = set()
    for deployment in cluster.deployments.values():
        if deployment.projectors is None:
            return None
        owned.update(deployment.projectors)
    return owned


def required_missing(
    spec: ProjectorSetSpec, db: DatabaseState, required: Mapping[str, int] | None = None
) -> list[tuple[str, int, ProjectorState]]:
    """The ``requiredProjectors`` (of ``spec``, or ``required``: a deployed release's) the database
    does not show active at their version, with what it shows: that release's code cannot write
    until each is (Sequent's publisher refuses it)."""
    missing = []
    wanted = spec.required_versions if required is None else required
    for name, version in sorted(wanted.items()):
        state = db.projectors.get(name, ProjectorState(name))
        if state.active_version != version or state.activating_version is not None:
            missing.append((name, version, state))
    return missing


def shows(state: ProjectorState) -> str:
    """What projector_states shows of one projector, in words."""
    parts = [
        f"{what} {version}"
        for what, version in (
            ("active", state.active_version),
            ("activating", state.activating_version),
            ("replaying", state.replaying_version),
        )
        if version is not None
    ]
    return "the database shows " + (", ".join(parts) if parts else "it inactive")


def pods_ready(deployment: DeploymentView | None, spec: ProjectorSetSpec) -> bool:
    """spec.version's pods are all available and run the spec's template (a retry that fixed the
    template waits for the new pods); with ``replicas: 0`` there are none to wait for."""
    if deployment is None or stale_template(deployment, spec):
        return False
    return deployment.available or (spec.replicas == 0 and deployment.replicas == 0)


# ---- Jobs --------------------------------------------------------------------------------------


def still_running(job: JobView) -> bool:
    """The Job's pods may still write: it runs, its pods terminate, or it is being deleted (a Job
    is over only when its pods are gone; a deleted one terminates in the foreground)."""
    return job.state is JobState.RUNNING or job.active > 0 or job.deleting


def stages_still_running(cluster: ClusterView) -> list[JobView]:
    """Stage Jobs (abort aside) whose pods may still write."""
    return [job for job in cluster.jobs if job.stage != Stage.ABORT and still_running(job)]


def golives_running(cluster: ClusterView) -> list[JobView]:
    """golive Jobs that run: one transaction each, which either lands or leaves nothing behind."""
    return [job for job in cluster.jobs if job.stage == Stage.GOLIVE and job.state is JobState.RUNNING]


def latest_attempt(cluster: ClusterView, version: str) -> int:
    """The highest attempt among ``version``'s Jobs; 0 when it has none."""
    return max((job.attempt for job in cluster.jobs if job.version == version), default=0)


def latest(jobs: Sequence[JobView]) -> JobView | None:
    """The Job of the highest round."""
    return max(jobs, key=lambda job: job.round, default=None)
