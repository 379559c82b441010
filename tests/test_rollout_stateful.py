"""The rollout under everything users and clusters do, in any order: a Hypothesis state machine.

Rules interleave at random: spec edits (a new version, back to any earlier one, abort, pause,
promote, replicas including 0, a retry), stage Jobs that succeed, fail the Sequent way, hang
until their deadline, or vanish, golive committing at any moment, database outages, API errors
on any action (before or after it took effect), lost status patches, and operator restarts
with the status kept, stale or lost. Each operator pass runs the real ``controller.Reconciler``
over ``rollout_world.World``, which carries the actions out the way Kubernetes and Sequent do.

Invariants (issue 9), checked after every step and when the world settles:
- once the database shows a deployed release active, a pass whose actions all succeed leaves
  the Service on pods of exactly that release, whatever the spec says (no write outage);
- golive runs at most once per replay; no stage Job of one rollout is taken for another, and
  the attempt numbering never goes back;
- Failed or Aborted with nothing running leaves no replay in progress and nothing replaying
  or activating;
- when failures stop, every rollout ends Active at spec.version, or Failed/Aborted with a fixed
  reason, and a retry of a failed one goes live;
- a status the operator writes never says Active or Ready for a version the Service does not select.

Profiles (``HYPOTHESIS_PROFILE``, tests/fuzz_profiles.py): ``default`` is bounded and derandomized
for the normal suite, ``fuzz`` is the long, random run of ``make fuzz``, which prints its seed
first; ``make fuzz SEED=n`` replays that run. A failure prints the reproduction blob
(``@reproduce_failure``). Every shrunk counterexample is kept as a plain test in
tests/test_rollout_regressions.py.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import fuzz_profiles
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule
from rollout_world import Faults, PassRecord, World, manifest

from projectorset.api import Phase, Promotion
from projectorset.api.conditions import Kind, Reason
from projectorset.domain.observation import JobState
from projectorset.domain.rollout import release_is_active
from projectorset.domain.sequent import ProjectorState

# Four releases: v2 changes PostProjector, v3 adds TagProjector, v4 has v1's projectors (no replay).
RELEASES: dict[str, dict[str, int]] = {
    "v1": {"PostProjector": 1},
    "v2": {"PostProjector": 2},
    "v3": {"PostProjector": 2, "TagProjector": 1},
    "v4": {"PostProjector": 1},
}

# The shared-store model's projector owned by another set; each release's code registers this version.
FOREIGN = "AccountProjector"
REQUIRED_VERSION: dict[str, int] = {"v1": 1, "v2": 2, "v3": 2, "v4": 1}

# Reasons a finished rollout may give: the fixed words of kind "failure".
FINISHED_REASONS = frozenset(reason.value for reason in Reason if reason.kind is Kind.FAILURE)

fuzz_profiles.register()

STEPS = {"passes": 0, "steps": 0, "examples": 0}


def spec_for(version: str, base: Any = None, **changes: Any) -> Any:
    """spec.version set to ``version`` with its release's projectors, keeping the other fields."""
    if base is None:
        return manifest(version, RELEASES[version])
    fields = base.model_dump(by_alias=True, mode="json")
    fields.update(
        version=version,
        projectors=[{"name": n, "version": v} for n, v in RELEASES[version].items()],
        template={"spec": {"containers": [{"name": "app", "image": "blog:" + version}]}},
    )
    if fields.get("requiredProjectors"):
        fields["requiredProjectors"] = [{"name": FOREIGN, "version": REQUIRED_VERSION[version]}]
    fields.update(changes)
    return type(base).model_validate(fields)


def release_of(world: World, version: str | None) -> dict[str, int] | None:
    deployment = world.deployments.get(version) if version else None
    return dict(deployment.projectors) if deployment is not None and deployment.projectors is not None else None


