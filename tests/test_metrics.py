"""The operator's Prometheus metrics: pass by pass over a fake clock, then a real upgrade
(v1 -> v2 of the sample application, real PostgreSQL and replay stages) over the fake API."""

from __future__ import annotations

import importlib.metadata
import platform
import socket
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kopf
import pytest
from fake_cluster import FakeCluster
from prometheus_client import CollectorRegistry, generate_latest, start_http_server

from projectorset.api import Condition, Phase, ProjectorSetStatus, ReplayStatus
from projectorset.api.conditions import Reason
from projectorset.controller.reconciler import Reconciler
from projectorset.domain.cluster import Owner
from projectorset.domain.observation import Event, SwitchService
from projectorset.domain.rollout import Decision
from projectorset.runtime import main
from projectorset.runtime.metrics import OperatorMetrics
from support.harness import Harness, serving

OWNER = Owner("blog", "shop", "uid-1")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def decision(
    phase: Phase,
    *events: Event,
    replay: ReplayStatus | None = None,
    reason: str = "Progressing",
    activated: bool = False,
    failure: Reason | None = None,
) -> Decision:
    conditions = [
        Condition(type="Progressing", status="True", reason=reason, message="", last_transition_time=datetime.now(UTC))
    ]
    status = ProjectorSetStatus(phase=phase, replay=replay, conditions=conditions)
    return Decision((), status, events, None, activated=activated, failure=failure)


def sample(registry: CollectorRegistry, metric: str, **labels: str) -> float | None:
    return registry.get_sample_value(metric, labels)


@pytest.fixture
def setup() -> tuple[OperatorMetrics, CollectorRegistry, Clock]:
    registry = CollectorRegistry()
    clock = Clock()
    return OperatorMetrics(registry, monotonic=clock), registry, clock


def test_phase_gauge_marks_only_the_current_phase(setup: tuple[OperatorMetrics, CollectorRegistry, Clock]) -> None:
    metrics, registry, _ = setup
    metrics.observe(OWNER, decision(Phase.REPLAYING))
    labels = {"namespace": "shop", "name": "blog"}
    assert sample(registry, "projectorset_phase", phase="Replaying", **labels) == 1
    assert sample(registry, "projectorset_phase", phase="Active", **labels) == 0
    metrics.observe(OWNER, decision(Phase.ACTIVE))
    assert sample(registry, "projectorset_phase", phase="Replaying", **labels) == 0
    assert sample(registry, "projectorset_phase", phase="Active", **labels) == 1

    metrics.forget(OWNER)
    assert sample(registry, "projectorset_phase", phase="Active", **labels) is None


def test_replay_stage_and_last_pass_feed_the_charts_alerts(
    setup: tuple[OperatorMetrics, CollectorRegistry, Clock],
) -> None:
    metrics, registry, _ = setup
    labels = {"namespace": "shop", "name": "blog"}
    assert sample(registry, "projectorset_last_pass_timestamp_seconds") == 0  # a standby replica: no pass yet
    before = time.time()
    metrics.observe(OWNER, decision(Phase.REPLAYING, replay=ReplayStatus(stage="catchup", lag=5000, job="j")))
    assert sample(registry, "projectorset_replay_stage", stage="catchup", **labels) == 1
    assert sample(registry, "projectorset_replay_stage", stage="replay", **labels) == 0
    assert (sample(registry, "projectorset_last_pass_timestamp_seconds") or 0) >= before
    # Between catch-up rounds no Job runs, but the stage is still catch-up.
    metrics.observe(OWNER, decision(Phase.REPLAYING, replay=ReplayStatus(stage="catchup", lag=4000)))
    assert sample(registry, "projectorset_replay_stage", stage="catchup", **labels) == 1
    metrics.observe(OWNER, decision(Phase.ACTIVE, replay=ReplayStatus(stage="golive", state="live")))
    assert sample(registry, "projectorset_replay_stage", stage="golive", **labels) is None
    metrics.observe(OWNER, decision(Phase.REPLAYING, replay=ReplayStatus(stage="prepare")))
    metrics.forget(OWNER)
    assert sample(registry, "projectorset_replay_stage", stage="prepare", **labels) is None


