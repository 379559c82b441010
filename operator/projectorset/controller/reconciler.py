"""One reconcile pass: observe the cluster and the database, decide, act, report.

Knows neither Kopf nor the Kubernetes client: the cluster is reached through the
``cluster.Cluster`` protocol (``kube.KubernetesCluster`` in production, an in-memory fake
in unit tests), the database through ``SequentDatabase``. See docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import math
import os
import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, TypeVar, assert_never

from pydantic import ValidationError

from projectorset.adapters.database import WATCH_LOCK_TIMEOUT_MS, DatabaseError, ProjectorStatesBusy, SequentDatabase
from projectorset.adapters.pools import PoolSet, store_fingerprint, target_fingerprint
from projectorset.api import CheckResult, Phase, ProjectorSetSpec, ProjectorSetStatus
from projectorset.api.conditions import ConditionType, Kind, Reason, ReportedError, set_condition
from projectorset.domain.backoff import Backoff, RandomSource
from projectorset.domain.cluster import Cluster, ClusterError, Owner, ServiceRefused
from projectorset.domain.observation import (
    Activate,
    ClearReplaying,
    ClusterView,
    DatabaseAction,
    DatabaseView,
    Deactivate,
    Event,
    RegisterReplaying,
    RunChecks,
    SwitchService,
)
from projectorset.domain.ownership import ProjectorIndex, SetClaim, claim_of, owner_key
from projectorset.domain.planning import plan_upgrade
from projectorset.domain.resources import pod_selector
from projectorset.domain.rollout import Decision, decide, owned_projectors, release_is_live, with_check_results

log = logging.getLogger(__name__)

# After a failed action, the next pass comes sooner than an idle one but not in a tight loop.
ACTION_FAILURE_RETRY_SECONDS = 5.0
# The longer actions keep failing, the longer the wait's ceiling, up to a minute (full jitter below it).
ACTION_FAILURE_BACKOFF = Backoff(ACTION_FAILURE_RETRY_SECONDS, 60.0)
# Added to the jittered wait: never a pass at once after a failed action.
ACTION_FAILURE_MIN_RETRY_SECONDS = 0.5
# A set waiting for another set's replay looks again this often; one held by an ownership clash less often.
QUEUED_RETRY_SECONDS = 10.0
OWNERSHIP_RETRY_SECONDS = 60.0
# Refusals that only a person can lift: an Event when they start (not one per pass), and a slow retry.
REPORTED_ONCE = {
    Reason.SERVICE_OWNED_BY_OTHER: ServiceRefused.retry_after,
    Reason.SERVICE_NOT_CLAIMED: ServiceRefused.retry_after,
}
# Threads for passes: a pass waiting on a silent database (up to its connect timeouts) holds one,
# so this many minus one unreachable databases never delay another ProjectorSet's pass.
PASS_WORKERS = int(os.environ.get("PROJECTORSET_PASS_WORKERS", "32"))
T = TypeVar("T")


class PassRunner:
    """Runs passes (and the activation watch's reads) on a dedicated, bounded thread pool.

    Not asyncio's default executor (about six threads on two cores, shared with every other
    ``to_thread``): there, six ProjectorSets whose database never answers would hold every
    thread, and every other ProjectorSet's pass, Service switches included, would wait behind
    them. Each ProjectorSet runs one pass at a time, so it holds at most one worker."""

    def __init__(self, workers: int = PASS_WORKERS) -> None:
        self.workers = workers
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pass")

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        # In the caller's context (as asyncio.to_thread does): what it set, such as the set a log
        # record is about, holds in the pass's thread too.
        context = contextvars.copy_context()
        return await loop.run_in_executor(self._executor, context.run, functools.partial(function, *args))

    def shutdown(self, *, wait: bool = False) -> None:
        """Start no queued pass; with ``wait``, return once the running ones have ended."""
        self._executor.shutdown(wait=wait, cancel_futures=True)


class DatabaseRegistry:
    """Each ProjectorSet's database, over connection pools shared per database target.

    Sets on one database share its pool (bounded, and closed when idle: ``pools.PoolSet``);
    the schema only selects the tables. A rotated Secret (another URI) moves a set to
    another pool, and a pool no set uses any more is closed.
    """

    def __init__(self, pools: PoolSet | None = None) -> None:
        self.pools = pools or PoolSet()
        self._databases: dict[tuple[str, str], SequentDatabase] = {}  # (target fingerprint, schema)
        self._sets: dict[tuple[str, str], tuple[str, str]] = {}  # (namespace, name) -> the key above
        self._lock = threading.Lock()

    def get(self, owner: Owner, uri: str, schema: str) -> SequentDatabase:
        key = (target_fingerprint(uri), schema)
        with self._lock:
            database = self._databases.get(key)
            if database is None:
                # Raises InvalidDatabaseURI before any pool is made for a URI that cannot work.
                database = SequentDatabase(uri, schema, pool=self.pools.get(uri))
                self._databases[key] = database
            previous = self._sets.get((owner.namespace, owner.name))
            self._sets[(owner.namespace, owner.name)] = key
            unused = self._drop_unused(previous)
        if unused is not None:
            self.pools.discard(unused)
        return database

    def forget(self, owner: Owner) -> None:
        with self._lock:
            unused = self._drop_unused(self._sets.pop((owner.namespace, owner.name), None))
        if unused is not None:
            self.pools.discard(unused)

    def close(self) -> int:
        """Close every pool (the operator is exiting); returns how many were open."""
        with self._lock:
            self._databases.clear()
            self._sets.clear()
        return self.pools.close()

    def _drop_unused(self, key: tuple[str, str] | None) -> str | None:
        """The target fingerprint to close when no set uses ``key``'s target any more."""
        if key is None:
            return None
        in_use = set(self._sets.values())
        if key not in in_use:
            self._databases.pop(key, None)
        fingerprint = key[0]
        if any(used[0] == fingerprint for used in in_use):
            return None
        return fingerprint