def active_release(projectors: dict[str, ProjectorState]) -> dict[str, int] | None:
    """The projector versions the database shows active, when nothing is replaying or activating."""
    if any(s.replaying_version is not None or s.activating_version is not None for s in projectors.values()):
        return None
    active = {n: s.active_version for n, s in projectors.items() if s.active_version is not None}
    return active or None  # type: ignore[return-value]


def pods_ready(world: World, version: str) -> bool:
    deployment = world.deployments.get(version)
    if deployment is None:
        return False
    if deployment.replicas == 0:
        return version == world.spec.version and world.spec.replicas == 0
    return deployment.available


class Rollouts(RuleBasedStateMachine):
    # Projectors another set owns (its replays are none of this set's clean-up).
    foreign: frozenset[str] = frozenset()

    def __init__(self) -> None:
        super().__init__()
        self.world = World(manifest("v1", RELEASES["v1"], strategy={"scaleDownDelaySeconds": 30}))
        self.golive_jobs: dict[int, set[str]] = {}
        self.stale_statuses: list[dict[str, Any]] = []

    @initialize()
    def serving_v1(self) -> None:
        self.world.serving_v1(RELEASES["v1"])
        STEPS["examples"] += 1

    # ---- users edit the spec ----------------------------------------------------------------------

    @rule(version=st.sampled_from(sorted(RELEASES)))
    def edit_version(self, version: str) -> None:
        self.world.upgrade(spec_for(version, self.world.spec))
        self.one_pass(Faults())

    @rule()
    def toggle_abort(self) -> None:
        self.world.upgrade(self.world.spec.model_copy(update={"abort": not self.world.spec.abort}))
        self.one_pass(Faults())

    @rule()
    def toggle_paused(self) -> None:
        self.world.upgrade(self.world.spec.model_copy(update={"paused": not self.world.spec.paused}))
        self.one_pass(Faults())

    @rule(manual=st.booleans(), promote=st.booleans())
    def promotion(self, manual: bool, promote: bool) -> None:
        strategy = self.world.spec.strategy.model_copy(
            update={"promotion": Promotion.MANUAL if manual else Promotion.AUTOMATIC}
        )
        self.world.upgrade(
            self.world.spec.model_copy(
                update={"strategy": strategy, "promote": self.world.spec.version if promote else None}
            )
        )
        self.one_pass(Faults())

    @rule(replicas=st.sampled_from([0, 1, 2]))
    def scale(self, replicas: int) -> None:
        self.world.upgrade(self.world.spec.model_copy(update={"replicas": replicas}))
        self.one_pass(Faults())

    @rule()
    def retry(self) -> None:
        """``kubectl projectorset retry``: spec.retry bumped, a new generation."""
        self.world.upgrade(self.world.spec.model_copy(update={"retry": self.world.spec.retry + 1}))
        self.one_pass(Faults())

    # ---- the cluster and Sequent ------------------------------------------------------------------

    def running(self) -> list[str]:
        return sorted(
            name for name, job in self.world.jobs.items() if job.state is JobState.RUNNING and not job.deleting
        )

    @precondition(lambda self: bool(self.running()))
    @rule(data=st.data(), outcome=st.sampled_from(["succeed", "succeed", "fail", "hang"]))
    def job_ends(self, data: st.DataObject, outcome: str) -> None:
        name = data.draw(st.sampled_from(self.running()), label="job")
        self.world.finish_job(name, succeed=outcome == "succeed", hang=outcome == "hang")
        self.one_pass(Faults())

    @precondition(lambda self: any(self.world.jobs[n].stage == "golive" for n in self.running()))
    @rule(data=st.data())
    def golive_commits(self, data: st.DataObject) -> None:
        golives = [n for n in self.running() if self.world.jobs[n].stage == "golive"]
        self.world.commit_golive(data.draw(st.sampled_from(golives), label="golive"))
        self.one_pass(Faults())

    @precondition(lambda self: bool(self.world.jobs))
    @rule(data=st.data())
    def job_vanishes(self, data: st.DataObject) -> None:
        """A TTL policy or ``kubectl delete job``."""
        name = data.draw(st.sampled_from(sorted(self.world.jobs)), label="vanished")
        self.world.jobs.pop(name)
        self.world.runs.pop(name, None)
        self.one_pass(Faults())

    @rule(lag=st.sampled_from([0, 5, 5000]), after=st.sampled_from([0, 0, 5000]))
    def events_arrive(self, lag: int, after: int) -> None:
        self.world.lag = lag
        self.world.lag_after_catchup = after
        self.one_pass(Faults())

    @rule(down=st.booleans())
    def database_outage(self, down: bool) -> None:
        self.world.database_error = ("DatabaseUnreachable", "cannot connect to the database") if down else None
        self.one_pass(Faults())

    @rule()
    def progress(self) -> None:
        """Every running Job ends well (golive commits), then a pass: the rollout moves on."""
        for name in self.running():
            self.world.finish_job(name)
        self.one_pass(Faults())

    @rule(seconds=st.sampled_from([1, 5, 31, 600]))
    def time_passes(self, seconds: int) -> None:
        self.world.now += timedelta(seconds=seconds)
        self.one_pass(Faults())

    @rule(kind=st.sampled_from(["kept", "stale", "lost"]))
    def operator_restarts(self, kind: str) -> None:
        self.world.restart_operator()
        if kind == "lost":
            self.world.stored_status = None
        elif kind == "stale" and self.stale_statuses:
            self.world.stored_status = self.stale_statuses[0]
        self.one_pass(Faults())

    # ---- the operator -----------------------------------------------------------------------------

    @rule(
        fault=st.sampled_from(["none"] * 6 + ["observe", "action-before", "action-after", "status"]),
        index=st.integers(0, 4),
        status=st.sampled_from([409, 500]),
    )
    def operator_pass(self, fault: str, index: int, status: int) -> None:
        faults = Faults()
        if fault == "observe":
            faults.observe_fails = True
        elif fault.startswith("action"):
            faults.failing_action = index
            faults.failing_when = fault.split("-")[1]
            faults.failing_status = status
        elif fault == "status":
            faults.status_patch_lost = True
        self.one_pass(faults)

    def one_pass(self, faults: Faults, *, step: bool = True) -> PassRecord:
        """One operator pass and the invariants about it; ``step``: the pass that ends a rule."""
        STEPS["steps"] += step
        world = self.world
        if world.stored_status is not None:
            self.stale_statuses = [*self.stale_statuses[-4:], world.stored_status]
        release_before = active_release(world.projectors)
        ready_before = {v for v in world.deployments if pods_ready(world, v)}
        record = world.reconcile(faults)
        STEPS["passes"] += 1
        self.check_pass(record, release_before, ready_before)
        return record

    # ---- invariants -------------------------------------------------------------------------------

    def check_pass(self, record: PassRecord, release_before: dict[str, int] | None, ready: set[str]) -> None:
        world = self.world
        clean = record.raised is None and record.failed_action is None and world.database_error is None
        # The switch: the release the database shows active is served within one clean pass.
        release_after = active_release(world.projectors)
        if clean and release_before is not None and release_before == release_after:
            candidates = {v for v in ready if release_of(world, v) == release_before}
            if candidates:
                assert release_of(world, world.service_version) == release_before, (
                    f"the database shows {release_before} active and version(s) {sorted(candidates)} run it, "
                    f"but after a clean pass the Service selects {world.service_version} "
                    f"(release {release_of(world, world.service_version)}): writes are refused"
                )
        # golive at most once per replay.
        for name, run in world.runs.items():
            if run.stage == "golive" and run.replay_id is not None:
                self.golive_jobs.setdefault(run.replay_id, set()).add(name)
                assert len(self.golive_jobs[run.replay_id]) == 1, (
                    f"golive ran more than once for replay {run.replay_id}: {sorted(self.golive_jobs[run.replay_id])}"
                )
        if not record.status_written:
            return
        status = world.status
        # A written status tells the truth about the Service.
        if status.phase is Phase.ACTIVE:
            assert status.active_version == world.service_version, (
                f"status says Active at {status.active_version}, the Service selects {world.service_version}"
            )
        ready_condition = next((c for c in status.conditions if c.type == "Ready"), None)
        if ready_condition is not None and ready_condition.status == "True":
            assert world.service_version == world.spec.version, (
                f"Ready=True for {world.spec.version}, the Service selects {world.service_version}"
            )
        # No stage Job of an earlier rollout is taken for this one; attempts never go back.
        in_rollout = status.phase is not Phase.ACTIVE
        if in_rollout and status.target_version == world.spec.version and status.target_version is not None:
            for job in world.jobs.values():
                if job.version == status.target_version and job.attempt == status.attempt:
                    epoch = world.runs[job.name].epoch if job.name in world.runs else world.epoch
                    assert epoch == world.epoch, (
                        f"Job {job.name} of an earlier rollout of {job.version} is taken for this one "
                        f"(attempt {status.attempt})"
                    )
            # A name taken again is a Job taken again: never below an attempt whose Jobs exist.
            highest = max((j.attempt for j in world.jobs.values() if j.version == status.target_version), default=0)
            assert status.attempt >= highest, (
                f"attempt {status.attempt} of {status.target_version} while Jobs of attempt {highest} exist: "
                "the numbering went back"
            )
        self.check_finished_is_clean()

    def check_finished_is_clean(self) -> None:
        world = self.world
        status = world.status
        if status.phase not in (Phase.FAILED, Phase.ABORTED) or self.running():
            return
        aborted = next((c for c in status.conditions if c.type == "ReplayAborted"), None)
        if aborted is None or aborted.status != "True":
            return
        replay = world.replay
        assert replay is None or replay.state in ("live", "aborted"), (
            f"{status.phase} says the replay is cleared but replay_states shows {replay.state} ({replay.id})"
        )
        busy = {
            n: s
            for n, s in world.projectors.items()
            if (s.replaying_version or s.activating_version) and n not in self.foreign
        }
        assert not busy, f"{status.phase} says the replay is cleared but projector_states shows {busy}"

    # ---- when failures stop ----------------------------------------------------------------------

    @rule()
    def settle(self) -> None:
        self.settle_and_check()

    def quiet_passes(self, passes: int = 16) -> None:
        world = self.world
        world.database_error = None
        world.lag_after_catchup = 0
        for _ in range(passes):
            for name in self.running():
                if world.jobs[name].stage == "golive":
                    world.commit_golive(name)
                world.finish_job(name)
            world.now += timedelta(seconds=120)  # past any retry's backoff (at most 300 s)
            self.one_pass(Faults(), step=False)

    def settle_and_check(self) -> None:
        world = self.world
        if world.spec.paused or (
            world.spec.strategy.promotion is Promotion.MANUAL and world.spec.promote != world.spec.version
        ):
            world.upgrade(world.spec.model_copy(update={"paused": False, "promote": world.spec.version}))
        self.quiet_passes()
        status = world.status
        reason = next((c.reason for c in status.conditions if c.type == "Progressing"), None)
        if status.phase is Phase.ACTIVE and world.service_version == world.spec.version:
            assert release_is_active(world.spec, world.database_state()) or self.out_of_sync_allowed(), (
                f"Active at {world.spec.version} but the database shows {world.projectors}"
            )
            return
        assert status.phase in (Phase.FAILED, Phase.ABORTED), (
            f"failures stopped but the rollout of {world.spec.version} is stuck in {status.phase} ({reason}): "
            f"{status.message}; Service at {world.service_version}"
        )
        assert reason in FINISHED_REASONS, f"{status.phase} with reason {reason!r}"
        self.check_finished_is_clean()
        # A retry goes live.
        world.upgrade(world.spec.model_copy(update={"abort": False, "retry": world.spec.retry + 1}))
        self.quiet_passes()
        assert world.service_version == world.spec.version and world.status.phase is Phase.ACTIVE, (
            f"a retry of {world.spec.version} did not go live: {world.status.phase} "
            f"({next((c.reason for c in world.status.conditions if c.type == 'Progressing'), None)}) "
            f"{world.status.message}"
        )

    def out_of_sync_allowed(self) -> bool:
        return False

    def teardown(self) -> None:
        try:
            self.settle_and_check()
        finally:
            super().teardown()


