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

The world is as hard as the real one where the example draws it (issue 17, item 4; see
rollout_world's docstring): migrations that move a schema version, a lag that grows while the
applications write, a stage's database effect ahead of its Job's end, pods that die with replacement
pods up to ``backoffLimit``, checks that take time, and Sequent master's prepare and abort.

Issue 17's invariants, checked after every pass:
- (a) the Service is on pods whose projectors (own and required) are all active in the
  database, except in the switch window: a golive committed and the Service not yet moved to it;
- (b) the serving release's migrations ran (the schema its code needs is there);
- (c) a paused or unpromoted rollout never fails by itself: it turns Failed only after something
  outside the operator failed in that rollout (a Job failed or vanished, a pod died);
- (d) no generation is lost: an edit while Failed (a retry) starts a new attempt, whatever
  pass sees it.
Today's operator breaks all four (issue 17's defects 1-7, 13): they are GATED, checked only when
``ROLLOUT_STRICT=1`` (``make fuzz`` sets it), so ``make test`` stays green while ``make fuzz``
finds the counterexamples. ``ROLLOUT_STRICT=a,c`` turns on some of them. In the shared-store
model, (a) counts this set's own projectors only: the other set's moves are random there, not a
rollout this operator runs.

Profiles (``HYPOTHESIS_PROFILE``, tests/fuzz_profiles.py): ``default`` is bounded and derandomized
for the normal suite, ``fuzz`` is the long, random run of ``make fuzz``, which prints its seed
first; ``make fuzz SEED=n`` replays that run. A failure prints the reproduction blob
(``@reproduce_failure``). Every shrunk counterexample is kept as a plain test in
tests/test_rollout_regressions.py.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import fuzz_profiles
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule
from rollout_world import EventFlow, Faults, JobPods, PassRecord, Schema, SequentQuirks, World, manifest

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

# The schema each release's code needs: v4 has v1's projectors and a migration of its own.
SCHEMA: dict[str, int] = {"v1": 1, "v2": 2, "v3": 3, "v4": 4}
MIGRATE = ["bundle", "exec", "rake", "sequent:db:migrate"]
CHECK = {"name": "rows-match", "query": "SELECT true"}

# Issue 17's invariants that today's operator breaks: only checked when ROLLOUT_STRICT names them.
GATED = ("a", "b", "c", "d")
_STRICT = os.environ.get("ROLLOUT_STRICT", "")
STRICT = frozenset(GATED if _STRICT in ("1", "all") else (n.strip() for n in _STRICT.split(",") if n.strip()))


