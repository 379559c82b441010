"""Prometheus metrics of the rollouts, fed by the reconcile passes.

``OperatorMetrics.observe`` is the ``Reconciler``'s observer (called at the end of every
pass); ``OperatorMetrics.timed(cluster)`` wraps the cluster adapter so that the pass start
and the end of the Service patch are measured where they happen, not guessed from the
second-resolution timestamps in the status.

Durations are what the operator observes: a phase or a replay stage ends at the pass that
first sees the next one, so their resolution is the pass interval (about a second while a
rollout runs, or a watch event sooner).
"""

from __future__ import annotations

import importlib.metadata
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from projectorset.api import Phase, ProjectorSetSpec
from projectorset.domain.cluster import Cluster, Owner
from projectorset.domain.observation import ClusterAction, ClusterView, Event, SwitchService
from projectorset.domain.rollout import Decision
from projectorset.domain.sequent import PIPELINE

# Phase and stage durations range from a second (nothing to replay) to hours (a large replay).
DURATION_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, float("inf"))
# Activation to switch should be well under a second: the old pods' writes fail meanwhile. A pass
# takes tens of milliseconds, seconds when a database is slow to answer (controller-runtime's range).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, float("inf"))
# Rollouts end here; anything else is still in progress.
TERMINAL_PHASES = (Phase.ACTIVE, Phase.FAILED, Phase.ABORTED)
REPLAY_STAGES = tuple(stage.value for stage in PIPELINE)


@dataclass
class _Seen:
    """What the last pass of one ProjectorSet showed, and since when (monotonic seconds)."""

    phase: Phase | None = None
    phase_since: float = 0.0
    phase_start_seen: bool = False
    stage: tuple[str, str] | None = None  # (stage, Job name) of the running stage Job
    stage_since: float = 0.0
    stage_start_seen: bool = False
    passes: int = 0
    pass_started: float | None = None
    switched: float | None = None
    activation_seen: float | None = None
    # What the per-set gauges show (``_SetGauges``): the replay stage and lag of a rollout in
    # progress, None when no rollout runs or the lag is unknown.
    gauge_stage: str | None = None
    lag: int | None = None
    # The reasons of ``projectorset_rollout_failures_total`` series of this set, removed with it.
    failure_reasons: set[str] = field(default_factory=set)