TestRollouts = Rollouts.TestCase


class RolloutsOnASharedStore(Rollouts):
    """The same rollouts by a set whose code also registers ``FOREIGN``, which another set owns
    (``requiredProjectors``) and flips at any moment: replaying, activating, active at either
    version. Invariant: the Service never switches to a version while the database, as the pass
    read it, does not show that version's required projector active at its version (its code would
    be refused); and this set never writes the foreign projector."""

    foreign = frozenset({FOREIGN})

    def __init__(self) -> None:
        super().__init__()
        self.world = World(
            manifest(
                "v1",
                RELEASES["v1"],
                strategy={"scaleDownDelaySeconds": 30},
                requiredProjectors=[{"name": FOREIGN, "version": REQUIRED_VERSION["v1"]}],
            )
        )

    @initialize()
    def serving_v1(self) -> None:
        super().serving_v1()
        world = self.world
        world.deployments["v1"] = replace(world.deployments["v1"], required={FOREIGN: REQUIRED_VERSION["v1"]})
        world.projectors[FOREIGN] = ProjectorState(FOREIGN, REQUIRED_VERSION["v1"])

    @rule(
        state=st.sampled_from(
            [
                ProjectorState(FOREIGN, 1),
                ProjectorState(FOREIGN, 2),
                ProjectorState(FOREIGN, 1, None, 2),  # the owner replays version 2
                ProjectorState(FOREIGN, 1, 2, None),  # its golive holds version 2 activating
                ProjectorState(FOREIGN, 2, None, 1),  # it rolls back
            ]
        )
    )
    def owner_moves(self, state: ProjectorState) -> None:
        self.world.projectors[FOREIGN] = state

    def one_pass(self, faults: Faults, *, step: bool = True) -> PassRecord:
        foreign_before = self.world.projectors.get(FOREIGN)
        record = super().one_pass(faults, step=step)
        assert self.world.projectors.get(FOREIGN) == foreign_before, (
            f"the set wrote another set's projector: {foreign_before} -> {self.world.projectors.get(FOREIGN)}"
        )
        switched_to = record.service_after
        if switched_to is not None and switched_to != record.service_before:
            deployment = self.world.deployments.get(switched_to)
            needed = dict(deployment.required) if deployment is not None else {}
            seen = record.projectors_before.get(FOREIGN)
            assert FOREIGN in needed, f"switched to {switched_to}, whose release does not say what it requires"
            assert seen is not None and seen.active_version == needed[FOREIGN] and seen.activating_version is None, (
                f"switched to {switched_to} (needs {FOREIGN} {needed[FOREIGN]} active) while the database showed {seen}"
            )
        return record

    def quiet_passes(self, passes: int = 16) -> None:
        # The owner's rollout ends too: its projector lands at the version this set's code needs.
        self.world.projectors[FOREIGN] = ProjectorState(FOREIGN, REQUIRED_VERSION[self.world.spec.version])
        super().quiet_passes(passes)


TestRolloutsOnASharedStore = RolloutsOnASharedStore.TestCase


def teardown_module() -> None:
    """How much the state machine ran (shown with ``pytest -s``, as ``make fuzz`` runs it)."""
    print(f"\nstateful rollout model: {STEPS['examples']} examples, {STEPS['steps']} steps, {STEPS['passes']} passes")