@dataclass(frozen=True)
class FailedAction:
    """Why an action of the pass failed, as the ActionsApplied condition and a Warning Event say it."""

    reason: Reason
    message: str


@dataclass(frozen=True)
class PassResult:
    decision: Decision | None
    requeue_after: float | None
    action_error: str | None = None
    # Why an action failed (the ReportedError's reason), for the reconcile error metrics.
    error_reason: Reason | None = None

    @property
    def await_activation(self) -> bool:
        return self.decision is not None and self.decision.await_activation


class Reconciler:
    def __init__(
        self,
        cluster: Cluster,
        databases: DatabaseRegistry | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        observer: Callable[[Owner, Decision], None] | None = None,
        wake: Callable[[str, str], None] | None = None,
    ) -> None:
        self.cluster = cluster
        # Wakes another ProjectorSet's loop (namespace, name) from a pass's thread; None: nobody to wake.
        self.wake = wake
        self.databases = databases or DatabaseRegistry()
        self.clock = clock
        self.observer = observer
        self.index = ProjectorIndex()
        # The database and spec of a ProjectorSet whose last pass awaits golive, for the activation
        # watch; a set at rest has none (a spec is ~7 KiB: a thousand sets would keep 7 MiB).
        self._gates: dict[tuple[str, str], tuple[SequentDatabase, ProjectorSetSpec, set[str] | None]] = {}
        self._gates_lock = threading.Lock()

    def reconcile(self, body: dict[str, Any]) -> PassResult:
        result = self._reconcile(body)
        if not result.await_activation:
            metadata = body["metadata"]
            self._forget_gate(metadata["namespace"], metadata["name"])
        return result

    def _forget_gate(self, namespace: str, name: str) -> None:
        with self._gates_lock:
            self._gates.pop((namespace, name), None)

    def _reconcile(self, body: dict[str, Any]) -> PassResult:
        metadata = body["metadata"]
        owner = Owner(metadata["name"], metadata["namespace"], metadata["uid"])
        generation = int(metadata.get("generation", 1))
        previous = _parse_status(body.get("status"), self.clock())
        try:
            spec = ProjectorSetSpec.model_validate(body.get("spec") or {})
        except ValidationError as error:
            # The CRD schema rejects most of this; a CRD installed without it must not crash us.
            return self._invalid_spec(owner, generation, previous, error)

        view, uri = self.cluster.observe(owner, spec)
        claim = self._claim(body, spec, uri)
        if claim is not None and spec.required_versions:
            view = replace(view, projector_owners=self.index.owners(claim, spec.required_versions))
        clash = self._ownership_clash(claim)
        if clash is not None:
            return self._hold(owner, generation, previous, Reason.PROJECTORS_OWNED_BY_OTHER, clash)
        database = self._database_view(owner, spec, view, uri)
        database, queued_behind = self._foreign_replay(claim, spec, view, database)
        if queued_behind is not None:
            return self._hold(owner, generation, previous, Reason.REPLAY_QUEUED, queued_behind)
        decision = decide(spec, generation, previous, view, database, self.clock())
        return self._act_and_report(owner, spec, uri, claim, previous, view, decision)

    def _act_and_report(
        self,
        owner: Owner,
        spec: ProjectorSetSpec,
        uri: str | None,
        claim: SetClaim | None,
        previous: ProjectorSetStatus,
        view: ClusterView,
        decision: Decision,
    ) -> PassResult:
        """Carry the decision's actions out, write the status and the Events that say what happened."""
        checked: list[CheckResult] = []
        done, failed = self._carry_out(
            owner, spec, uri, decision, checked, first_install=previous.active_version is None
        )
        if decision.store_changed and claim is not None:
            self._wake_requiring(claim)
        status = self._status_to_write(previous, decision, done, failed, checked)
        if failed is not None and (
            failed.reason not in REPORTED_ONCE or _condition_changed(previous, status, ConditionType.ACTIONS_APPLIED)
        ):
            self._emit(owner, Event("Warning", failed.reason, failed.message))
        self._patch_status(owner, previous, _with_scale(status, owner, view))
        if failed is None:
            # The decision's Events tell what its actions did: only true once they all succeeded.
            for event in decision.events:
                self._emit(owner, event)
        if self.observer is not None:
            self.observer(owner, decision)
        requeue = _requeue_after(decision, failed, status, self.clock())
        if failed is None:
            return PassResult(decision, requeue)
        return PassResult(decision, requeue, failed.message, failed.reason)

    def _status_to_write(
        self,
        previous: ProjectorSetStatus,
        decision: Decision,
        done: int,
        failed: FailedAction | None,
        checked: list[CheckResult],
    ) -> ProjectorSetStatus:
        """The decision's status with ActionsApplied, or, when an action failed, what is still true.
        Check results go into it either way: the next pass decides from them."""
        if failed is None:
            status = with_check_results(decision.status, checked)
            message = "every action of the last pass succeeded"
            return _with_condition(status, ConditionType.ACTIONS_APPLIED, True, Reason.APPLIED, message, self.clock())
        status = with_check_results(_status_after_failed_action(previous, decision, done, self.clock()), checked)
        return _with_condition(
            status, ConditionType.ACTIONS_APPLIED, False, failed.reason, failed.message, self.clock()
        )

    def _ownership_clash(self, claim: SetClaim | None) -> str | None:
        """Why this set does nothing: a set created earlier lists some of its projectors on the same event store."""
        clash = self.index.earlier_overlap(claim) if claim is not None else None
        if clash is None:
            return None
        other, shared = clash
        return (
            f"ProjectorSet {other.owner} (created earlier) lists {', '.join(sorted(shared))} on the same "
            "event store: this set does nothing until one of the two stops listing them"
        )

    # -- sets sharing an event store --

    def observe_set(self, body: dict[str, Any]) -> None:
        """A ProjectorSet as the watch saw it: the index knows every set before its first pass."""
        claim = claim_of(body)
        if claim is not None:
            self.index.record(claim)

    def forget_set(self, namespace: str, name: str) -> None:
        self.index.forget(owner_key(namespace, name))
        self._forget_gate(namespace, name)

    def _claim(self, body: dict[str, Any], spec: ProjectorSetSpec, uri: str | None) -> SetClaim | None:
        store = store_fingerprint(uri, spec.database.event_store_schema) if uri is not None else None
        claim = claim_of(body, store)
        if claim is not None:
            self.index.record(claim)
        return claim

    def _wake_requiring(self, claim: SetClaim) -> None:
        """This pass saw (or made) this set's projectors live: the sets on its event store that
        require one of them may switch now, without waiting for their next poll."""
        if self.wake is None:
            return
        for other in self.index.requiring(claim):
            namespace, _, name = other.partition("/")
            self.wake(namespace, name)

    def _foreign_replay(
        self, claim: SetClaim | None, spec: ProjectorSetSpec, view: ClusterView, database: DatabaseView
    ) -> tuple[DatabaseView, str | None]:
        """Hide a replay of projectors this set never listed (another set's, on a shared event store),
        and say whom to wait for when this set needs a replay of its own meanwhile."""
        state = database.state
        if state is None or state.replay is None:
            return database, None
        mine = set(spec.projector_versions)
        for deployment in view.deployments.values():
            mine.update(deployment.projectors or {})
        if mine & set(state.replay.projectors):
            return database, None
        without = replace(state, replay=None, replay_lag=None)
        if state.replay.in_progress and plan_upgrade(spec.projector_versions, without).needs_replay:
            others = self.index.listing(claim, state.replay.projectors) if claim is not None else []
            whose = f"ProjectorSet {', '.join(others)}" if others else "another application"
            return replace(database, state=without), (
                f"waiting for the replay of {whose} ({', '.join(state.replay.projectors)}) on this event "
                "store to end: Sequent runs one replay at a time; this rollout then starts by itself"
            )
        return replace(database, state=without), None

    def _hold(
        self, owner: Owner, generation: int, previous: ProjectorSetStatus, reason: Reason, message: str
    ) -> PassResult:
        """A pass that does nothing but say why: reported once, checked again a little later. The
        observed generation stays: the pass that acts on this spec is still to come."""
        status = previous.model_copy(update={"message": message})
        moving = reason.kind is Kind.STEP
        status = _with_condition(status, ConditionType.PROGRESSING, moving, reason, message, self.clock())
        if _condition_changed(previous, status, ConditionType.PROGRESSING):
            self._emit(owner, Event("Normal" if moving else "Warning", reason, message))
        self._patch_status(owner, previous, status)
        return PassResult(None, QUEUED_RETRY_SECONDS if moving else OWNERSHIP_RETRY_SECONDS, message)

    # -- steps --

    def _database_view(self, owner: Owner, spec: ProjectorSetSpec, view: ClusterView, uri: str | None) -> DatabaseView:
        if uri is None:
            return DatabaseView(
                error_reason=Reason.SECRET_NOT_FOUND, error_message=view.secret_problem or "no database URI"
            )
        try:
            database = self.databases.get(owner, uri, spec.database.event_store_schema)
            with self._gates_lock:
                self._gates[(owner.namespace, owner.name)] = (database, spec, owned_projectors(view))
            return DatabaseView(state=database.read_state())
        except DatabaseError as error:
            # Perhaps the Secret changed (new credentials, another host): read it again next pass.
            self.cluster.forget_database_uri(owner, spec)
            return DatabaseView(error_reason=error.reason, error_message=error.message)

    def activation_seen(self, namespace: str, name: str) -> bool:
        """One cheap read of projector_states: does the database now show the release active?"""
        with self._gates_lock:
            gate = self._gates.get((namespace, name))
        if gate is None:
            return True  # nothing to watch: let a full pass decide
        database, spec, owned = gate
        try:
            # Live, not yet active: projectors the release removed are deactivated by the pass after golive.
            states = database.read_projector_states(lock_timeout_ms=WATCH_LOCK_TIMEOUT_MS)
            return release_is_live(spec, states, owned)
        except ProjectorStatesBusy:
            return False  # golive still holds the table: the next read is granted at its commit
        except DatabaseError:
            return True

    def _carry_out(
        self,
        owner: Owner,
        spec: ProjectorSetSpec,
        uri: str | None,
        decision: Decision,
        checked: list[CheckResult],
        *,
        first_install: bool,
    ) -> tuple[int, FailedAction | None]:
        """Run the actions in order, stopping at the first failure: the next pass re-decides
        from what the cluster and the database then show. Returns how many succeeded."""
        for done, action in enumerate(decision.actions):
            if isinstance(action, SwitchService):
                action = replace(action, first_install=first_install)
            try:
                if isinstance(action, DatabaseAction):
                    # decide() asks for database actions only after it read the database, so a URI exists.
                    assert uri is not None
                    self._database_action(owner, spec, uri, action, checked)
                else:
                    self.cluster.apply(owner, spec, action)
            except ReportedError as error:
                log.warning("%s/%s: %s failed: %s", owner.namespace, owner.name, type(action).__name__, error.message)
                return done, FailedAction(error.reason, f"{type(action).__name__}: {error.message}")
        return len(decision.actions), None

    def _database_action(
        self, owner: Owner, spec: ProjectorSetSpec, uri: str, action: DatabaseAction, checked: list[CheckResult]
    ) -> None:
        database = self.databases.get(owner, uri, spec.database.event_store_schema)
        match action:
            case RegisterReplaying(versions=versions):
                database.register_replaying(versions)
            case Activate(versions=versions, deactivate=removed):
                database.activate(versions, removed)
            case Deactivate(names=names):
                database.deactivate(names)
            case ClearReplaying(names=names):
                database.abort(names)
            case RunChecks(version=version, attempt=attempt, checks=checks):
                outcomes = database.run_checks(checks)
                checked_at = self.clock()
                digests = {check.name: check.digest for check in checks}
                checked.extend(
                    CheckResult(
                        name=outcome.name,
                        passed=outcome.passed,
                        result=outcome.result,
                        checked_at=checked_at,
                        version=version,
                        attempt=attempt,
                        digest=digests[outcome.name],
                    )
                    for outcome in outcomes
                )
                for outcome in outcomes:
                    log.info(
                        "%s/%s: check %s %s: %s",
                        owner.namespace,
                        owner.name,
                        outcome.name,
                        "passed" if outcome.passed else "failed",
                        outcome.result,
                    )
            case _:
                assert_never(action)

    def _invalid_spec(
        self, owner: Owner, generation: int, previous: ProjectorSetStatus, error: ValidationError
    ) -> PassResult:
        problems = "; ".join(
            f"spec.{'.'.join(str(p) for p in item['loc'])}: {item['msg']}" for item in error.errors(include_url=False)
        )
        status = previous.model_copy(update={"message": f"invalid spec: {problems}", "observed_generation": generation})
        status = _with_condition(status, ConditionType.PROGRESSING, False, Reason.INVALID_SPEC, problems, self.clock())
        self._patch_status(owner, previous, status)
        if previous.message != status.message:
            self._emit(owner, Event("Warning", Reason.INVALID_SPEC, problems))
        return PassResult(None, None, problems)

    def _patch_status(self, owner: Owner, previous: ProjectorSetStatus, status: ProjectorSetStatus) -> None:
        if status == previous and not previous.needs_rewrite:
            return
        try:
            self.cluster.patch_status(owner, status.model_dump(by_alias=True, mode="json"))
        except ClusterError as error:
            log.warning("%s/%s: status not written: %s", owner.namespace, owner.name, error.message)

    def _emit(self, owner: Owner, event: Event) -> None:
        log.info("%s/%s: %s %s: %s", owner.namespace, owner.name, event.type, event.reason, event.message)
        try:
            self.cluster.emit(owner, event)
        except ClusterError as error:
            log.warning("%s/%s: Event not written: %s", owner.namespace, owner.name, error.message)