def checked(invariant: str) -> bool:
    return invariant not in GATED or invariant in STRICT


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
        # (d): the (target, attempt) of a Failed rollout a user edited (a retry is owed), if any.
        self.retry_owed: tuple[str | None, int] | None = None
        # (a): version labels whose golive committed (the switch window is open until the Service moves).
        self.golive_landed: set[str] = set()
        self.failed_jobs: set[str] = set()
        # (c): something outside the operator failed in this rollout (a Job failed, vanished, lost a pod).
        self.disturbed = False

    def edited(self) -> None:
        """A user's edit: while Failed (not aborting), the next rollout attempt is owed."""
        status = self.world.status
        if status.phase is Phase.FAILED and not self.world.spec.abort and self.retry_owed is None:
            self.retry_owed = (status.target_version, status.attempt)

    @initialize(data=st.data())
    def serving_v1(self, data: st.DataObject) -> None:
        self.harden(data)
        self.world.serving_v1(RELEASES["v1"])
        STEPS["examples"] += 1

    def harden(self, data: st.DataObject) -> None:
        """Draw which of the real world's hardships this example has."""
        world = self.world
        replay: dict[str, Any] = {}
        if data.draw(st.booleans(), label="migrations"):
            world.schema = Schema(dict(SCHEMA))
            replay["commands"] = {"migrate": MIGRATE}
        world.check_seconds = data.draw(st.sampled_from([None, 0, 30, 600]), label="check seconds") or 0
        if data.draw(st.booleans(), label="a check"):
            replay["checks"] = [CHECK]
        if replay:
            fields = world.spec.model_dump(by_alias=True, mode="json")
            fields["replay"] = {**fields.get("replay", {}), **replay}
            world.spec = type(world.spec).model_validate(fields)
        world.flow = EventFlow(data.draw(st.sampled_from([0, 0, 1, 50]), label="events per second"))
        world.pods = JobPods(backoff_limit=data.draw(st.sampled_from([0, 1, 6]), label="backoffLimit"))
        world.quirks = SequentQuirks(
            prepare_leaves_created=data.draw(st.booleans(), label="prepare leaves created"),
            prepare_inserts_before_names=data.draw(st.booleans(), label="prepare inserts first"),
            abort_resolves_at_start=data.draw(st.booleans(), label="abort resolves at start"),
        )

    # ---- users edit the spec ----------------------------------------------------------------------

    @rule(version=st.sampled_from(sorted(RELEASES)))
    def edit_version(self, version: str) -> None:
        self.world.upgrade(spec_for(version, self.world.spec))
        self.edited()
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
        self.edited()
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

    def working(self) -> list[str]:
        """Running Jobs whose stage has not done its database work yet."""
        return [n for n in self.running() if n in self.world.runs and self.world.runs[n].effect is None]

    @precondition(lambda self: bool(self.working()))
    @rule(data=st.data())
    def stage_takes_effect(self, data: st.DataObject) -> None:
        """The stage's database work is done; its Job ends later (or its pod dies first)."""
        self.world.stage_takes_effect(data.draw(st.sampled_from(self.working()), label="effect"))
        self.one_pass(Faults())

    @precondition(lambda self: bool(self.running()))
    @rule(data=st.data())
    def pod_dies(self, data: st.DataObject) -> None:
        """Eviction, OOM, a node lost: a replacement pod, or the Job fails past backoffLimit."""
        self.world.pod_dies(data.draw(st.sampled_from(self.running()), label="pod dies"))
        self.disturbed = True
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
        self.disturbed = True
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
        self.world.advance(seconds)
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
        holding = world.spec.paused or (
            world.spec.strategy.promotion is Promotion.MANUAL and world.spec.promote != world.spec.version
        )
        phase_before = world.status.phase
        self.note_golive_commits()
        record = world.reconcile(faults)
        STEPS["passes"] += 1
        self.note_golive_commits()
        self.check_pass(record, release_before, ready_before)
        self.check_issue_17(record, holding, phase_before)
        return record

    def note_golive_commits(self) -> None:
        for name, run in self.world.runs.items():
            if run.stage == "golive" and run.committed and name in self.world.jobs:
                self.golive_landed.add(self.world.jobs[name].version)

    def served_projectors(self, version: str) -> dict[str, int] | None:
        """What the Service's pods need active: their release's projectors and required ones."""
        deployment = self.world.deployments.get(version)
        if deployment is None or deployment.projectors is None:
            return None
        return {**dict(deployment.required or {}), **dict(deployment.projectors)}

    def check_issue_17(self, record: PassRecord, holding: bool, phase_before: Phase | None) -> None:
        world = self.world
        served = world.service_version
        # (a) THE invariant: the Service's pods can write, except in golive's switch window.
        if checked("a") and served is not None:
            self.golive_landed.discard(served)
            needed = self.served_projectors(served)
            if needed is not None:
                inactive = {
                    n: v
                    for n, v in needed.items()
                    if world.projectors.get(n) is None or world.projectors[n].active_version != v
                }
                window = any(release_of(world, v) == active_release(world.projectors) for v in self.golive_landed)
                assert not inactive or window, (
                    f"the Service selects {served}, whose pods need {inactive} active, but the database "
                    f"shows {[world.projectors.get(n) for n in inactive]}: its writes are refused"
                )
        # (b) The serving release's migrations ran.
        if checked("b") and world.schema is not None and served is not None:
            assert world.schema.serves(served), (
                f"the Service selects {served}, whose code needs schema {world.schema.needs.get(served)}, "
                f"but the database's migrations are at {world.schema.version}"
            )
        # (c) Paused or awaiting promotion, a rollout fails only when something failed.
        failed_now = {n for n, j in world.jobs.items() if j.state is JobState.FAILED}
        self.disturbed = self.disturbed or bool(failed_now - self.failed_jobs)
        self.failed_jobs = failed_now
        if checked("c") and holding and phase_before is not Phase.FAILED and world.status.phase is Phase.FAILED:
            reason = next((c.reason for c in world.status.conditions if c.type == "Progressing"), None)
            assert self.disturbed, (
                f"paused or awaiting promotion, the rollout of {world.spec.version} failed by itself ({reason}): "
                f"{world.status.message}"
            )
        # (d) bookkeeping: a new attempt (or target) pays a retry owed.
        status = world.status
        if status.phase is Phase.ACTIVE:
            self.disturbed = False
        if self.retry_owed is not None and (
            status.phase is not Phase.FAILED or (status.target_version, status.attempt) != self.retry_owed
        ):
            self.retry_owed = None

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
        world.flow.per_second = 0  # writes calm down: a catch-up can converge
        for _ in range(passes):
            for name in self.running():
                if world.jobs[name].stage == "golive":
                    world.commit_golive(name)
                world.finish_job(name)
            world.advance(120)  # past any retry's backoff (at most 300 s)
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
        # (d) An edit made while Failed was acted on: never still Failed at the same attempt.
        if checked("d") and self.retry_owed is not None:
            assert (status.phase, (status.target_version, status.attempt)) != (Phase.FAILED, self.retry_owed), (
                f"an edit made while {self.retry_owed[0]} attempt {self.retry_owed[1]} was Failed was never acted "
                f"on: generation {world.generation} observed, still Failed ({reason}): {status.message}"
            )
        self.retry_owed = None
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

    def served_projectors(self, version: str) -> dict[str, int] | None:
        needed = super().served_projectors(version)
        return None if needed is None else {n: v for n, v in needed.items() if n != FOREIGN}

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

    @initialize(data=st.data())
    def serving_v1(self, data: st.DataObject) -> None:
        super().serving_v1(data)
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