def test_phase_and_stage_durations_are_timed_only_when_their_start_was_seen(
    setup: tuple[OperatorMetrics, CollectorRegistry, Clock],
) -> None:
    metrics, registry, clock = setup
    # First pass of this process: the replay Job was already running, since an unknown time.
    metrics.observe(OWNER, decision(Phase.REPLAYING, replay=ReplayStatus(stage="replay", job="j-replay", lag=500)))
    assert sample(registry, "projectorset_replay_lag_events", namespace="shop", name="blog") == 500
    clock.now += 30
    metrics.observe(OWNER, decision(Phase.REPLAYING, replay=ReplayStatus(stage="optimize", job="j-optimize", lag=40)))
    assert sample(registry, "projectorset_replay_stage_duration_seconds_count", stage="replay") is None
    clock.now += 12
    metrics.observe(OWNER, decision(Phase.REPLAYING, replay=ReplayStatus(stage="catchup", job="j-c1", lag=7)))
    clock.now += 3
    metrics.observe(OWNER, decision(Phase.REPLAYING, replay=ReplayStatus(stage="catchup", job="j-c2", lag=2)))
    clock.now += 2
    # The Job ended; the stage name stays in the status but nothing runs.
    metrics.observe(OWNER, decision(Phase.ACTIVATING, replay=ReplayStatus(stage="catchup", lag=0)))

    assert sample(registry, "projectorset_replay_stage_duration_seconds_count", stage="optimize") == 1
    assert sample(registry, "projectorset_replay_stage_duration_seconds_sum", stage="optimize") == 12
    # Two catch-up rounds, each its own Job.
    assert sample(registry, "projectorset_replay_stage_duration_seconds_count", stage="catchup") == 2
    assert sample(registry, "projectorset_replay_stage_duration_seconds_sum", stage="catchup") == 5
    # Replaying began before this process: not timed.
    assert sample(registry, "projectorset_phase_duration_seconds_count", phase="Replaying") is None
    clock.now += 4
    metrics.observe(OWNER, decision(Phase.ACTIVE))
    assert sample(registry, "projectorset_phase_duration_seconds_sum", phase="Activating") == 4
    assert sample(registry, "projectorset_replay_lag_events", namespace="shop", name="blog") is None


def test_switch_latency_runs_from_the_pass_that_saw_activation_to_the_service_patch(
    setup: tuple[OperatorMetrics, CollectorRegistry, Clock],
) -> None:
    metrics, registry, clock = setup

    class Switcher:
        def apply(self, owner: Owner, spec: Any, action: Any) -> None:
            clock.now += 0.02  # the PATCH of the Service takes 20 ms

    cluster = metrics.timed(Switcher())
    # The same pass sees the database active and switches.
    metrics.pass_started(OWNER)
    clock.now += 0.01  # observing the cluster and reading projector_states
    cluster.apply(OWNER, None, SwitchService("v2"))
    clock.now += 0.5  # status and Events: after the switch, not counted
    metrics.observe(
        OWNER,
        decision(
            Phase.ACTIVE,
            Event("Normal", Reason.ACTIVATED, ""),
            Event("Normal", Reason.SERVICE_SWITCHED, ""),
            activated=True,
        ),
    )
    assert sample(registry, "projectorset_activation_to_switch_seconds_count") == 1
    assert sample(registry, "projectorset_activation_to_switch_seconds_sum") == pytest.approx(0.03)

    # Activated, but the new pods are not available yet: switched two passes later.
    metrics.pass_started(OWNER)
    clock.now += 0.01
    metrics.observe(OWNER, decision(Phase.SWITCHING, Event("Normal", Reason.ACTIVATED, ""), activated=True))
    clock.now += 2
    metrics.pass_started(OWNER)
    metrics.observe(OWNER, decision(Phase.SWITCHING))
    clock.now += 1
    metrics.pass_started(OWNER)
    cluster.apply(OWNER, None, SwitchService("v3"))
    metrics.observe(OWNER, decision(Phase.ACTIVE, Event("Normal", Reason.SERVICE_SWITCHED, "")))
    assert sample(registry, "projectorset_activation_to_switch_seconds_count") == 2
    assert sample(registry, "projectorset_activation_to_switch_seconds_sum") == pytest.approx(0.03 + 3.03)

    # A switch whose activation this process never saw (it restarted meanwhile) is not timed.
    metrics.pass_started(OWNER)
    cluster.apply(OWNER, None, SwitchService("v4"))
    metrics.observe(OWNER, decision(Phase.ACTIVE, Event("Normal", Reason.SERVICE_SWITCHED, "")))
    assert sample(registry, "projectorset_activation_to_switch_seconds_count") == 2


def test_failures_count_once_by_reason(setup: tuple[OperatorMetrics, CollectorRegistry, Clock]) -> None:
    metrics, registry, _ = setup
    failed = Event("Warning", Reason.STAGE_FAILED, "the optimize Job failed")
    metrics.observe(OWNER, decision(Phase.FAILED, failed, reason="StageFailed", failure=Reason.STAGE_FAILED))
    # Later passes of the same failure emit no Event again (the persisted status already says it).
    metrics.observe(OWNER, decision(Phase.FAILED, reason="StageFailed"))
    labels = {"namespace": "shop", "name": "blog", "reason": "StageFailed"}
    assert sample(registry, "projectorset_rollout_failures_total", **labels) == 1
    assert sample(registry, "projectorset_warning_events_total", reason="StageFailed") == 1