def _requeue_after(
    decision: Decision,
    failed: FailedAction | None,
    status: ProjectorSetStatus,
    now: datetime,
    source: RandomSource = random,
) -> float | None:
    """After a failed action the next pass comes sooner (or, for a refusal only a person can lift, later)."""
    if failed is None:
        return decision.requeue_after
    retry = REPORTED_ONCE.get(failed.reason)
    if retry is None:
        retry = action_retry_delay(status, now, source)
    return min(decision.requeue_after or retry, retry)


def action_retry_delay(status: ProjectorSetStatus, now: datetime, source: RandomSource = random) -> float:
    """The wait before the pass after a failed action: full jitter under a ceiling that doubles
    from 5 s to 60 s the longer actions have been failing (since ActionsApplied turned False), so
    that after an API outage a thousand sets do not all come back together every 5 s."""
    applied = next((c for c in status.conditions if c.type == ConditionType.ACTIONS_APPLIED), None)
    since = applied.last_transition_time if applied is not None and applied.status == "False" else None
    failing = max(0.0, (now - since).total_seconds()) if since is not None else 0.0
    attempt = int(math.log2(1 + failing / ACTION_FAILURE_RETRY_SECONDS))
    return ACTION_FAILURE_MIN_RETRY_SECONDS + ACTION_FAILURE_BACKOFF.delay(attempt, source)


