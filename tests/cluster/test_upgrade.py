"""End to end on the local cluster: the operator as a process upgrades the sample application
while a load generator writes through the Service, against a real PostgreSQL."""

from __future__ import annotations

from kubernetes import client

from support.conditions import condition, failed_and_aborted
from support.traffic import install_v1_with_traffic, next_writes
from testbed.scenario import Scenario
from testbed.sequent_schema import projector_rows as read_projector_rows
from testbed.workloads import wait_until


def projector_rows(scenario: Scenario) -> dict[str, tuple[int | None, int | None, int | None]]:
    return read_projector_rows(scenario.database_url)


def stage_succeeded(scenario: Scenario, stage: str) -> bool:
    """The stage's Job succeeded, as the Job controller counts it (no operator needed)."""
    jobs = client.BatchV1Api(scenario.api_client).list_namespaced_job(
        scenario.namespace, label_selector=f"projectorset.io/stage={stage}"
    )
    return any(job.status.succeeded for job in jobs.items)


def test_upgrade_v1_to_v2_under_writes_loses_nothing(scenario: Scenario) -> None:
    install_v1_with_traffic(scenario)
    load = scenario.load
    assert load is not None

    result = scenario.upgrade("v1", "v2")
    print(result.summary())

    assert result.lost == 0, scenario.lost_writes(load.snapshot())
    assert result.acknowledged > 0
    assert result.refused_outside_window == 0
    assert result.active_to_switch_ms is not None
    assert projector_rows(scenario) == {"AccountProjector": (2, None, None), "AuditProjector": (1, None, None)}
    # Writes go on after the switch, all accepted by v2.
    after = next_writes(load)
    load.stop()
    assert all(w.status == 201 for w in after), after
    # The old version scales down after the 5 s delay.
    wait_until("v1 scaled down", lambda: scenario.deployment_replicas("v1") == 0)
    reasons = {event["reason"] for event in scenario.events()}
    for expected in (
        "RolloutStarted",
        "Migrating",  # the migrate Job runs first (the Deployment starts beside it, often ready first)
        "Preparing",
        "Replaying",
        "GoingLive",
        "Activated",
        "ServiceSwitched",
    ):
        assert expected in reasons, reasons
    assert {"Deploying", "Replaying", "Activating", "Active"} <= set(result.phases)


def test_failing_replay_job_aborts_and_v1_keeps_serving(scenario: Scenario) -> None:
    install_v1_with_traffic(scenario)
    spec = scenario.projectorset()["spec"]
    commands = dict(spec["replay"]["commands"])
    commands["optimize"] = ["python3", "-c", "import sys; print('cannot build indexes'); sys.exit(4)"]
    scenario.apply("v2", replay={**spec["replay"], "commands": commands})
    status = scenario.wait_for("the rollout to fail and abort", failed_and_aborted)
    assert status["activeVersion"] == "v1"
    assert "optimize Job" in status["message"] and "version v1 keeps serving" in status["message"]
    assert projector_rows(scenario) == {"AccountProjector": (1, None, None), "AuditProjector": (1, None, None)}
    assert scenario.load is not None
    recent = next_writes(scenario.load)
    assert all(w.status == 201 for w in recent), recent
    assert scenario.deployment_replicas("v2") == 0
    assert any(e["reason"] == "StageFailed" and e["type"] == "Warning" for e in scenario.events())


def test_manual_promotion_pause_and_resume(scenario: Scenario) -> None:
    install_v1_with_traffic(scenario)
    scenario.apply("v2", strategy={"promotion": "Manual", "scaleDownDelaySeconds": 5})
    status = scenario.wait_for(
        "awaiting promotion", lambda s: s.get("phase") == "Paused" and "spec.promote" in s.get("message", "")
    )
    assert status["activeVersion"] == "v1"
    assert projector_rows(scenario)["AccountProjector"] == (1, None, 2)
    scenario.patch_spec(paused=True)
    scenario.wait_for(
        "paused by user", lambda s: s.get("phase") == "Paused" and "paused by spec.paused" in s["message"]
    )
    scenario.patch_spec(paused=False, promote="v2")
    scenario.wait_active("v2")
    assert scenario.load is not None
    assert not scenario.lost_writes(scenario.load.snapshot())