class OperatorMetrics:
    def __init__(
        self,
        registry: CollectorRegistry = REGISTRY,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.monotonic = monotonic
        self.wall = wall
        self._seen: dict[tuple[str, str], _Seen] = {}
        self._lock = threading.Lock()
        labels = ("namespace", "name")
        # The per-set gauges are made from ``_seen`` when Prometheus scrapes: a thousand sets would
        # otherwise hold ~15 series objects each (one per phase and stage, each with its own lock).
        registry.register(_SetGauges(self))
        # The chart's "no operator acting" alert (down, or every replica standing by in the peering)
        # needs this: passes that stopped.
        self.last_pass = Gauge(
            "projectorset_last_pass_timestamp_seconds",
            "Unix time of the last reconcile pass of this operator process (only the acting replica runs passes).",
            registry=registry,
        )
        self.phase_duration = Histogram(
            "projectorset_phase_duration_seconds",
            "Time spent in a rollout phase before the next one, as seen by the operator's passes.",
            ("phase",),
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.stage_duration = Histogram(
            "projectorset_replay_stage_duration_seconds",
            "How long a replay stage Job was seen running, from the first pass that saw it to the first "
            "that saw it finished.",
            ("stage",),
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.switch_latency = Histogram(
            "projectorset_activation_to_switch_seconds",
            "From the start of the pass that saw the release active in the database to the end of the "
            "Service selector patch.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        # As controller-runtime's reconcile_time_seconds and reconcile_errors_total: no per-set
        # label (a thousand sets would make a thousand histograms); the set is in the logs.
        self.reconcile_duration = Histogram(
            "projectorset_reconcile_duration_seconds",
            "Wall time of a reconcile pass, from reading the ProjectorSet to its last Event; result is "
            "error when the pass raised or one of its actions failed.",
            ("result",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.reconcile_errors = Counter(
            "projectorset_reconcile_errors_total",
            "Reconcile passes that raised or whose actions failed, by reason (the condition reason of the "
            "failed action, or the exception's class).",
            ("reason",),
            registry=registry,
        )
        Info(
            "projectorset_build",
            "The operator's version and the Python and Kopf it runs on (always 1).",
            registry=registry,
        ).info(build_info())
        self.failures = Counter(
            "projectorset_rollout_failures_total",
            "Rollouts that ended Failed, by the reason of their Progressing condition.",
            (*labels, "reason"),
            registry=registry,
        )
        self.warnings = Counter(
            "projectorset_warning_events_total",
            "Warning Events the operator emitted, by reason.",
            ("reason",),
            registry=registry,
        )

    def timed(self, cluster: Cluster) -> TimedCluster:
        return TimedCluster(cluster, self)

    # -- called by TimedCluster, inside a pass --

    def pass_started(self, owner: Owner) -> None:
        with self._lock:
            self._state(owner).pass_started = self.monotonic()

    def service_switched(self, owner: Owner) -> None:
        with self._lock:
            self._state(owner).switched = self.monotonic()

    # -- the Reconciler's observer, at the end of a pass --

    def observe(self, owner: Owner, decision: Decision) -> None:
        now = self.monotonic()
        status = decision.status
        key = (owner.namespace, owner.name)
        self.last_pass.set(self.wall())
        with self._lock:
            seen = self._state(owner)
            # A phase or stage already under way at this process's first pass began at an unknown
            # time: its duration is not observed.
            first_pass = seen.passes == 0
            seen.passes += 1
            if decision.activated:
                # The pass that first saw the release active: the latency starts at its beginning.
                seen.activation_seen = seen.pass_started if seen.pass_started is not None else now
            if seen.switched is not None and seen.activation_seen is not None:
                self.switch_latency.observe(max(0.0, seen.switched - seen.activation_seen))
            if seen.switched is not None:
                # Also after a restart between activation and switch: then the latency is unknown.
                seen.activation_seen = None
            seen.switched = None
            seen.pass_started = None

            if status.phase != seen.phase:
                if seen.phase is not None and seen.phase_start_seen:
                    self.phase_duration.labels(seen.phase.value).observe(now - seen.phase_since)
                seen.phase, seen.phase_since, seen.phase_start_seen = status.phase, now, not first_pass
            # Only the pass that turns a rollout Failed names the failure; it compares with the persisted
            # status, so a restarted operator never counts one twice.
            if decision.failure is not None:
                self.failures.labels(*key, decision.failure).inc()
                seen.failure_reasons.add(decision.failure)

            replay = status.replay
            # Keyed by the Job: each catch-up round is its own Job; no Job running, no stage timed.
            stage = (replay.stage or "unknown", replay.job) if replay is not None and replay.job else None
            if stage != seen.stage:
                if seen.stage is not None and seen.stage_start_seen:
                    self.stage_duration.labels(seen.stage[0]).observe(now - seen.stage_since)
                seen.stage, seen.stage_since, seen.stage_start_seen = stage, now, not first_pass
            running = replay if status.phase not in TERMINAL_PHASES else None
            seen.lag = running.lag if running is not None else None
            seen.gauge_stage = running.stage if running is not None else None

            for event in decision.events:
                if event.type == "Warning":
                    self.warnings.labels(event.reason).inc()

    def reconciled(self, seconds: float, error_reason: str | None = None) -> None:
        """A pass ended after ``seconds``: successfully, or raising or with a failed action (its reason)."""
        self.reconcile_duration.labels("success" if error_reason is None else "error").observe(seconds)
        if error_reason is not None:
            self.reconcile_errors.labels(error_reason).inc()

    def forget(self, owner: Owner) -> None:
        """A ProjectorSet is gone (or no longer this process's to run): drop its per-set series, so
        that a deleted set leaves no series behind."""
        key = (owner.namespace, owner.name)
        with self._lock:
            seen = self._seen.pop(key, None)
            for reason in seen.failure_reasons if seen is not None else ():
                self.failures.remove(*key, reason)

    def _state(self, owner: Owner) -> _Seen:
        return self._seen.setdefault((owner.namespace, owner.name), _Seen())


def build_info() -> dict[str, str]:
    """The labels of ``projectorset_build_info``: the installed package's version, Python's, Kopf's."""

    def version_of(distribution: str) -> str:
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            return "unknown"

    return {
        "version": version_of("projectorset-operator"),
        "python": platform.python_version(),
        "kopf": version_of("kopf"),
    }


class _SetGauges(Collector):
    """``projectorset_phase``, ``projectorset_replay_stage`` and ``projectorset_replay_lag_events``,
    made at each scrape from what the last pass of each set showed.

    The chart's alerts need the stage: a catch-up that does not converge is told from a long
    initial replay (whose lag grows too) by it."""

    def __init__(self, metrics: OperatorMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[GaugeMetricFamily]:
        return list(self._families())

    def collect(self) -> list[GaugeMetricFamily]:
        phase, stage, lag = self._families()
        with self.metrics._lock:
            for (namespace, name), seen in self.metrics._seen.items():
                if seen.phase is not None:
                    for known in Phase:
                        phase.add_metric([namespace, name, known.value], 1 if known is seen.phase else 0)
                if seen.gauge_stage is not None:
                    for known_stage in REPLAY_STAGES:
                        stage.add_metric([namespace, name, known_stage], 1 if known_stage == seen.gauge_stage else 0)
                if seen.lag is not None:
                    lag.add_metric([namespace, name], seen.lag)
        return [phase, stage, lag]

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        labels = ["namespace", "name"]
        return (
            GaugeMetricFamily(
                "projectorset_phase",
                "1 for the current rollout phase of each ProjectorSet, 0 for the others.",
                labels=[*labels, "phase"],
            ),
            GaugeMetricFamily(
                "projectorset_replay_stage",
                "1 for the replay stage of each ProjectorSet's rollout in progress (prepare, replay, optimize, "
                "catchup, golive), 0 for the others; absent when no rollout runs.",
                labels=[*labels, "stage"],
            ),
            GaugeMetricFamily(
                "projectorset_replay_lag_events",
                "Events not yet caught up by the running replay (absent when no replay runs).",
                labels=labels,
            ),
        )


class TimedCluster:
    """The cluster adapter, with the pass start and the Service switch timed for the metrics."""

    def __init__(self, cluster: Cluster, metrics: OperatorMetrics) -> None:
        self.cluster = cluster
        self.metrics = metrics

    def observe(self, owner: Owner, spec: ProjectorSetSpec) -> tuple[ClusterView, str | None]:
        self.metrics.pass_started(owner)  # every pass starts by observing the cluster
        return self.cluster.observe(owner, spec)

    def apply(self, owner: Owner, spec: ProjectorSetSpec, action: ClusterAction) -> None:
        self.cluster.apply(owner, spec, action)
        if isinstance(action, SwitchService):
            self.metrics.service_switched(owner)

    def forget_database_uri(self, owner: Owner, spec: ProjectorSetSpec) -> None:
        self.cluster.forget_database_uri(owner, spec)

    def patch_status(self, owner: Owner, status: dict[str, Any]) -> None:
        self.cluster.patch_status(owner, status)

    def emit(self, owner: Owner, event: Event) -> None:
        self.cluster.emit(owner, event)


# The process-wide instance the handlers use.
metrics = OperatorMetrics()