def _condition_changed(previous: ProjectorSetStatus, status: ProjectorSetStatus, type_: ConditionType) -> bool:
    def of(which: ProjectorSetStatus) -> tuple[str, str, str] | None:
        found = next((c for c in which.conditions if c.type == type_), None)
        return None if found is None else (found.status, found.reason, found.message)

    return of(previous) != of(status)


def _status_after_failed_action(
    previous: ProjectorSetStatus, decision: Decision, done: int, now: datetime
) -> ProjectorSetStatus:
    """The status to write when an action failed: the decision's status assumed every action
    succeeded, so it may claim what did not happen (Active after a Service patch that failed).

    Once the Service patch succeeded, the decision's status tells the truth about it. Before
    that, the previous status still does, unless the failed action was the Service patch
    itself: a timeout leaves the selector unknown until the next pass reads it."""
    switch_at = next((i for i, action in enumerate(decision.actions) if isinstance(action, SwitchService)), None)
    if switch_at is not None and switch_at < done:
        return decision.status
    if switch_at != done:
        return previous
    status = previous.model_copy(
        update={
            "phase": Phase.SWITCHING,
            "message": f"switching the Service to version {decision.status.active_version}",
        }
    )
    return _with_condition(
        status, ConditionType.READY, False, Reason.SERVICE_PATCH_FAILED, "the Service patch failed; retrying", now
    )