def test_operator_killed_during_replay_and_during_golive_finishes_once(scenario: Scenario) -> None:
    install_v1_with_traffic(scenario)
    spec = scenario.projectorset()["spec"]
    commands = dict(spec["replay"]["commands"])
    # Slow stages leave time to kill the operator while they run.
    commands["replay"] = ["sh", "-c", 'sleep 4; exec "$0" "$@"', *commands["replay"]]
    commands["golive"] = ["sh", "-c", 'sleep 4; exec "$0" "$@"', *commands["golive"]]
    assert scenario.operator is not None
    scenario.apply("v2", replay={**spec["replay"], "commands": commands})

    scenario.wait_for("the replay stage", lambda s: (s.get("replay") or {}).get("stage") == "replay")
    scenario.operator.kill()
    wait_until("the replay Job to succeed with no operator running", lambda: stage_succeeded(scenario, "replay"), 120)
    scenario.start_operator()

    scenario.wait_for("golive", lambda s: s.get("phase") == "Activating")
    scenario.operator.kill()
    # golive finishes while no operator runs: old pods now refuse writes.
    wait_until("the golive Job to succeed with no operator running", lambda: stage_succeeded(scenario, "golive"), 120)
    scenario.start_operator()

    scenario.wait_active("v2")
    jobs = client.BatchV1Api(scenario.api_client).list_namespaced_job(scenario.namespace)
    stages = sorted(job.metadata.labels["projectorset.io/stage"] for job in jobs.items)
    assert stages.count("golive") == 1
    assert stages.count("replay") == 1
    assert scenario.load is not None
    assert not scenario.lost_writes(scenario.load.snapshot())


def test_v3_activates_without_replay_and_rollback_to_v1_replays(scenario: Scenario) -> None:
    install_v1_with_traffic(scenario)
    scenario.upgrade("v1", "v2")
    result = scenario.upgrade("v2", "v3")
    print(result.summary())
    jobs = client.BatchV1Api(scenario.api_client).list_namespaced_job(scenario.namespace)
    assert not [j for j in jobs.items if j.metadata.labels["projectorset.io/version"] == "v3"]
    back = scenario.upgrade("v3", "v1")
    print(back.summary())
    assert back.lost == 0
    assert projector_rows(scenario) == {"AccountProjector": (1, None, None), "AuditProjector": (1, None, None)}
    planned = [c for c in scenario.status()["conditions"] if c["type"] == "Planned"]
    assert planned and planned[0]["reason"] == "RollbackByReplay"


def test_bad_credentials_and_missing_service_give_conditions_and_never_leak_the_secret(scenario: Scenario) -> None:
    core = client.CoreV1Api(scenario.api_client)
    wrong = scenario.database_url.replace(":test-password@", ":Wr0ng-Pa55word@")
    core.patch_namespaced_secret(f"{scenario.name}-db", scenario.namespace, {"stringData": {"uri": wrong}})
    scenario.apply("v1")
    status = scenario.wait_for(
        "the credentials condition",
        lambda s: condition(s, "DatabaseReady").get("reason") == "DatabaseAuthenticationFailed",
    )
    assert "the database refused the credentials" in status["message"]
    # The Event follows the status write of the same pass.
    wait_until(
        "the DatabaseAuthenticationFailed Event",
        lambda: any(
            e["reason"] == "DatabaseAuthenticationFailed" and e["type"] == "Warning" for e in scenario.events()
        ),
    )

    core.patch_namespaced_secret(
        f"{scenario.name}-db", scenario.namespace, {"stringData": {"uri": scenario.database_url}}
    )
    scenario.wait_active("v1")

    core.delete_namespaced_service(scenario.name, scenario.namespace)
    scenario.patch_spec(replicas=2)
    scenario.wait_for(
        "ServiceNotFound", lambda s: s.get("message", "").startswith(f"Service {scenario.name} not found")
    )

    assert scenario.operator is not None
    visible = scenario.operator.log.read_text() + str(scenario.events()) + str(scenario.projectorset())
    for secret in ("Wr0ng-Pa55word", "test-password", wrong, scenario.database_url):
        assert secret not in visible