def test_a_deleted_sets_series_are_removed_the_others_stay(
    setup: tuple[OperatorMetrics, CollectorRegistry, Clock],
) -> None:
    metrics, registry, _ = setup
    other = Owner("news", "shop", "uid-2")
    for owner in (OWNER, other):
        metrics.observe(owner, decision(Phase.FAILED, reason="StageFailed", failure=Reason.STAGE_FAILED))
        metrics.observe(owner, decision(Phase.FAILED, reason="DeploymentFailed", failure=Reason.DEPLOYMENT_FAILED))
    metrics.forget(OWNER)  # the set was deleted
    exposition = generate_latest(registry).decode()
    assert 'name="blog"' not in exposition
    for reason in ("StageFailed", "DeploymentFailed"):
        assert sample(registry, "projectorset_rollout_failures_total", namespace="shop", name="news", reason=reason)
    assert sample(registry, "projectorset_phase", namespace="shop", name="news", phase="Failed") == 1


def test_build_info_names_the_installed_versions(setup: tuple[OperatorMetrics, CollectorRegistry, Clock]) -> None:
    _, registry, _ = setup
    labels = {
        "version": importlib.metadata.version("projectorset-operator"),
        "python": platform.python_version(),
        "kopf": importlib.metadata.version("kopf"),
    }
    assert sample(registry, "projectorset_build_info", **labels) == 1


def test_pass_durations_by_result_and_errors_by_reason(setup: tuple[OperatorMetrics, CollectorRegistry, Clock]) -> None:
    metrics, registry, _ = setup
    metrics.reconciled(0.02)
    metrics.reconciled(0.3)
    metrics.reconciled(6.0, Reason.DATABASE_UNREACHABLE)
    assert sample(registry, "projectorset_reconcile_duration_seconds_count", result="success") == 2
    assert sample(registry, "projectorset_reconcile_duration_seconds_bucket", result="success", le="0.25") == 1
    assert sample(registry, "projectorset_reconcile_duration_seconds_sum", result="error") == 6.0
    assert sample(registry, "projectorset_reconcile_errors_total", reason="DatabaseUnreachable") == 1


def test_metrics_are_served_over_http(setup: tuple[OperatorMetrics, CollectorRegistry, Clock]) -> None:
    metrics, registry, _ = setup
    metrics.observe(OWNER, decision(Phase.ACTIVE))
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5) as response:
            text = response.read().decode()
    finally:
        server.shutdown()
        thread.join(5)
    assert 'projectorset_phase{name="blog",namespace="shop",phase="Active"} 1.0' in text


# --- a real upgrade ------------------------------------------------------------------------------


def test_a_real_upgrade_is_measured(app_database: str, tmp_path: Path) -> None:
    cluster = FakeCluster(tmp_path)
    harness = Harness(cluster, app_database)
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    harness.reconciler = Reconciler(metrics.timed(cluster), observer=metrics.observe)
    try:
        harness.run_until(lambda: serving(harness) == "v1" and harness.status.get("phase") == "Active")
        harness.set_spec("v2")
        harness.run_until(lambda: serving(harness) == "v2" and harness.status.get("phase") == "Active")
    finally:
        cluster.stop()

    exposition = generate_latest(registry).decode()
    assert 'projectorset_phase{name="accounts",namespace="default",phase="Active"} 1.0' in exposition
    # v1 was adopted (activated directly), v2 replayed and went live: two switches, both timed.
    assert sample(registry, "projectorset_activation_to_switch_seconds_count") == 2
    latency = sample(registry, "projectorset_activation_to_switch_seconds_sum")
    assert latency is not None and 0 < latency < 5
    assert (sample(registry, "projectorset_phase_duration_seconds_count", phase="Replaying") or 0) >= 1
    timed_stages = {
        stage
        for stage in ("prepare", "replay", "optimize", "catchup", "golive")
        if sample(registry, "projectorset_replay_stage_duration_seconds_count", stage=stage)
    }
    assert "replay" in timed_stages, exposition
    assert sample(registry, "projectorset_replay_lag_events", namespace="default", name="accounts") is None


# --- the entry point -----------------------------------------------------------------------------


def test_entry_point_serves_metrics_and_survives_a_taken_port(monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[dict[str, Any]] = []
    monkeypatch.setattr(kopf, "run", lambda **kwargs: runs.append(kwargs))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    main.main(["--metrics-port", str(port), "--metrics-address", "127.0.0.1", "--peering", "ops", "-n", "a"])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert "projectorset_activation_to_switch_seconds" in response.read().decode()
    # Peering gets a random priority: equal priorities would pause every replica.
    assert runs[0]["peering_name"] == "ops" and runs[0]["standalone"] is False
    assert isinstance(runs[0]["priority"], int) and runs[0]["priority"] > 0

    # The port is now taken (by the server above): the operator still runs, without metrics.
    main.main(["--metrics-port", str(port), "--metrics-address", "127.0.0.1"])
    assert len(runs) == 2 and runs[1]["standalone"] is True