def _parse_status(raw: dict[str, Any] | None, now: datetime) -> ProjectorSetStatus:
    if not raw:
        return ProjectorSetStatus()
    try:
        # ``now``: for a condition an older operator wrote without lastTransitionTime.
        return ProjectorSetStatus.model_validate(raw, context={"now": now})
    except ValidationError:
        # A status written by another operator version: start from what is observable.
        log.warning("ignoring a status this operator cannot read")
        return ProjectorSetStatus()


def _with_scale(status: ProjectorSetStatus, owner: Owner, view: ClusterView) -> ProjectorSetStatus:
    """status.replicas and status.selector, read through the CRD's scale subresource (kubectl scale, a
    HorizontalPodAutoscaler): the pods of the version the Service selects; none before one serves."""
    serving = status.active_version
    deployment = view.deployments.get(serving) if serving else None
    return status.model_copy(
        update={
            "replicas": deployment.current_replicas if deployment is not None else 0,
            "selector": pod_selector(owner, serving) if serving else None,
        }
    )


def _with_condition(
    status: ProjectorSetStatus, type_: ConditionType, value: bool, reason: Reason, message: str, now: datetime
) -> ProjectorSetStatus:
    conditions = set_condition(status.conditions, type_, value, reason, message, status.observed_generation, now)
    return status.model_copy(update={"conditions": conditions})
